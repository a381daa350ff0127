//! Configuration, its builder, and build-time validation.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use super::key::{KeyBy, NoKey};
use super::Window;
use crate::classify::{DefaultClassifier, FailurePolicy};

/// The validated settings of one circuit breaker layer.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_call: Option<(f64, Duration)>,
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) cooldown: Duration,
    pub(crate) max_cooldown: Duration,
    pub(crate) backoff_multiplier: f64,
    pub(crate) jitter: f64,
    pub(crate) max_retry_after: Duration,
    pub(crate) probe_permits: u32,
    pub(crate) probe_successes: u32,
    pub(crate) policy: FailurePolicy,
    pub(crate) metrics_only: bool,
    pub(crate) max_keys: usize,
    pub(crate) seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            consecutive_failures: Some(5),
            failure_rate: None,
            slow_call: None,
            window: Window::Count(100),
            minimum_calls: 10,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(300),
            backoff_multiplier: 2.0,
            jitter: 0.1,
            max_retry_after: Duration::from_secs(600),
            probe_permits: 1,
            probe_successes: 1,
            policy: FailurePolicy::DEFAULT,
            metrics_only: false,
            max_keys: 1024,
            seed: None,
        }
    }
}

/// A setting `build()` refused, with the reason.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BuildError {
    /// A count that must be at least 1 was 0.
    Zero(&'static str),
    /// A rate outside `0.0..=1.0` (or NaN).
    RateOutOfRange(&'static str, f64),
    /// A duration that must be positive was zero.
    ZeroDuration(&'static str),
    /// `max_cooldown` is shorter than `cooldown`.
    MaxCooldownBelowCooldown {
        /// The base cooldown.
        cooldown: Duration,
        /// The cap it exceeds.
        max_cooldown: Duration,
    },
    /// The backoff multiplier is below 1 or not finite.
    BadMultiplier(f64),
    /// A time window whose buckets would be shorter than a millisecond.
    WindowTooFine {
        /// The window's span.
        span: Duration,
        /// The number of buckets asked for.
        buckets: u32,
    },
    /// Every trip policy is disabled: the circuit could never open.
    NoTripPolicy,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Zero(what) => write!(f, "circuit breaker: {what} must be at least 1"),
            BuildError::RateOutOfRange(what, v) => {
                write!(f, "circuit breaker: {what} must be within 0.0..=1.0, got {v}")
            }
            BuildError::ZeroDuration(what) => {
                write!(f, "circuit breaker: {what} must be longer than zero")
            }
            BuildError::MaxCooldownBelowCooldown {
                cooldown,
                max_cooldown,
            } => write!(
                f,
                "circuit breaker: max_cooldown ({max_cooldown:?}) is shorter than cooldown ({cooldown:?})"
            ),
            BuildError::BadMultiplier(m) => write!(
                f,
                "circuit breaker: backoff_multiplier must be a finite number >= 1.0, got {m}"
            ),
            BuildError::WindowTooFine { span, buckets } => write!(
                f,
                "circuit breaker: a time window of {span:?} cannot be cut into {buckets} buckets of at least 1ms"
            ),
            BuildError::NoTripPolicy => write!(
                f,
                "circuit breaker: no trip policy (consecutive failures, failure rate or slow-call rate) is enabled"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// Builds a [`CircuitBreakerLayer`](super::CircuitBreakerLayer); see the [module docs](super) for the policies.
///
/// Defaults: trip after 5 consecutive failures; cooldown 30 s, doubling on each
/// re-trip up to 300 s, with 10% jitter; `Retry-After` honoured up to 600 s; one
/// probe at a time, one success closes; rate policies off (window: last 100 calls,
/// minimum 10 calls); at most 1024 keyed circuits.
#[derive(Clone, Debug)]
pub struct Builder<C = DefaultClassifier, K = NoKey> {
    pub(crate) config: Config,
    pub(crate) classifier: C,
    pub(crate) keys: K,
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
            keys: NoKey,
        }
    }
}

impl<C, K> Builder<C, K> {
    /// A name for logs, metrics and events (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Open after `n` failures in a row (default 5).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.config.consecutive_failures = Some(n);
        self
    }

    /// Do not trip on consecutive failures (use the rate policies only).
    pub fn without_consecutive_failures(mut self) -> Self {
        self.config.consecutive_failures = None;
        self
    }

    /// Open when at least `rate` (0.0..=1.0) of the calls in the window failed, once
    /// the window holds [`minimum_calls`](Self::minimum_calls).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.config.failure_rate = Some(rate);
        self
    }

    /// Open when at least `rate` of the calls in the window took `threshold` or
    /// longer, once the window holds [`minimum_calls`](Self::minimum_calls).
    pub fn slow_call_rate(mut self, rate: f64, threshold: Duration) -> Self {
        self.config.slow_call = Some((rate, threshold));
        self
    }

    /// The window the rate policies look at (default: the last 100 calls).
    pub fn window(mut self, window: Window) -> Self {
        self.config.window = window;
        self
    }

    /// Calls the window must hold before a rate can trip the circuit (default 10).
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// How long the circuit stays open after its first trip (default 30 s).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.config.cooldown = cooldown;
        self
    }

    /// The longest the open duration grows to over re-trips (default 300 s).
    pub fn max_cooldown(mut self, max: Duration) -> Self {
        self.config.max_cooldown = max;
        self
    }

    /// Growth of the open duration per consecutive re-trip (default 2.0; 1.0 keeps
    /// it constant).
    pub fn backoff_multiplier(mut self, multiplier: f64) -> Self {
        self.config.backoff_multiplier = multiplier;
        self
    }

    /// Random extra open time, as a fraction of the open duration (0.0..=1.0,
    /// default 0.1), so that many instances do not probe in lockstep.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.config.jitter = fraction;
        self
    }

    /// Seed of the jitter's random numbers, for reproducible tests.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// The longest `Retry-After` the circuit honours (default 600 s).
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// Probes allowed in flight at once while half-open (default 1).
    pub fn probe_permits(mut self, n: u32) -> Self {
        self.config.probe_permits = n;
        self
    }

    /// Successful probes needed to close the circuit (default 1).
    pub fn probe_successes(mut self, n: u32) -> Self {
        self.config.probe_successes = n;
        self
    }

    /// Which failure kinds count against the circuit (default
    /// [`FailurePolicy::DEFAULT`]: caller bugs and prompt problems do not).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Track state, emit events and metrics, but never reject a call.
    pub fn metrics_only(mut self, enabled: bool) -> Self {
        self.config.metrics_only = enabled;
        self
    }

    /// The most keyed circuits kept (default 1024). See [`key_by`](Self::key_by).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.config.max_keys = n;
        self
    }

    /// Use another classifier (any [`Classify`](crate::classify::Classify), including
    /// a closure).
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2, K> {
        Builder {
            config: self.config,
            classifier,
            keys: self.keys,
        }
    }

    /// One circuit per key, chosen from each request (for example the upstream host
    /// or the model name), so one model's outage does not block the others.
    pub fn key_by<Req, Key, F>(self, key_fn: F) -> Builder<C, KeyBy<F, Key>>
    where
        F: Fn(&Req) -> Key,
    {
        Builder {
            config: self.config,
            classifier: self.classifier,
            keys: KeyBy {
                key_fn,
                _key: PhantomData,
            },
        }
    }

    /// Validate the settings; [`build`](Self::build) (in `layer.rs`) makes the
    /// layer from them.
    pub(crate) fn into_parts(self) -> Result<(Config, C, K), BuildError> {
        validate(&self.config)?;
        Ok((self.config, self.classifier, self.keys))
    }
}

fn validate(c: &Config) -> Result<(), BuildError> {
    let rate = |what, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(BuildError::RateOutOfRange(what, v))
        }
    };
    if c.consecutive_failures == Some(0) {
        return Err(BuildError::Zero("consecutive_failures"));
    }
    if let Some(r) = c.failure_rate {
        rate("failure_rate", r)?;
    }
    if let Some((r, threshold)) = c.slow_call {
        rate("slow_call_rate", r)?;
        if threshold.is_zero() {
            return Err(BuildError::ZeroDuration("slow call threshold"));
        }
    }
    rate("jitter", c.jitter)?;
    if c.consecutive_failures.is_none() && c.failure_rate.is_none() && c.slow_call.is_none() {
        return Err(BuildError::NoTripPolicy);
    }
    match c.window {
        Window::Count(0) => return Err(BuildError::Zero("window size")),
        Window::Time { buckets: 0, .. } => return Err(BuildError::Zero("window buckets")),
        Window::Time { span, buckets } => {
            if span.is_zero() {
                return Err(BuildError::ZeroDuration("window span"));
            }
            if span / buckets < Duration::from_millis(1) {
                return Err(BuildError::WindowTooFine { span, buckets });
            }
        }
        Window::Count(_) => {}
    }
    for (what, n) in [
        ("minimum_calls", c.minimum_calls),
        ("probe_permits", c.probe_permits),
        ("probe_successes", c.probe_successes),
    ] {
        if n == 0 {
            return Err(BuildError::Zero(what));
        }
    }
    if c.max_keys == 0 {
        return Err(BuildError::Zero("max_keys"));
    }
    if c.cooldown.is_zero() {
        return Err(BuildError::ZeroDuration("cooldown"));
    }
    if c.max_cooldown < c.cooldown {
        return Err(BuildError::MaxCooldownBelowCooldown {
            cooldown: c.cooldown,
            max_cooldown: c.max_cooldown,
        });
    }
    if !(c.backoff_multiplier.is_finite() && c.backoff_multiplier >= 1.0) {
        return Err(BuildError::BadMultiplier(c.backoff_multiplier));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: Builder) -> BuildError {
        b.build().unwrap_err()
    }

    #[test]
    fn bad_settings_are_build_errors() {
        let b = Builder::new;
        assert_eq!(
            err(b().consecutive_failures(0)),
            BuildError::Zero("consecutive_failures")
        );
        assert!(matches!(
            err(b().failure_rate(1.5)),
            BuildError::RateOutOfRange(..)
        ));
        assert!(matches!(
            err(b().failure_rate(f64::NAN)),
            BuildError::RateOutOfRange(..)
        ));
        assert!(matches!(
            err(b().slow_call_rate(-0.1, Duration::from_secs(1))),
            BuildError::RateOutOfRange(..)
        ));
        assert_eq!(
            err(b().slow_call_rate(0.5, Duration::ZERO)),
            BuildError::ZeroDuration("slow call threshold")
        );
        assert_eq!(
            err(b().window(Window::count(0))),
            BuildError::Zero("window size")
        );
        assert_eq!(
            err(b().window(Window::time(Duration::from_secs(1), 0))),
            BuildError::Zero("window buckets")
        );
        assert!(matches!(
            err(b().window(Window::time(Duration::from_millis(5), 10))),
            BuildError::WindowTooFine { .. }
        ));
        assert_eq!(err(b().minimum_calls(0)), BuildError::Zero("minimum_calls"));
        assert_eq!(err(b().probe_permits(0)), BuildError::Zero("probe_permits"));
        assert_eq!(
            err(b().probe_successes(0)),
            BuildError::Zero("probe_successes")
        );
        assert_eq!(err(b().max_keys(0)), BuildError::Zero("max_keys"));
        assert_eq!(
            err(b().cooldown(Duration::ZERO)),
            BuildError::ZeroDuration("cooldown")
        );
        assert!(matches!(
            err(b()
                .cooldown(Duration::from_secs(10))
                .max_cooldown(Duration::from_secs(1))),
            BuildError::MaxCooldownBelowCooldown { .. }
        ));
        assert_eq!(
            err(b().backoff_multiplier(0.5)),
            BuildError::BadMultiplier(0.5)
        );
        assert_eq!(
            err(b().without_consecutive_failures()),
            BuildError::NoTripPolicy
        );
        assert!(err(b().jitter(2.0)).to_string().contains("jitter"));
    }

    #[test]
    fn defaults_build() {
        assert!(Builder::new().build().is_ok());
        assert!(Builder::new()
            .without_consecutive_failures()
            .failure_rate(0.5)
            .window(Window::time(Duration::from_secs(60), 6))
            .build()
            .is_ok());
    }
}
