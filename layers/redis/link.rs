//! Whether Redis is reachable, as one component sees it: logged once per outage,
//! exported as a gauge.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

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
#[derive(Debug)]
pub(crate) struct Link {
    component: &'static str,
    name: String,
    state: AtomicU8,
}

impl Link {
    pub(crate) fn new(component: &'static str, name: impl Into<String>) -> Self {
        Self {
            component,
            name: name.into(),
            state: AtomicU8::new(UNKNOWN),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// A command or connection succeeded.
    pub(crate) fn up(&self) {
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            metrics::gauge!("llm_redis_connected", "component" => self.component, "name" => self.name.clone())
                .set(1.0);
            tracing::info!(component = self.component, name = %self.name, "redis reachable");
        }
    }

    /// A command or connection failed: warn once per outage, count every time.
    pub(crate) fn down(&self, error: &dyn fmt::Display) {
        metrics::counter!("llm_redis_errors_total", "component" => self.component, "name" => self.name.clone())
            .increment(1);
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            metrics::gauge!("llm_redis_connected", "component" => self.component, "name" => self.name.clone())
                .set(0.0);
            tracing::warn!(
                component = self.component,
                name = %self.name,
                error = %error,
                "redis unreachable; keeping local state until it returns"
            );
        }
    }

    /// Record the outcome of one Redis command.
    pub(crate) fn observe<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        match &result {
            Ok(_) => self.up(),
            Err(e) => self.down(e),
        }
        result
    }
}
