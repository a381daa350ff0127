//! `[state]`: where circuits, escalations and batch records live.
//!
//! Without `redis_url` everything is embedded: each upstream's circuit is per
//! process, escalations are in `[escalation]`'s store (SQLite or memory), batch
//! records in memory. With it, several proxies configured with the same Redis and
//! prefix share one state:
//!
//! - each upstream's `CircuitBreakerLayer` is attached with a
//!   [`RedisCircuitSync`] named after the upstream: an open decision on one proxy
//!   opens the circuit on every other (the closed path stays local);
//! - escalations are kept in a [`RedisEscalationStore`]: created on one proxy,
//!   listed and resolved through any, a waiting request woken wherever it waits;
//! - batch records are kept in a [`RedisBatchStore`]: a batch re-run on another
//!   proxy gets its successes back as cached.
//!
//! Nothing connects at startup: the backends connect lazily and reconnect on
//! their own. While Redis is unreachable the circuits decide on local state and
//! the stores fail their operations (see the README).

use tower_llm_resilience::circuit_breaker::Handle;
use tower_llm_resilience::redis::{RedisBatchStore, RedisCircuitSync, RedisEscalationStore};

use crate::config::{ConfigError, StateConfig};

/// The Redis behind `[state] redis_url`, with the key prefix.
#[derive(Clone)]
pub(crate) struct RedisState {
    client: redis::Client,
    prefix: String,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection info may hold a password: only the address is shown.
        f.debug_struct("RedisState")
            .field(
                "addr",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisState {
    /// The Redis of `config`, if `redis_url` is set (the URL is parsed, nothing is
    /// connected). The backends spawn their tasks on the current tokio runtime, so
    /// the proxy must be built inside the runtime that serves it.
    pub(crate) fn from_config(config: &StateConfig) -> Result<Option<Self>, ConfigError> {
        let Some(client) = config.redis_client()? else {
            return Ok(None);
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError(
                "state.redis_url: the proxy must be built inside a tokio runtime".into(),
            ));
        }
        let state = Self {
            client,
            prefix: config.prefix.clone(),
        };
        tracing::info!(
            redis = %state.client.get_connection_info().addr(),
            prefix = %state.prefix,
            "shared state on Redis: circuits, escalations and batch records"
        );
        Ok(Some(state))
    }

    /// Share the circuits of `handle` (upstream `upstream`) with every proxy on
    /// this Redis and prefix, until the returned guard is dropped.
    pub(crate) fn attach_circuit(
        &self,
        upstream: &str,
        handle: &Handle<()>,
    ) -> Result<RedisCircuitSync, ConfigError> {
        RedisCircuitSync::builder(self.client.clone())
            .name(upstream)
            .prefix(self.prefix.as_str())
            .attach(handle)
            .map_err(|e| ConfigError(format!("circuit of upstream {upstream:?}: {e}")))
    }

    /// The Redis client and the key prefix, for the proxy's own counters
    /// (budgets).
    pub(crate) fn client_and_prefix(&self) -> (redis::Client, String) {
        (self.client.clone(), self.prefix.clone())
    }

    /// The escalation store.
    pub(crate) fn escalation_store(&self) -> Result<RedisEscalationStore, ConfigError> {
        RedisEscalationStore::builder(self.client.clone())
            .prefix(self.prefix.as_str())
            .build()
            .map_err(|e| ConfigError(format!("escalation store: {e}")))
    }

    /// The batch store.
    pub(crate) fn batch_store(&self) -> Result<RedisBatchStore, ConfigError> {
        Ok(RedisBatchStore::new(self.client.clone())
            .map_err(|e| ConfigError(format!("batch store: {e}")))?
            .prefix(self.prefix.as_str()))
    }
}
