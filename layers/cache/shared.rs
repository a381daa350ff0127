//! The state every service of one [`CacheLayer`](super::CacheLayer) shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::store::CacheStore;

pub(crate) struct Shared<K, V> {
    pub(crate) key: K,
    pub(crate) store: Arc<dyn CacheStore<V>>,
    pub(crate) ttl: Duration,
    pub(crate) name: Arc<str>,
    /// Keys with an upstream call under way, and where its answer will appear.
    pub(crate) in_flight: Mutex<HashMap<String, watch::Receiver<Option<V>>>>,
}

impl<K, V> Shared<K, V> {
    pub(crate) fn lock_in_flight(
        &self,
    ) -> MutexGuard<'_, HashMap<String, watch::Receiver<Option<V>>>> {
        // Every change under the lock is one insert or one remove: a panic
        // elsewhere cannot leave the map half-changed.
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
