//! The layer, its builder and the state every service it makes shares.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_layer::Layer;

use super::memory::MemoryStore;
use super::service::Cache;
use super::shared::Shared;
use super::store::CacheStore;
use super::CacheableResponse;

/// The default time an answer is served from the cache.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// Serves repeated requests from a store and makes one upstream call for
/// concurrent identical misses; see the [module docs](super).
///
/// `K` is the key function, `Fn(&Request) -> Option<String>`: `None` bypasses
/// the cache for that request.
pub struct CacheLayer<K, V> {
    shared: Arc<Shared<K, V>>,
}

impl<K, V> Clone for CacheLayer<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, V> fmt::Debug for CacheLayer<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("name", &self.shared.name)
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

impl<K, V: CacheableResponse> CacheLayer<K, V> {
    /// A builder with this key function, an in-memory store of
    /// [`DEFAULT_MAX_ENTRIES`](super::DEFAULT_MAX_ENTRIES) entries and a TTL of
    /// [`DEFAULT_TTL`].
    pub fn builder(key: K) -> CacheBuilder<K, V> {
        CacheBuilder {
            key,
            store: None,
            ttl: DEFAULT_TTL,
            name: "cache".into(),
            _value: PhantomData,
        }
    }

    /// The layer's name (the `cache` label of its metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How many distinct requests have an upstream call under way.
    pub fn in_flight(&self) -> usize {
        self.shared.lock_in_flight().len()
    }
}

impl<S, K, V> Layer<S> for CacheLayer<K, V> {
    type Service = Cache<S, K, V>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::from_shared(inner, self.shared.clone())
    }
}

/// Builds a [`CacheLayer`].
pub struct CacheBuilder<K, V> {
    key: K,
    store: Option<Arc<dyn CacheStore<V>>>,
    ttl: Duration,
    name: String,
    _value: PhantomData<fn() -> V>,
}

impl<K, V> fmt::Debug for CacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl<K, V: CacheableResponse> CacheBuilder<K, V> {
    /// Where answers are kept (default: a [`MemoryStore`] of
    /// [`DEFAULT_MAX_ENTRIES`](super::DEFAULT_MAX_ENTRIES) entries).
    #[must_use]
    pub fn store(mut self, store: impl CacheStore<V>) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// How long an answer is served (default [`DEFAULT_TTL`]; must be positive).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The `cache` label of the layer's metrics (default `cache`; not empty).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The layer, or why the settings are refused.
    pub fn build(self) -> Result<CacheLayer<K, V>, BuildError> {
        if self.ttl.is_zero() {
            return Err(BuildError::ZeroTtl);
        }
        if self.name.is_empty() {
            return Err(BuildError::EmptyName);
        }
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::<V>::default()));
        Ok(CacheLayer {
            shared: Arc::new(Shared {
                key: self.key,
                store,
                ttl: self.ttl,
                name: self.name.into(),
                in_flight: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A [`CacheBuilder`] setting that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The TTL is zero: nothing would ever be served.
    ZeroTtl,
    /// The name is empty.
    EmptyName,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroTtl => f.write_str("cache: the TTL must be longer than zero"),
            BuildError::EmptyName => f.write_str("cache: the name is empty"),
        }
    }
}

impl std::error::Error for BuildError {}
