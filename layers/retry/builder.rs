//! Configuration, its builder, and build-time validation.

use std::fmt;
use std::time::Duration;

use crate::classify::{DefaultClassifier, FailurePolicy};
use crate::partial_batch::backoff::Backoff;

/// The validated settings of one retry layer.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_retry_after: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) budget: Option<BudgetConfig>,
    pub(crate) policy: FailurePolicy,
    pub(crate) seed: Option<u64>,
}

/// The retry budget: tower's [`TpsBudget`](tower::retry::budget::TpsBudget) settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BudgetConfig {
    pub(crate) ttl: Duration,
    pub(crate) min_per_sec: u32,
    pub(crate) ratio: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_millis(250),
                max: Duration::from_secs(10),
            },
            max_retry_after: Duration::from_secs(60),
            deadline: Some(Duration::from_secs(120)),
            budget: Some(BudgetConfig {
                ttl: Duration::from_secs(10),
                min_per_sec: 1,
                ratio: 0.2,
            }),
            policy: FailurePolicy::DEFAULT,
            seed: None,
        }
    }
}

/// A setting `build()` refused, with the reason.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BuildError {
    /// `max_attempts` was 0: not even the first call could be made.
    ZeroAttempts,
    /// A duration that must be positive was zero.
    ZeroDuration(&'static str),
    /// `max_backoff` is shorter than `base_backoff`.
    MaxBackoffBelowBase {
        /// The first backoff ceiling.
        base: Duration,
        /// The cap it exceeds.
        max: Duration,
    },
    /// The budget's window is outside 1 s..=60 s (tower's `TpsBudget` bounds).
    BudgetWindow(Duration),
    /// The budget's ratio is outside 0.0..=1000.0, or not a number.
    BudgetRatio(f32),
    /// The budget's floor of retries per second is `i32::MAX` or more.
    BudgetFloor(u32),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroAttempts => write!(f, "retry: max_attempts must be at least 1"),
            BuildError::ZeroDuration(what) => write!(f, "retry: {what} must be longer than zero"),
            BuildError::MaxBackoffBelowBase { base, max } => write!(
                f,
                "retry: max_backoff ({max:?}) is shorter than base_backoff ({base:?})"
            ),
            BuildError::BudgetWindow(ttl) => write!(
                f,
                "retry: the budget window must be within 1s..=60s, got {ttl:?}"
            ),
            BuildError::BudgetRatio(r) => write!(
                f,
                "retry: the budget ratio must be within 0.0..=1000.0, got {r}"
            ),
            BuildError::BudgetFloor(n) => write!(
                f,
                "retry: the budget's minimum retries per second must be below {}, got {n}",
                i32::MAX
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// Builds a [`RetryLayer`](super::RetryLayer); see the [module docs](super).
///
/// Defaults: at most 3 attempts (2 retries); backoff with full jitter from 250 ms
/// doubling up to 10 s; a server's `Retry-After` honoured up to 60 s; no retry
/// that would end more than 120 s after the first attempt was sent; a budget of
/// 20% extra calls (plus 1 retry per second) over a 10 s window; retry the kinds
/// [`FailurePolicy::DEFAULT`] calls retryable.
#[derive(Clone, Debug)]
pub struct Builder<C = DefaultClassifier> {
    pub(crate) config: Config,
    pub(crate) classifier: C,
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
        }
    }
}

impl<C> Builder<C> {
    /// A name for logs and metrics (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Attempts per request, the first one included (default 3; 1 disables retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The ceiling of the first backoff (default 250 ms); it doubles on each retry.
    pub fn base_backoff(mut self, base: Duration) -> Self {
        self.config.backoff.base = base;
        self
    }

    /// The largest backoff ceiling (default 10 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.config.backoff.max = max;
        self
    }

    /// The longest server-given wait (`Retry-After`, a provider reset, an open
    /// circuit's remaining time) honoured before a retry (default 60 s). A longer
    /// one is waited this long: the retry may well fail again, which the retry
    /// count and the deadline bound.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// No retry is started whose wait would end later than `deadline` after the
    /// first attempt was sent (default 120 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// No overall deadline: only the attempt count bounds a request.
    pub fn without_deadline(mut self) -> Self {
        self.config.deadline = None;
        self
    }

    /// The retry budget, shared by every service the layer makes: over a sliding
    /// `window` (1 s..=60 s), retries may add at most `ratio` of the requests made
    /// (0.2 = 20% more upstream calls), plus `min_per_sec` retries per second so a
    /// quiet client can still retry (default: 10 s, 1/s, 0.2). Tower's
    /// [`TpsBudget`](tower::retry::budget::TpsBudget) keeps the account.
    pub fn budget(mut self, window: Duration, min_per_sec: u32, ratio: f32) -> Self {
        self.config.budget = Some(BudgetConfig {
            ttl: window,
            min_per_sec,
            ratio,
        });
        self
    }

    /// No budget: every retryable failure is retried up to `max_attempts`. During
    /// a full outage the upstream then sees `max_attempts` times the traffic.
    pub fn without_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Which kinds are retried (default [`FailurePolicy::DEFAULT`]: rate limits,
    /// overloads, server errors, timeouts, connection errors, open circuits).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Seed the backoff jitter, for reproducible runs and tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// The classifier that turns each attempt's result into an outcome
    /// (default [`DefaultClassifier`]).
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            config: self.config,
            classifier,
        }
    }

    pub(crate) fn into_parts(self) -> Result<(Config, C), BuildError> {
        let c = &self.config;
        if c.max_attempts == 0 {
            return Err(BuildError::ZeroAttempts);
        }
        if c.backoff.base.is_zero() {
            return Err(BuildError::ZeroDuration("base_backoff"));
        }
        if c.backoff.max < c.backoff.base {
            return Err(BuildError::MaxBackoffBelowBase {
                base: c.backoff.base,
                max: c.backoff.max,
            });
        }
        if c.deadline.is_some_and(|d| d.is_zero()) {
            return Err(BuildError::ZeroDuration("deadline"));
        }
        if let Some(budget) = c.budget {
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&budget.ttl) {
                return Err(BuildError::BudgetWindow(budget.ttl));
            }
            if !(0.0..=1000.0).contains(&budget.ratio) {
                return Err(BuildError::BudgetRatio(budget.ratio));
            }
            if budget.min_per_sec >= i32::MAX as u32 {
                return Err(BuildError::BudgetFloor(budget.min_per_sec));
            }
        }
        Ok((self.config, self.classifier))
    }
}
