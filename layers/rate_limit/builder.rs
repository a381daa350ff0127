//! Configuration, its builder, and build-time validation.

use std::fmt;
use std::time::Duration;

use crate::classify::DefaultClassifier;

/// The validated settings of one rate-limit layer.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) max_wait: Duration,
    pub(crate) requests_per_minute: Option<u32>,
    pub(crate) tokens_per_minute: Option<u64>,
    pub(crate) unannounced_429_wait: Duration,
    pub(crate) has_token_cost: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            max_wait: Duration::from_secs(30),
            requests_per_minute: None,
            tokens_per_minute: None,
            unannounced_429_wait: Duration::from_secs(1),
            has_token_cost: false,
        }
    }
}

/// A setting `build()` refused, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// A per-minute limit of 0 would never let a call through.
    ZeroLimit(&'static str),
    /// `tokens_per_minute` without a way to count a request's tokens.
    TokensWithoutCost,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroLimit(what) => write!(f, "rate limit: {what} must be at least 1"),
            BuildError::TokensWithoutCost => write!(
                f,
                "rate limit: tokens_per_minute needs token_cost(..) to count each request's tokens"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// No token cost: only the limits that count requests apply.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTokenCost;

/// Builds a [`RateLimitLayer`](super::RateLimitLayer); see the [module docs](super).
///
/// Defaults: limits only as the upstream announces them; wait up to 30 s in
/// `poll_ready` for one to reset, else fail at once; a `429` that says no wait
/// blocks calls for 1 s.
#[derive(Clone, Debug)]
pub struct Builder<C = DefaultClassifier, T = NoTokenCost> {
    pub(crate) config: Config,
    pub(crate) classifier: C,
    pub(crate) token_cost: T,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Builder {
            config: Config::default(),
            classifier: DefaultClassifier,
            token_cost: NoTokenCost,
        }
    }
}

impl<C, T> Builder<C, T> {
    /// A name for logs and metrics (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The longest a caller waits in `poll_ready` for a limit to reset (default
    /// 30 s). When the reset is further away, the call fails at once with
    /// [`RateLimitExceeded`](super::RateLimitExceeded), without being sent.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// Never wait: while a limit is exhausted, every call fails at once.
    pub fn fail_fast(self) -> Self {
        self.max_wait(Duration::ZERO)
    }

    /// A limit of our own: at most `n` calls per minute (a fixed window that
    /// starts with its first call), on top of what the upstream announces.
    pub fn requests_per_minute(mut self, n: u32) -> Self {
        self.config.requests_per_minute = Some(n);
        self
    }

    /// A limit of our own: at most `n` tokens per minute, counted by
    /// [`token_cost`](Self::token_cost) when each call is sent. The call that
    /// crosses the limit goes through; the calls after it wait for the window to end.
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.config.tokens_per_minute = Some(n);
        self
    }

    /// How many tokens a request costs, for [`tokens_per_minute`](Self::tokens_per_minute):
    /// a closure `Fn(&Request) -> u64` (an estimate such as the prompt's bytes / 4
    /// plus its `max_tokens` is enough).
    pub fn token_cost<T2>(mut self, cost: T2) -> Builder<C, T2> {
        self.config.has_token_cost = true;
        Builder {
            config: self.config,
            classifier: self.classifier,
            token_cost: cost,
        }
    }

    /// How long to hold calls after a `429` that did not say how long to wait
    /// (default 1 s).
    pub fn unannounced_429_wait(mut self, wait: Duration) -> Self {
        self.config.unannounced_429_wait = wait;
        self
    }

    /// The classifier that spots rate-limit answers (default [`DefaultClassifier`]).
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2, T> {
        Builder {
            config: self.config,
            classifier,
            token_cost: self.token_cost,
        }
    }

    pub(crate) fn into_parts(self) -> Result<(Config, C, T), BuildError> {
        if self.config.requests_per_minute == Some(0) {
            return Err(BuildError::ZeroLimit("requests_per_minute"));
        }
        if self.config.tokens_per_minute == Some(0) {
            return Err(BuildError::ZeroLimit("tokens_per_minute"));
        }
        if self.config.tokens_per_minute.is_some() && !self.config.has_token_cost {
            return Err(BuildError::TokensWithoutCost);
        }
        Ok((self.config, self.classifier, self.token_cost))
    }
}
