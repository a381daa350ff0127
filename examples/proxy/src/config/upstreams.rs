//! `[[upstreams]]`, `[[models]]` and `[circuit]` (also a `circuit` table on an
//! upstream; `retry` and `rate_limit` tables are in [`super::retry`]): the providers, the tiers clients' model names map to, and the
//! circuit breakers in front of the providers.

use super::*;

/// The wire format an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// Any OpenAI-compatible chat completions API: requests are passed through.
    Openai,
    /// The Anthropic Messages API: requests and answers are translated.
    Anthropic,
}

/// One provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Free text, reported in `x-llm-proxy-tier`.
    pub name: String,
    /// Its wire format.
    pub kind: UpstreamKind,
    /// Base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The environment variable holding its API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The longest wait for a whole non-streamed answer, or for a stream's head.
    #[serde(default = "default_timeout_secs", deserialize_with = "seconds")]
    pub timeout_secs: Duration,
    /// The longest silence inside a stream once it started.
    #[serde(default = "default_idle_secs", deserialize_with = "seconds")]
    pub stream_idle_timeout_secs: Duration,
    /// Overrides of the `[circuit]` defaults for this upstream.
    #[serde(default)]
    pub circuit: Option<CircuitConfig>,
    /// Overrides of the `[retry]` defaults for this upstream.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// This upstream's rate limits (none by default).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

fn default_timeout_secs() -> Duration {
    Duration::from_secs(60)
}

fn default_idle_secs() -> Duration {
    Duration::from_secs(30)
}

/// One tier of a model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// An upstream's name.
    pub upstream: String,
    /// More upstreams serving the same model (regions, keys, replicas): the
    /// tier's calls are spread over `upstream` and these (p2c over peak-EWMA
    /// latency), none to one whose circuit is open. The tier keeps
    /// `upstream`'s name.
    #[serde(default)]
    pub balance_with: Vec<String>,
    /// The model name sent to that upstream.
    pub model: String,
}

/// A model name clients ask for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name in `"model"` of client requests.
    pub name: String,
    /// Tried in order.
    pub tiers: Vec<TierConfig>,
    /// The answer of last resort, when every tier failed.
    #[serde(default)]
    pub template: Option<String>,
}

/// Circuit breaker settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Failures in a row that open the circuit.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// How long it stays open before a probe (grows on re-trips).
    #[serde(default = "default_cooldown", deserialize_with = "seconds")]
    pub cooldown_secs: Duration,
    /// The longest cooldown.
    #[serde(default = "default_max_cooldown", deserialize_with = "seconds")]
    pub max_cooldown_secs: Duration,
    /// Also open when this share of the recent calls failed (0 to 1).
    #[serde(default)]
    pub failure_rate: Option<f64>,
}

fn default_consecutive() -> u32 {
    5
}

fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}

fn default_max_cooldown() -> Duration {
    Duration::from_secs(300)
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive(),
            cooldown_secs: default_cooldown(),
            max_cooldown_secs: default_max_cooldown(),
            failure_rate: None,
        }
    }
}
