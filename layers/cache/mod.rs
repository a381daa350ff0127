//! A response cache: serve repeated requests from a store, and make one upstream
//! call for concurrent identical misses.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_llm_resilience::cache::{CacheLayer, CacheableResponse, MemoryStore};
//! use tower_llm_resilience::BoxError;
//!
//! #[derive(Clone, Debug, PartialEq)]
//! struct Answer(String);
//!
//! impl CacheableResponse for Answer {
//!     fn storable(&self) -> bool {
//!         true
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = calls.clone();
//! let model = service_fn(move |prompt: String| {
//!     counted.fetch_add(1, Ordering::SeqCst);
//!     async move { Ok::<_, BoxError>(Answer(format!("answer to {prompt}"))) }
//! });
//!
//! // Cache every prompt but those starting with "!" (a per-request bypass).
//! let cache = CacheLayer::builder(|prompt: &String| {
//!     (!prompt.starts_with('!')).then(|| prompt.clone())
//! })
//! .store(MemoryStore::new(1_000))
//! .ttl(Duration::from_secs(300))
//! .build()?;
//! let service = cache.layer(model);
//!
//! service.clone().oneshot("hi".to_owned()).await?;
//! let again = service.clone().oneshot("hi".to_owned()).await?;
//! assert_eq!(again, Answer("answer to hi".into()));
//! service.oneshot("!hi".to_owned()).await?;
//! assert_eq!(calls.load(Ordering::SeqCst), 2); // the repeat was a hit
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! The key function maps a request to a key, or to `None` to bypass the cache
//! (the request goes to the upstream and its answer is not stored). For chat
//! requests, [`chat_body_key`] digests everything that changes the answer (model,
//! messages, tools, sampling parameters: the whole body but
//! [`IGNORED_FIELDS`]), never headers or API keys; [`is_deterministic`] tells
//! the requests a cache may serve by default (`temperature` 0). With `reqwest`,
//! [`deterministic_chat_key`] is a ready key function for a
//! [`ChatRequest`](crate::client::ChatRequest) service. Put a tenant or client id
//! in the key's namespace when answers must not be shared between them.
//!
//! # What is stored
//!
//! Only successful answers whose [`CacheableResponse::storable`] says so: for a
//! `ChatResponse`, one from the primary (no [`Degraded`](crate::Degraded)
//! marker: a fallback tier's or a template's answer is never stored) that
//! classifies as a success (not content-filtered). Errors are never stored.
//!
//! # Coalescing
//!
//! While a miss's upstream call is under way, identical requests (same key) wait
//! for its answer instead of calling: 100 concurrent identical misses make one
//! upstream call. They receive that answer even when it may not be stored. If the
//! call fails or is dropped, each waiter calls the upstream itself (an error is
//! not shared: it may be the caller's, and error types are not `Clone`).
//!
//! # Stores
//!
//! [`MemoryStore`] (bounded in entries and, with a weigher, bytes; expiry on
//! `tokio::time`) or the Redis store (`redis::RedisCacheStore`, feature `redis`),
//! shared by several instances, or any [`CacheStore`]. A store error never fails
//! a call: it is logged and counted, and the upstream is called.
//!
//! # Readiness
//!
//! [`Cache`] is ready when its inner service is.
//!
//! # Observability
//!
//! - `llm_cache_requests_total{cache, outcome}`: `hit`, `miss`, `coalesced`, `bypass`
//! - `llm_cache_not_stored_total{cache}`: answers not storable (degraded, failures
//!   by classification)
//! - `llm_cache_store_errors_total{cache, operation}`
//!
//! # Cost
//!
//! A boxed future per call; on a keyed call the key function's work (a SHA-256
//! over the body for chat keys), a store lookup (a lock and a clone for
//! [`MemoryStore`]), and on a miss a map entry and a `watch` channel.

mod key;
mod layer;
mod memory;
mod service;
mod shared;
mod store;

pub use self::key::{chat_body_key, is_deterministic, IGNORED_FIELDS};
#[cfg(feature = "reqwest")]
pub use self::key::{chat_request_digest, deterministic_chat_key};
pub use self::layer::{BuildError, CacheBuilder, CacheLayer, DEFAULT_TTL};
pub use self::memory::{MemoryStore, DEFAULT_MAX_ENTRIES};
pub use self::service::{Cache, CacheFuture};
pub use self::store::{CacheStore, CacheStoreError, StoreFuture};

use crate::fallback::Marked;

/// How a call was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// From the store.
    Hit,
    /// By the upstream, after a lookup found nothing.
    Miss,
    /// By another call for the same key that was under way.
    Coalesced,
    /// By the upstream, without a lookup (the key function said `None`).
    Bypass,
}

impl CacheStatus {
    /// `hit`, `miss`, `coalesced` or `bypass`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// An answer a [`CacheLayer`] can keep and hand out again.
pub trait CacheableResponse: Clone + Send + Sync + 'static {
    /// Whether this answer may be stored (a degraded or failed answer may not).
    fn storable(&self) -> bool;

    /// Learn how the call was answered, where the type has room. Does nothing by
    /// default.
    fn set_cache_status(&mut self, status: CacheStatus) {
        let _ = status;
    }
}

/// Stored when no fallback marked it degraded.
impl<T: Clone + Send + Sync + 'static> CacheableResponse for Marked<T> {
    fn storable(&self) -> bool {
        self.degraded.is_none()
    }
}

/// Stored when it came from the primary (no [`Degraded`](crate::Degraded)
/// marker) and classifies as a success (not content-filtered).
#[cfg(feature = "reqwest")]
impl CacheableResponse for crate::client::ChatResponse {
    fn storable(&self) -> bool {
        use crate::classify::ClassifyResponse;
        use crate::fallback::MarkDegraded;
        self.degraded().is_none() && self.classify_response().is_success()
    }
}
