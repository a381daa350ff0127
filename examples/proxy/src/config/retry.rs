//! `[retry]` (also a `retry` table on an upstream) and an upstream's
//! `rate_limit` table: retries of one upstream before its tier falls back, and
//! the limits respected before the upstream answers `429`.

use super::*;

/// Retry settings (see `tower_llm_resilience::retry`). Off by default
/// (`max_attempts = 1`): a model's next tier is usually the better retry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request to one upstream, the first included (1: no retry).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The first backoff ceiling (doubles per retry, full jitter).
    #[serde(default = "default_backoff", deserialize_with = "seconds")]
    pub backoff_secs: Duration,
    /// The largest backoff ceiling.
    #[serde(default = "default_max_backoff", deserialize_with = "seconds")]
    pub max_backoff_secs: Duration,
    /// The longest `Retry-After` honoured; a longer one is waited this long.
    #[serde(default = "default_max_retry_after", deserialize_with = "seconds")]
    pub max_retry_after_secs: Duration,
    /// No retry whose wait would end later than this after the first attempt.
    #[serde(default = "default_deadline", deserialize_with = "seconds")]
    pub deadline_secs: Duration,
    /// Retries may add at most this share of the requests (0.2: 20% more
    /// upstream calls), over a 10 s window...
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f32,
    /// ...plus this many retries per second.
    #[serde(default = "default_budget_min")]
    pub budget_min_per_sec: u32,
}

fn default_attempts() -> u32 {
    1
}

fn default_backoff() -> Duration {
    Duration::from_millis(250)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}

fn default_max_retry_after() -> Duration {
    Duration::from_secs(10)
}

fn default_deadline() -> Duration {
    Duration::from_secs(30)
}

fn default_budget_ratio() -> f32 {
    0.2
}

fn default_budget_min() -> u32 {
    1
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            backoff_secs: default_backoff(),
            max_backoff_secs: default_max_backoff(),
            max_retry_after_secs: default_max_retry_after(),
            deadline_secs: default_deadline(),
            budget_ratio: default_budget_ratio(),
            budget_min_per_sec: default_budget_min(),
        }
    }
}

/// An upstream's own limits, and how to behave while one is exhausted. With
/// this table the upstream's announced limits (`x-ratelimit-*`,
/// `anthropic-ratelimit-*`, a `429`'s `Retry-After`) are respected too.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// At most this many requests per minute.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// At most about this many tokens per minute (a request counts its body's
    /// bytes / 4).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// How long a request may wait for a limit to reset; 0 (the default): fail
    /// at once as rate limited, so the model's next tier answers.
    #[serde(default)]
    pub max_wait_ms: u64,
}
