//! Shared state on Redis (feature `redis`): many instances, one circuit, one
//! escalation queue, one batch record.
//!
//! When several instances of a service run side by side, in-process state
//! disagrees: A's circuit is open while B keeps calling the dead upstream; an
//! escalation created on A cannot be resolved through B. The backends here share
//! that state through Redis, using the [`redis`] crate's tokio
//! [`ConnectionManager`](::redis::aio::ConnectionManager) (reconnecting) and a
//! dedicated pub/sub connection per component.
//!
//! | backend | plugs into | shares |
//! |---|---|---|
//! | [`RedisCircuitSync`] | a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s [`Handle`](crate::circuit_breaker::Handle) | open/closed decisions, failure counts |
//! | [`RedisEscalationStore`] | [`EscalationLayer`](crate::escalation::EscalationLayer)`::builder(..).store(..)` | escalations, audit trail, wake-ups |
//! | [`RedisBatchStore`] | [`PartialBatchLayer`](crate::PartialBatchLayer)`::builder().store(..)` | successes of named batches |
//! | [`RedisCacheStore`] | [`CacheLayer`](crate::cache::CacheLayer)`::builder(..).store(..)` | cached answers |
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;
//! use tower_llm_resilience::escalation::{EscalationLayer, InvalidJsonAnswer};
//! use tower_llm_resilience::redis::{RedisCircuitSync, RedisEscalationStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = redis::Client::open("redis://127.0.0.1/")?;
//!
//! // Every instance builds its breaker as usual, then attaches it to Redis under
//! // the layer's name: an open decision on one instance opens the others.
//! let breaker = CircuitBreakerLayer::builder().name("openai").build()?;
//! let _sync = RedisCircuitSync::attach(client.clone(), &breaker.handle())?;
//!
//! // Escalations created here can be resolved through any instance.
//! let escalation = EscalationLayer::builder(InvalidJsonAnswer)
//!     .store(RedisEscalationStore::new(client)?)
//!     .detach(Duration::from_secs(3600))
//!     .build()?;
//! # let _ = escalation;
//! # Ok(())
//! # }
//! ```
//!
//! # Circuit breaker: how the state is shared
//!
//! The closed path stays local: a call reads the circuit's atomic state, as
//! without Redis, and never waits on the network. A [`RedisCircuitSync`] works
//! beside it in spawned tasks:
//!
//! - **Transitions are published at once.** It subscribes to the layer's
//!   [`CircuitEvent`](crate::circuit_breaker::CircuitEvent)s. When a circuit opens
//!   (failures, a failed probe, a slow-call rate) a Lua script writes the state key
//!   `{prefix}:cb:{name}:{circuit}:state` with a TTL equal to the open period and
//!   `PUBLISH`es it on `{prefix}:cb:{name}:events`; a recovery (probes succeeded,
//!   reset) deletes the key and publishes `closed`. Every other instance applies it
//!   with [`CircuitRef::apply_remote`](crate::circuit_breaker::CircuitRef::apply_remote)
//!   (an open decision reaches them in a few milliseconds on a LAN; tests measure
//!   ~3–7 ms on loopback). Applied states are not published again; forced states
//!   stay local (an operator's decision for one instance); half-open is each
//!   instance's own probing, and whichever probe succeeds first closes the circuit
//!   everywhere.
//! - **Failure accounting is shared.** Each instance adds its outcomes since the
//!   last flush (every [`flush_interval`](RedisCircuitSyncBuilder::flush_interval))
//!   to a hash per fixed window, `{...}:w:{window index}` (`HINCRBY`, TTL two
//!   windows). The same script checks the totals: once the window holds
//!   `minimum_calls` calls and `failure_rate` of them failed, it sets the state key
//!   with `SET NX` (so exactly one instance trips it), clears the window and
//!   publishes the open state. This catches an upstream that fails for everyone
//!   while no single instance sees enough to trip on its own
//!   ([`shared_failure_rate`](RedisCircuitSyncBuilder::shared_failure_rate)). Each
//!   instance's own trip policies keep working as before.
//! - **Keyed circuits** are shared per key (see [`SyncKey`]).
//!
//! # When Redis is unreachable
//!
//! No call fails because of Redis: circuits keep deciding on local state. The
//! outage is logged once (a `warn` event per outage, an `info` when Redis is
//! back) and exported as the gauge `llm_redis_connected{component, name}` (0/1)
//! and the counter `llm_redis_errors_total{component, name}`. The subscription
//! reconnects with backoff (and pings every second, so a silent connection is
//! noticed); once subscribed again it resynchronises: it reads every shared open
//! state (`SCAN`) and applies it, then writes the local open states Redis does not
//! have (`SET NX`), so decisions taken during the outage reach the others. A
//! `closed` published during an outage can be missed; the remote side then
//! recovers through its own probes when its open period ends.
//!
//! # Escalations and batches
//!
//! See [`RedisEscalationStore`] (atomic compare-and-swap and first resolution wins
//! through Lua scripts, TTL expiry, audit lists, pub/sub wake-ups for wait-mode
//! calls) and [`RedisBatchStore`] (a hash per batch id with a TTL). Both fail a
//! call's store operation with a store error while Redis is down, rather than risk
//! doing work twice or losing an escalation; their connections recover on their
//! own.
//!
//! # Keys
//!
//! Everything lives under one prefix (default `tower-llm`). Multi-key scripts
//! assume one Redis server (or a cluster where the prefix is a hash tag, e.g.
//! `{tower-llm}`).

mod batch_store;
mod cache;
mod circuit;
mod circuit_sync;
mod error;
mod escalation_store;
#[cfg(feature = "apalis")]
mod job_store;
mod link;
mod subscriber;
mod sync_key;

pub use self::batch_store::RedisBatchStore;
pub use self::cache::RedisCacheStore;
pub use self::circuit::{RedisCircuitSync, RedisCircuitSyncBuilder};
pub use self::error::ConfigError;
pub use self::escalation_store::{RedisEscalationStore, RedisEscalationStoreBuilder};
#[cfg(feature = "apalis")]
pub use self::job_store::RedisJobStore;
pub use self::sync_key::SyncKey;
