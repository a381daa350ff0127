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
//!
//! Concurrent identical misses make one upstream call: the first (a
//! non-streaming request) asks the upstream, the others wait for its answer and
//! are served it as a hit (counted `coalesced`). When the first ends without an
//! answer to keep (a failure, a degraded answer, its client gone), the others
//! ask the upstream themselves, at once. `llm_proxy_cache_waiting` is how many
//! requests wait so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::watch;
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
    /// The answer of an identical request that was under way.
    Coalesced(Bytes),
    /// Not there: ask the upstream, and [`store`](Miss::store) the answer if
    /// it may be kept.
    Miss(Miss),
    /// Not for the cache.
    Bypass,
}

impl Lookup {
    /// The response header's value (a coalesced answer is a hit).
    pub(crate) const fn as_str(&self) -> &'static str {
        match self {
            Lookup::Hit(_) | Lookup::Coalesced(_) => "hit",
            Lookup::Miss(_) => "miss",
            Lookup::Bypass => "bypass",
        }
    }

    /// The `outcome` label of `llm_proxy_cache_requests_total`.
    const fn outcome(&self) -> &'static str {
        match self {
            Lookup::Coalesced(_) => "coalesced",
            other => other.as_str(),
        }
    }
}

/// Keys with an upstream call under way, and where its answer will appear.
/// Bounded by [`MAX_IN_FLIGHT`]: past it, misses are not coalesced.
type InFlight = Mutex<HashMap<String, watch::Receiver<Option<Bytes>>>>;

/// The most keys with a call under way that identical requests can wait for.
const MAX_IN_FLIGHT: usize = 10_000;

/// A miss: the key to store the answer under and, for the request that asks
/// the upstream for everyone, where the ones waiting for it are told.
#[derive(Debug)]
pub(crate) struct Miss {
    key: String,
    leader: Option<Leader>,
}

#[derive(Debug)]
struct Leader {
    /// The key this leader registered (nobody else can while it lives).
    key: String,
    answer: watch::Sender<Option<Bytes>>,
    in_flight: Arc<InFlight>,
}

impl Drop for Leader {
    /// The call is over (answered, or not): later identical requests look in
    /// the store, and those waiting are woken (with nothing, if no answer was
    /// kept: they ask the upstream themselves).
    fn drop(&mut self) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.remove(&self.key);
    }
}

/// The cache of one proxy.
pub(crate) struct ResponseCache {
    mode: CacheMode,
    ttl: Duration,
    max_entry_bytes: usize,
    store: Arc<dyn CacheStore<CachedBody>>,
    in_flight: Arc<InFlight>,
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
            in_flight: Arc::default(),
        })))
    }

    /// Look `body` (a checked chat request; `stream`: answered as a stream)
    /// up for `client`; wait for an identical request's answer when one is
    /// under way.
    pub(crate) async fn lookup(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        client: &str,
        stream: bool,
    ) -> Lookup {
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
        match self.store.get(&key).await {
            Ok(Some(CachedBody(answer))) => return self.counted(Lookup::Hit(answer)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cache lookup failed; asking the upstream");
                metrics::counter!("llm_proxy_cache_errors_total").increment(1);
            }
        }
        let lookup = self.coalesce(key, stream).await;
        self.counted(lookup)
    }

    /// A miss: lead the call for `key` (unless `stream`: a streamed answer is
    /// not kept), or wait for the answer of the call under way.
    async fn coalesce(&self, key: String, stream: bool) -> Lookup {
        let mut waiting = {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match in_flight.get(&key) {
                Some(waiting) => waiting.clone(),
                None if stream || in_flight.len() >= MAX_IN_FLIGHT => {
                    return Lookup::Miss(Miss { key, leader: None });
                }
                None => {
                    let (answer, waiting) = watch::channel(None);
                    in_flight.insert(key.clone(), waiting);
                    let leader = Leader {
                        key: key.clone(),
                        answer,
                        in_flight: self.in_flight.clone(),
                    };
                    return Lookup::Miss(Miss {
                        key,
                        leader: Some(leader),
                    });
                }
            }
        };
        let gauge = metrics::gauge!("llm_proxy_cache_waiting");
        gauge.increment(1.0);
        let _waited = Waited(gauge);
        let answer = match waiting.wait_for(Option::is_some).await {
            Ok(answer) => answer.clone(),
            Err(_) => None,
        };
        match answer {
            Some(answer) => Lookup::Coalesced(answer),
            // The call ended with nothing kept: ask the upstream.
            None => Lookup::Miss(Miss { key, leader: None }),
        }
    }

    fn counted(&self, lookup: Lookup) -> Lookup {
        metrics::counter!("llm_proxy_cache_requests_total", "outcome" => lookup.outcome())
            .increment(1);
        lookup
    }
}

/// Counts a request out of `llm_proxy_cache_waiting` however its wait ends
/// (its client may go away meanwhile).
struct Waited(metrics::Gauge);

impl Drop for Waited {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Miss {
    /// Keep `answer` (unless it is larger than `max_entry_bytes`), and hand it
    /// to the identical requests waiting for it. Done before the answer is
    /// sent, so the next identical request (here or on another proxy on the
    /// same Redis) finds it.
    pub(crate) async fn store(self, cache: &ResponseCache, answer: Bytes) {
        if answer.len() > cache.max_entry_bytes {
            return;
        }
        if let Some(leader) = &self.leader {
            leader.answer.send_replace(Some(answer.clone()));
        }
        if let Err(e) = cache
            .store
            .put(&self.key, &CachedBody(answer), cache.ttl)
            .await
        {
            tracing::warn!(error = %e, "answer not cached");
            metrics::counter!("llm_proxy_cache_errors_total").increment(1);
        }
    }
}
