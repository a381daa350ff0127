//! The TOML configuration.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! workers = 2               # optional: serving threads (default: one per CPU)
//!
//! [[upstreams]]
//! name = "primary"          # free text, reported in x-llm-proxy-tier
//! kind = "openai"           # "openai" (any OpenAI-compatible API) or "anthropic"
//! base_url = "http://127.0.0.1:9001/v1"
//! api_key_env = "PRIMARY_KEY"   # optional: the variable holding the upstream key
//!
//! [[models]]
//! name = "smart"
//! tiers = [ { upstream = "primary", model = "gpt-4o" },
//!           { upstream = "secondary", model = "claude-sonnet" } ]
//! template = "We are experiencing issues; please try again shortly."
//! ```
//!
//! Everything else has defaults: `[auth]`, `[limits]`, `[circuit]` (and a
//! `circuit` table on each upstream to override it), `[retry]` (and `retry`,
//! `rate_limit` tables on each upstream), `[escalation]`, `[batch]`
//! and `[state]` (`redis_url`: shared state for many proxies). See
//! `examples/proxy/README.md`.
//!
//! The file is read once ([`Config::load`], [`Config::from_toml`]) into typed
//! values: every `*_secs` setting is a [`Duration`], and
//! a wrong value is an error naming its setting (`limits.client_body_timeout_secs:
//! must be > 0 ...`). One file per table: `upstreams` (with `[[models]]` and
//! `[circuit]`), `retry` (with `rate_limit`), `auth`, `limits`, `escalation`, `batch`, `state`; `check`
//! holds what is checked across tables, keys and secrets.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

mod auth;
mod batch;
mod budgets;
mod cache;
mod check;
mod escalation;
mod limits;
mod retry;
mod state;
mod telemetry;
#[cfg(test)]
mod tests;
mod upstreams;
mod usage;

pub use self::auth::AuthConfig;
pub use self::batch::{BatchConfig, JobQueue};
pub use self::budgets::{BudgetConfig, BudgetsConfig};
pub use self::cache::{CacheConfig, CacheMode};
pub use self::escalation::{EscalationConfig, EscalationMode, OnTimeout, StoreKind, WebhookConfig};
pub use self::limits::LimitsConfig;
pub use self::retry::{RateLimitConfig, RetryConfig};
pub use self::state::StateConfig;
pub use self::telemetry::TelemetryConfig;
pub use self::upstreams::{CircuitConfig, ModelConfig, TierConfig, UpstreamConfig, UpstreamKind};
pub use self::usage::{PriceConfig, UsageConfig};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the proxy listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serving threads, each with a runtime and upstream connections of its own
    /// (default: one per CPU).
    #[serde(default)]
    pub workers: Option<usize>,
    /// The providers.
    pub upstreams: Vec<UpstreamConfig>,
    /// The model names clients ask for, each a chain of tiers.
    pub models: Vec<ModelConfig>,
    /// Client and admin keys.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Request limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Circuit breaker defaults for every upstream.
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// Retries of one upstream before its tier falls back (off by default).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Human escalation.
    #[serde(default)]
    pub escalation: EscalationConfig,
    /// The `/v1/batch` endpoint.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where circuits, escalations and batch records live.
    #[serde(default)]
    pub state: StateConfig,
    /// Traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Usage records, `GET /v1/usage` and prices.
    #[serde(default)]
    pub usage: UsageConfig,
    /// Spend, request and token limits per client key.
    #[serde(default)]
    pub budgets: BudgetsConfig,
    /// The response cache.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// The most serving threads a config may ask for.
pub(crate) const MAX_WORKERS: usize = 256;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// A configuration that cannot work.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// The longest duration a `*_secs` setting may hold (about 31 years).
const MAX_SECS: f64 = 1e9;

/// A `*_secs` setting: a positive, finite number of seconds (an integer or a
/// decimal) in the file, a `Duration` once read. The error says what is wrong;
/// [`Config::from_toml`] puts the setting's name in front.
fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && value > 0.0 && value < MAX_SECS {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(serde::de::Error::custom(format!(
            "must be > 0 and < {MAX_SECS} (a number of seconds), not {value}"
        )))
    }
}

/// `Ok` when `value`, the duration of `setting`, is positive: a config built
/// or edited in code has not been through [`seconds`].
fn positive(setting: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        err(format!("{setting}: must be > 0"))
    } else {
        Ok(())
    }
}

impl Config {
    /// Parse and check a TOML text.
    ///
    /// An error in a setting names it (`limits.client_body_timeout_secs: must
    /// be > 0 ...`), with the line it is on.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let parsed = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError(e.to_string()))
            .and_then(|deserializer| {
                serde_path_to_error::deserialize(deserializer).map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    if path == "." {
                        return ConfigError(inner.to_string());
                    }
                    let line = inner
                        .span()
                        .and_then(|span| text.get(..span.start))
                        .map(|before| before.matches('\n').count() + 1);
                    match line {
                        Some(line) => {
                            ConfigError(format!("{path}: {} (line {line})", inner.message()))
                        }
                        None => ConfigError(format!("{path}: {}", inner.message())),
                    }
                })
            });
        let config: Config = parsed?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and check a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// The number of serving threads: `workers`, or one per CPU.
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}
