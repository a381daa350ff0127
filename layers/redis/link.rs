//! Whether Redis is reachable, as one component sees it (the shared
//! [`Link`](crate::backend::Link)), and the connection manager's settings.

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

pub(crate) use crate::backend::Link;

/// How long a command or a connection attempt may take before Redis counts as
/// unreachable. Commands run off the request path (circuit sync) or on slow paths
/// (escalations, batch records), so this bounds how long those wait on a dead Redis.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection manager's settings: fail a command within [`IO_TIMEOUT`] when
/// Redis is gone, and let the next command try to reconnect.
pub(crate) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200))
}

/// The reachability of Redis for one component (`circuit`, `escalation_store`, ...).
///
/// Metrics: gauge `llm_redis_connected{component, name}` (1 or 0) and counter
/// `llm_redis_errors_total{component, name}`.
pub(crate) fn link(component: &'static str, name: impl Into<String>) -> Link {
    Link::new(&crate::backend::REDIS, component, name)
}

impl Link {
    /// Record the outcome of one Redis command.
    pub(crate) fn observe<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        match &result {
            Ok(_) => self.up(),
            Err(e) => self.down(e),
        }
        result
    }
}
