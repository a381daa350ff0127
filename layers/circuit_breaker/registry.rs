//! Where a layer keeps its circuits: one, or one per key (bounded).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::broadcast;

use super::builder::Config;
use super::circuit::{Circuit, Shared};

/// Events buffered per subscriber before the slowest one starts missing some.
const EVENT_CAPACITY: usize = 256;

#[derive(Debug)]
pub(crate) struct Registry<K> {
    pub(crate) shared: Arc<Shared<K>>,
    /// The single circuit of an unkeyed layer; the overflow circuit of a keyed one.
    pub(crate) single: Arc<Circuit<K>>,
    keyed: RwLock<HashMap<K, Arc<Circuit<K>>>>,
    warned_full: AtomicBool,
}

impl<K> Registry<K>
where
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    pub(crate) fn new(config: Config) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            metrics_only: AtomicBool::new(config.metrics_only),
            count_calls: AtomicBool::new(false),
            config,
            events,
        });
        Registry {
            single: Arc::new(Circuit::new(None, shared.clone())),
            shared,
            keyed: RwLock::new(HashMap::new()),
            warned_full: AtomicBool::new(false),
        }
    }

    /// The circuit of `key` (created on first use; the overflow circuit when
    /// `max_keys` circuits all hold state worth keeping).
    #[inline]
    pub(crate) fn circuit(&self, key: Option<K>) -> Arc<Circuit<K>> {
        match key {
            None => self.single.clone(),
            Some(key) => self.lookup_or_insert(key).unwrap_or_else(|| {
                if !self.warned_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        circuit = %self.shared.config.name,
                        max_keys = self.shared.config.max_keys,
                        "circuit key limit reached; new keys share the overflow circuit"
                    );
                }
                self.single.clone()
            }),
        }
    }

    /// The circuit of `key`, created if it fits; `None` when it does not.
    pub(crate) fn lookup_or_insert(&self, key: K) -> Option<Arc<Circuit<K>>> {
        if let Some(c) = self.read().get(&key) {
            return Some(c.clone());
        }
        let mut map = self.keyed.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(&key) {
            return Some(c.clone());
        }
        if map.len() >= self.shared.config.max_keys {
            // Evict a circuit not in use by any call whose state is worth nothing
            // (closed, no failures): a failing key must not escape its circuit by
            // being evicted, nor a forced or open one be forgotten.
            let idle = map
                .iter()
                .find(|(_, c)| Arc::strong_count(c) == 1 && c.is_pristine())
                .map(|(k, _)| k.clone());
            map.remove(&idle?);
        }
        let circuit = Arc::new(Circuit::new(Some(key.clone()), self.shared.clone()));
        map.insert(key, circuit.clone());
        Some(circuit)
    }

    pub(crate) fn get(&self, key: &K) -> Option<Arc<Circuit<K>>> {
        self.read().get(key).cloned()
    }

    pub(crate) fn keyed(&self) -> Vec<(K, Arc<Circuit<K>>)> {
        self.read()
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<K, Arc<Circuit<K>>>> {
        self.keyed.read().unwrap_or_else(PoisonError::into_inner)
    }
}
