//! [`RedisCacheStore`]: one response cache for every instance.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::{CacheStore, CacheStoreError, StoreFuture};

use super::error::ConfigError;
use super::link::{link, manager_config, Link};

/// A [`CacheStore`] on Redis: answers stored by one instance are served by all.
///
/// Values are JSON (`serde`), under `{prefix}:cache:{key}` with the TTL as a
/// Redis expiry (`SET ... PX`). Each value is bounded
/// ([`max_value_bytes`](Self::max_value_bytes), default 1 MiB): a larger answer
/// is not stored, a larger stored value is not read. The total is Redis' own to
/// bound: give it a `maxmemory` with an eviction policy (`volatile-lru`).
///
/// A Redis outage never fails a call: the cache counts the error and calls the
/// upstream. Commands time out after one second.
///
/// ```no_run
/// use tower_llm_resilience::cache::{deterministic_chat_key, CacheLayer};
/// use tower_llm_resilience::client::ChatResponse;
/// use tower_llm_resilience::redis::RedisCacheStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let store = RedisCacheStore::<ChatResponse>::new(client)?.prefix("my-app");
/// let cache = CacheLayer::builder(deterministic_chat_key).store(store).build()?;
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
pub struct RedisCacheStore<V> {
    conn: ConnectionManager,
    link: Arc<Link>,
    prefix: String,
    max_value_bytes: usize,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for RedisCacheStore<V> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            link: self.link.clone(),
            prefix: self.prefix.clone(),
            max_value_bytes: self.max_value_bytes,
            _value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for RedisCacheStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheStore")
            .field("prefix", &self.prefix)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("connected", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl<V> RedisCacheStore<V> {
    /// A store through `client`, prefix `tower-llm`, values up to 1 MiB. Must be
    /// called inside a tokio runtime; never waits for Redis.
    pub fn new(client: redis::Client) -> Result<Self, ConfigError> {
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
        Ok(Self {
            conn,
            link: Arc::new(link("cache_store", "tower-llm")),
            prefix: "tower-llm".to_owned(),
            max_value_bytes: 1 << 20,
            _value: PhantomData,
        })
    }

    /// The prefix of every Redis key (default `tower-llm`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The largest value stored or read, in bytes of JSON (default 1 MiB; at
    /// least 1).
    #[must_use]
    pub fn max_value_bytes(mut self, max_value_bytes: usize) -> Self {
        self.max_value_bytes = max_value_bytes.max(1);
        self
    }

    /// Whether the last exchange with Redis worked.
    pub fn is_connected(&self) -> bool {
        self.link.is_up()
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}:cache:{key}", self.prefix)
    }

    fn backend(&self, e: redis::RedisError) -> CacheStoreError {
        self.link.down(&e);
        CacheStoreError::Backend(Box::new(e))
    }
}

impl<V> CacheStore<V> for RedisCacheStore<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<V>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let stored: Option<Vec<u8>> = redis::cmd("GET")
                .arg(self.redis_key(key))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            let Some(bytes) = stored else {
                return Ok(None);
            };
            if bytes.len() > self.max_value_bytes {
                return Err(CacheStoreError::TooLarge {
                    size: bytes.len(),
                    limit: self.max_value_bytes,
                });
            }
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CacheStoreError::Codec(format!("a stored value does not decode: {e}")))
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: &'a V, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let bytes = serde_json::to_vec(value)
                .map_err(|e| CacheStoreError::Codec(format!("a value does not encode: {e}")))?;
            if bytes.len() > self.max_value_bytes {
                return Err(CacheStoreError::TooLarge {
                    size: bytes.len(),
                    limit: self.max_value_bytes,
                });
            }
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(self.redis_key(key))
                .arg(bytes)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            Ok(())
        })
    }
}
