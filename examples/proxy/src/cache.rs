//! `[cache]`: a successful answer from a model's first tier, served again for
//! an identical request (same client key, same body but how it is delivered),
//! from memory or, with `[state] redis_url`, from Redis shared by every proxy.
//!
//! The key is the library's `chat_body_key`: a SHA-256 of the request body's
//! canonical JSON without `stream`, `stream_options`, `user` and `metadata`,
//! under the client key id (answers are never shared between keys). Headers
//! and keys never enter it. A request uses the cache when `mode` allows it:
//! `deterministic` (`temperature` 0) or an opt-in with `x-llm-proxy-cache: use`;
//! `x-llm-proxy-cache: bypass` skips it. Degraded answers (a later tier, the
//! template, a human's), failures and streamed answers are never stored; a
//! streaming request is served a stored answer as an event stream.
//!
//! The answer says how it was served in `x-llm-proxy-cache: hit|miss|bypass`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tower_llm_resilience::cache::{chat_body_key, is_deterministic, CacheStore, MemoryStore};
use tower_llm_resilience::redis::RedisCacheStore;

use crate::config::{CacheConfig, CacheMode, ConfigError};

/// Says how an answer was served (response), or asks for `use` / `bypass`
/// (request).
pub(crate) const CACHE_HEADER: HeaderName = HeaderName::from_static("x-llm-proxy-cache");

/// A stored answer: the bytes of a `chat.completion` (JSON, so UTF-8: stored in
/// Redis as a JSON string).
#[derive(Clone, Debug)]
pub(crate) struct CachedBody(pub(crate) Bytes);

impl Serialize for CachedBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(&self.0).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for CachedBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| CachedBody(Bytes::from(text)))
    }
}

/// What the cache says about one request.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Served from the cache.
    Hit(Bytes),
    /// Not there: store the answer under this key if it may be kept.
    Miss(String),
    /// Not for the cache.
    Bypass,
}

impl Lookup {
    /// The response header's value.
    pub(crate) const fn as_str(&self) -> &'static str {
        match self {
            Lookup::Hit(_) => "hit",
            Lookup::Miss(_) => "miss",
            Lookup::Bypass => "bypass",
        }
    }
}

/// The cache of one proxy.
pub(crate) struct ResponseCache {
    mode: CacheMode,
    ttl: Duration,
    max_entry_bytes: usize,
    store: Arc<dyn CacheStore<CachedBody>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("mode", &self.mode)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// The cache `config` asks for (`None`: off), on Redis when `redis` is given.
    pub(crate) fn build(
        config: &CacheConfig,
        redis: Option<(redis::Client, String)>,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        if config.mode == CacheMode::Off {
            return Ok(None);
        }
        let store: Arc<dyn CacheStore<CachedBody>> = match redis {
            Some((client, prefix)) => Arc::new(
                RedisCacheStore::<CachedBody>::new(client)
                    .map_err(|e| ConfigError(format!("cache on redis: {e}")))?
                    .prefix(prefix)
                    // A stored body is a JSON string: its escapes take room.
                    .max_value_bytes(config.max_entry_bytes.saturating_mul(2)),
            ),
            None => Arc::new(
                MemoryStore::new(config.max_entries)
                    .max_bytes(config.max_bytes, |body: &CachedBody| body.0.len()),
            ),
        };
        Ok(Some(Arc::new(Self {
            mode: config.mode,
            ttl: config.ttl_secs,
            max_entry_bytes: config.max_entry_bytes,
            store,
        })))
    }

    /// Look `body` (a checked chat request) up for `client`.
    pub(crate) async fn lookup(&self, headers: &HeaderMap, body: &[u8], client: &str) -> Lookup {
        let asked = headers.get(&CACHE_HEADER).map(|v| v.as_bytes());
        if asked == Some(b"bypass") {
            return self.counted(Lookup::Bypass);
        }
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
            return self.counted(Lookup::Bypass);
        };
        let opted_in = asked == Some(b"use");
        if !(opted_in || (self.mode == CacheMode::Deterministic && is_deterministic(&request))) {
            return self.counted(Lookup::Bypass);
        }
        let key = chat_body_key(client, &request);
        let lookup = match self.store.get(&key).await {
            Ok(Some(CachedBody(answer))) => Lookup::Hit(answer),
            Ok(None) => Lookup::Miss(key),
            Err(e) => {
                tracing::warn!(error = %e, "cache lookup failed; asking the upstream");
                metrics::counter!("llm_proxy_cache_errors_total").increment(1);
                Lookup::Miss(key)
            }
        };
        self.counted(lookup)
    }

    fn counted(&self, lookup: Lookup) -> Lookup {
        metrics::counter!("llm_proxy_cache_requests_total", "outcome" => lookup.as_str())
            .increment(1);
        lookup
    }

    /// Keep `answer` under `key`, unless it is larger than `max_entry_bytes`.
    /// Done before the answer is sent, so the next identical request (here or
    /// on another proxy on the same Redis) finds it.
    pub(crate) async fn store(&self, key: &str, answer: Bytes) {
        if answer.len() > self.max_entry_bytes {
            return;
        }
        if let Err(e) = self.store.put(key, &CachedBody(answer), self.ttl).await {
            tracing::warn!(error = %e, "answer not cached");
            metrics::counter!("llm_proxy_cache_errors_total").increment(1);
        }
    }
}
