//! Where cached answers live: the store trait and its error.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The future of a store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CacheStoreError>> + Send + 'a>>;

/// A place to keep answers for a while: [`MemoryStore`](super::MemoryStore), the
/// Redis store (`redis::RedisCacheStore`, feature `redis`), or your own.
///
/// A store error never fails a call: the [`Cache`](super::Cache) service counts
/// it, logs it and calls the upstream as if the entry were missing.
pub trait CacheStore<V>: Send + Sync + 'static {
    /// The value stored under `key`, unless it is missing or expired.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<V>>;

    /// Keep `value` under `key` for `ttl`, replacing any value there.
    fn put<'a>(&'a self, key: &'a str, value: &'a V, ttl: Duration) -> StoreFuture<'a, ()>;
}

/// Why a store could not get or keep a value.
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheStoreError {
    /// The value is larger than the store keeps.
    TooLarge {
        /// Its size, bytes.
        size: usize,
        /// The store's limit, bytes.
        limit: usize,
    },
    /// The value could not be encoded, or a stored value decoded.
    Codec(String),
    /// The backend failed (unreachable, timed out, refused).
    Backend(crate::BoxError),
}

impl fmt::Display for CacheStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheStoreError::TooLarge { size, limit } => write!(
                f,
                "cache store: a value of {size} bytes is larger than the limit of {limit} bytes"
            ),
            CacheStoreError::Codec(message) => write!(f, "cache store: {message}"),
            CacheStoreError::Backend(e) => write!(f, "cache store backend: {e}"),
        }
    }
}

impl std::error::Error for CacheStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CacheStoreError::Backend(e) => Some(&**e),
            _ => None,
        }
    }
}
