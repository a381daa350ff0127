//! Inspecting and steering circuits from outside the request path.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::circuit::Circuit;
use super::event::{CircuitEvent, CircuitSnapshot, CircuitState};
use super::registry::Registry;

/// Shared access to every circuit of one [`CircuitBreakerLayer`](super::CircuitBreakerLayer)
/// (and so of every service it made, and their clones).
///
/// ```
/// use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
///
/// let layer = CircuitBreakerLayer::builder().build().unwrap();
/// let handle = layer.handle();
/// handle.circuit().force_open();
/// assert_eq!(handle.circuit().state(), CircuitState::Open);
/// handle.circuit().reset();
/// assert_eq!(handle.circuit().state(), CircuitState::Closed);
/// ```
pub struct Handle<K> {
    pub(crate) registry: Arc<Registry<K>>,
}

impl<K> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for Handle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.registry.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl<K> Handle<K>
where
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    /// The layer's single circuit (for a keyed layer: the overflow circuit used
    /// once `max_keys` circuits exist).
    pub fn circuit(&self) -> CircuitRef<K> {
        CircuitRef {
            circuit: self.registry.single.clone(),
        }
    }

    /// The circuit of `key`, if a request with that key was seen.
    pub fn get(&self, key: &K) -> Option<CircuitRef<K>> {
        self.registry.get(key).map(|circuit| CircuitRef { circuit })
    }

    /// Every keyed circuit, with its key.
    pub fn keyed(&self) -> Vec<(K, CircuitRef<K>)> {
        self.registry
            .keyed()
            .into_iter()
            .map(|(k, circuit)| (k, CircuitRef { circuit }))
            .collect()
    }

    /// State changes of every circuit of the layer, as they happen. A subscriber
    /// that falls more than 256 events behind misses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<CircuitEvent<K>> {
        self.registry.shared.events.subscribe()
    }

    /// In metrics-only mode circuits track state and emit events but never reject.
    pub fn set_metrics_only(&self, enabled: bool) {
        self.registry
            .shared
            .metrics_only
            .store(enabled, Ordering::Relaxed);
    }

    /// Whether metrics-only mode is on.
    pub fn is_metrics_only(&self) -> bool {
        self.registry.shared.metrics_only.load(Ordering::Relaxed)
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.registry.shared.config.name
    }

    /// How long a circuit stays open after its first trip (the layer's
    /// [`cooldown`](super::Builder::cooldown)).
    pub fn cooldown(&self) -> Duration {
        self.registry.shared.config.cooldown
    }

    /// The circuit of `key`, created (closed) if no request with that key was seen
    /// yet, within the layer's `max_keys` like one made by a request. For
    /// shared-state backends that apply another instance's state to a key this
    /// instance has not served yet.
    pub fn get_or_create(&self, key: K) -> CircuitRef<K> {
        CircuitRef {
            circuit: self.registry.circuit(Some(key)),
        }
    }

    /// The circuit of `key`, created (closed) if it fits within `max_keys`; `None`
    /// when every kept circuit holds state worth keeping, where
    /// [`get_or_create`](Self::get_or_create) would answer the shared overflow
    /// circuit. Shared-state backends use this, so that another instance's state
    /// for one key never lands on the overflow circuit and rejects other keys.
    pub fn try_get_or_create(&self, key: K) -> Option<CircuitRef<K>> {
        let circuit = self.registry.lookup_or_insert(key)?;
        Some(CircuitRef { circuit })
    }

    /// Count every call's outcome in [`CircuitSnapshot::calls`] (off by default:
    /// it costs an atomic add per call). Shared-state backends turn it on to
    /// compute failure rates across instances.
    pub fn count_calls(&self, enabled: bool) {
        self.registry
            .shared
            .count_calls
            .store(enabled, Ordering::Relaxed);
    }
}

/// One circuit, for inspection and manual control.
pub struct CircuitRef<K> {
    circuit: Arc<Circuit<K>>,
}

impl<K: fmt::Debug> fmt::Debug for CircuitRef<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitRef")
            .field("key", &self.circuit.key)
            .finish_non_exhaustive()
    }
}

impl<K> CircuitRef<K>
where
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    /// Its key (`None` for the single or overflow circuit).
    pub fn key(&self) -> Option<&K> {
        self.circuit.key.as_ref()
    }

    /// Its state now.
    pub fn state(&self) -> CircuitState {
        self.circuit.state()
    }

    /// Its state and counters now.
    pub fn snapshot(&self) -> CircuitSnapshot {
        self.circuit.snapshot()
    }

    /// Open it until [`force_closed`](Self::force_closed) or [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.circuit.force_open();
    }

    /// Close it, and keep it closed whatever fails, until [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.circuit.force_closed();
    }

    /// A fresh closed circuit: forced state, failure counts and re-trips cleared.
    pub fn reset(&self) {
        self.circuit.reset();
    }

    /// Apply a state another instance decided (the seam for shared-state
    /// backends): `Open` for `open_for` (default: the cooldown), `HalfOpen`, or
    /// `Closed`. Ignored while the circuit is forced.
    pub fn apply_remote(&self, state: CircuitState, open_for: Option<Duration>) {
        self.circuit.apply_remote(state, open_for);
    }
}
