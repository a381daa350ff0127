//! [`CircuitSync`]: how one upstream's circuit is shared with the other proxies.

use tower_llm_resilience::circuit_breaker::Handle;
use tower_llm_resilience::postgres::PostgresCircuitSync;
use tower_llm_resilience::redis::RedisCircuitSync;

use crate::config::ConfigError;
use crate::postgres_state::PostgresState;
use crate::redis_state::RedisState;

/// One upstream's circuit, shared through Redis (when `[state]` names one) or
/// else PostgreSQL; it stops sharing when dropped.
#[derive(Debug)]
#[non_exhaustive]
pub enum CircuitSync {
    /// Through Redis (`[state] redis_url`).
    Redis(RedisCircuitSync),
    /// Through PostgreSQL (`[state] postgres_url` without Redis).
    Postgres(PostgresCircuitSync),
}

impl CircuitSync {
    /// Attach `handle` (upstream `upstream`) to Redis if given, else to
    /// PostgreSQL if given (`None`: the circuit stays per process).
    pub(crate) fn attach(
        upstream: &str,
        handle: &Handle<()>,
        redis: Option<&RedisState>,
        postgres: Option<&PostgresState>,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(match (redis, postgres) {
            (Some(redis), _) => Some(Self::Redis(redis.attach_circuit(upstream, handle)?)),
            (None, Some(pg)) => Some(Self::Postgres(pg.attach_circuit(upstream, handle)?)),
            (None, None) => None,
        })
    }

    /// Whether it hears the other proxies' decisions now (its subscription or
    /// listening connection is up).
    pub fn is_connected(&self) -> bool {
        match self {
            Self::Redis(sync) => sync.is_connected(),
            Self::Postgres(sync) => sync.is_listening(),
        }
    }
}
