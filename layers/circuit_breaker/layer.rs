//! The layer, and the constructors that make it and its services.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::builder::{BuildError, Builder, Config};
use super::handle::Handle;
use super::key::{KeySelector, NoKey};
use super::registry::Registry;
use super::CircuitBreaker;
use crate::classify::DefaultClassifier;

/// Wraps services in a [`CircuitBreaker`]. Every service this layer makes, and
/// every clone of them, shares the layer's circuits, created when the layer was
/// built; [`handle`](Self::handle) reaches them.
pub struct CircuitBreakerLayer<C = DefaultClassifier, K: KeySelector = NoKey> {
    pub(crate) classifier: C,
    pub(crate) keys: K,
    pub(crate) registry: Arc<Registry<K::Key>>,
}

impl CircuitBreakerLayer {
    /// Start configuring a layer. See [`Builder`] for the defaults.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A layer with the default settings: open after 5 consecutive failures,
    /// for 30 s at first.
    pub fn new() -> Self {
        Builder::new()
            .build()
            .expect("the default circuit breaker settings are valid")
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, K: KeySelector> CircuitBreakerLayer<C, K> {
    pub(crate) fn from_parts(config: Config, classifier: C, keys: K) -> Self {
        Self {
            classifier,
            keys,
            registry: Arc::new(Registry::new(config)),
        }
    }

    /// Inspect and steer this layer's circuits.
    pub fn handle(&self) -> Handle<K::Key> {
        Handle {
            registry: self.registry.clone(),
        }
    }
}

impl<C: Clone, K: KeySelector + Clone> Clone for CircuitBreakerLayer<C, K> {
    fn clone(&self) -> Self {
        Self {
            classifier: self.classifier.clone(),
            keys: self.keys.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<C, K: KeySelector> fmt::Debug for CircuitBreakerLayer<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.registry.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone, K: KeySelector + Clone> Layer<S> for CircuitBreakerLayer<C, K> {
    type Service = CircuitBreaker<S, C, K>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            classifier: self.classifier.clone(),
            keys: self.keys.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<C, K: KeySelector> Builder<C, K> {
    /// Validate the settings and build the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, K>, BuildError> {
        let (config, classifier, keys) = self.into_parts()?;
        Ok(CircuitBreakerLayer::from_parts(config, classifier, keys))
    }
}

impl<S> CircuitBreaker<S> {
    /// Wrap `inner` in a circuit breaker with the default settings and its own
    /// circuit. To share circuits between services, build a
    /// [`CircuitBreakerLayer`] once and layer each with it.
    pub fn new(inner: S) -> Self {
        Layer::layer(&CircuitBreakerLayer::new(), inner)
    }

    /// A layer with the default settings; see [`CircuitBreakerLayer::builder`].
    pub fn layer() -> CircuitBreakerLayer {
        CircuitBreakerLayer::new()
    }
}
