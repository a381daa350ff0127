//! `[limits]`: request sizes, client connections and timeouts.

use super::*;

/// Request limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Larger request bodies get a 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// A stream that sends no event for this long after its head falls back.
    #[serde(default = "default_first_event_secs", deserialize_with = "seconds")]
    pub first_event_timeout_secs: Duration,
    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish.
    #[serde(default = "default_grace_secs", deserialize_with = "seconds")]
    pub shutdown_grace_secs: Duration,
    /// Open client connections, in all (nginx `worker_connections`); over it,
    /// new connections wait in the listen queue while the open ones are served.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The longest a client may take to send a request head (nginx
    /// `client_header_timeout`); also the longest a kept-alive connection waits
    /// for its next request.
    #[serde(default = "default_client_timeout_secs", deserialize_with = "seconds")]
    pub client_header_timeout_secs: Duration,
    /// The longest silence between two reads of a request body (nginx
    /// `client_body_timeout`): a 408 then.
    #[serde(default = "default_client_timeout_secs", deserialize_with = "seconds")]
    pub client_body_timeout_secs: Duration,
    /// An idle kept-alive connection is closed after this (nginx
    /// `keepalive_timeout`; `client_header_timeout_secs` when shorter).
    #[serde(default = "default_keepalive_secs", deserialize_with = "seconds")]
    pub keepalive_timeout_secs: Duration,
    /// How often the metrics recorder drains its samples, whether or not
    /// `/metrics` is scraped.
    #[serde(default = "default_upkeep_secs", deserialize_with = "seconds")]
    pub metrics_upkeep_secs: Duration,
    /// The most an upstream may answer, in bytes (a buffered answer, or a whole
    /// stream): over it the tier fails as an invalid response and falls back.
    #[serde(default = "default_max_upstream_body")]
    pub max_upstream_body_bytes: usize,
}

fn default_max_connections() -> usize {
    1024
}

fn default_client_timeout_secs() -> Duration {
    Duration::from_secs(60)
}

fn default_keepalive_secs() -> Duration {
    Duration::from_secs(75)
}

fn default_upkeep_secs() -> Duration {
    Duration::from_secs(5)
}

fn default_max_upstream_body() -> usize {
    16 * 1024 * 1024
}

fn default_max_body() -> usize {
    1024 * 1024
}

fn default_first_event_secs() -> Duration {
    Duration::from_secs(10)
}

fn default_grace_secs() -> Duration {
    Duration::from_secs(10)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            first_event_timeout_secs: default_first_event_secs(),
            shutdown_grace_secs: default_grace_secs(),
            max_connections: default_max_connections(),
            client_header_timeout_secs: default_client_timeout_secs(),
            client_body_timeout_secs: default_client_timeout_secs(),
            keepalive_timeout_secs: default_keepalive_secs(),
            metrics_upkeep_secs: default_upkeep_secs(),
            max_upstream_body_bytes: default_max_upstream_body(),
        }
    }
}
