//! One upstream as its tiers call it:
//!
//! ```text
//! RateLimit          (the upstream's rate_limit table; absent without one)
//!   └ CircuitBreaker (one per upstream, [circuit])
//!       └ Retry      ([retry] / the upstream's retry table; absent with max_attempts = 1)
//!           └ Upstream
//! ```
//!
//! The limiter is outside the breaker: a request it refuses (a limit exhausted,
//! failed at once as `RateLimited` so the model's next tier answers) was never
//! sent, and does not count against the upstream's circuit; the answers it
//! learns limits from are the breaker's (a `CircuitOpen` teaches it nothing).
//! The retry is inside the breaker, so the circuit sees one outcome per request
//! (the last attempt's).

use std::sync::Arc;
use std::time::Duration;

use tower::util::Either;
use tower::Layer;
use tower_llm_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use tower_llm_resilience::rate_limit::{self, RateLimit, RateLimitLayer};
use tower_llm_resilience::retry::{self, Retry, RetryLayer};

use super::{ProxyClassifier, Req};
use crate::config::{ConfigError, RateLimitConfig, RetryConfig};
use crate::upstream::Upstream;

/// A request's token estimate for `tokens_per_minute`: its body's bytes / 4.
pub(crate) type TokenEstimate = fn(&Req) -> u64;

fn body_tokens(request: &Req) -> u64 {
    request.body().len() as u64 / 4
}

/// An upstream, retried if retries are on.
pub(crate) type Retried = Either<Retry<Upstream, ProxyClassifier>, Upstream>;

/// That behind its circuit breaker.
pub(crate) type Breaker = CircuitBreaker<Retried, ProxyClassifier>;

/// That behind its limiter, if it has one: what the tiers call.
pub(crate) type Limited = Either<RateLimit<Breaker, ProxyClassifier, TokenEstimate>, Breaker>;

/// What `/v1/circuits` and `/metrics` show of an upstream besides its circuit.
#[derive(Clone, Debug, Default)]
pub(crate) struct UpstreamExtras {
    pub(crate) retry: Option<retry::Handle>,
    pub(crate) rate_limit: Option<rate_limit::Handle>,
}

/// `upstream` behind its retries, `breaker` and limiter, as configured.
pub(crate) fn stack(
    name: &str,
    upstream: Upstream,
    breaker: &CircuitBreakerLayer<ProxyClassifier>,
    retry: &RetryConfig,
    rate_limit: Option<&RateLimitConfig>,
) -> Result<(Limited, UpstreamExtras), ConfigError> {
    let mut extras = UpstreamExtras::default();
    let retried = if retry.max_attempts > 1 {
        let layer = retrier(name, retry)?;
        extras.retry = Some(layer.handle());
        Either::Left(layer.layer(upstream))
    } else {
        Either::Right(upstream)
    };
    let guarded = breaker.layer(retried);
    let limited = match rate_limit {
        Some(config) => {
            let layer = limiter(name, config)?;
            extras.rate_limit = Some(layer.handle());
            Either::Left(layer.layer(guarded))
        }
        None => Either::Right(guarded),
    };
    Ok((limited, extras))
}

fn retrier(name: &str, config: &RetryConfig) -> Result<RetryLayer<ProxyClassifier>, ConfigError> {
    RetryLayer::builder()
        .name(name)
        .max_attempts(config.max_attempts)
        .base_backoff(config.backoff_secs)
        .max_backoff(config.max_backoff_secs)
        .max_retry_after(config.max_retry_after_secs)
        .deadline(config.deadline_secs)
        .budget(
            Duration::from_secs(10),
            config.budget_min_per_sec,
            config.budget_ratio,
        )
        .classifier(ProxyClassifier)
        .build()
        .map_err(|e| ConfigError(format!("upstream {name:?}: retry: {e}")))
}

fn limiter(
    name: &str,
    config: &RateLimitConfig,
) -> Result<RateLimitLayer<ProxyClassifier, TokenEstimate>, ConfigError> {
    let mut builder = RateLimitLayer::builder()
        .name(name)
        .max_wait(Duration::from_millis(config.max_wait_ms))
        .classifier(ProxyClassifier)
        .token_cost(body_tokens as TokenEstimate);
    if let Some(n) = config.requests_per_minute {
        builder = builder.requests_per_minute(n);
    }
    if let Some(n) = config.tokens_per_minute {
        builder = builder.tokens_per_minute(n);
    }
    builder
        .build()
        .map_err(|e| ConfigError(format!("upstream {name:?}: rate_limit: {e}")))
}

/// The extras of every upstream, by name, in config order.
pub(crate) type Extras = Vec<(Arc<str>, UpstreamExtras)>;
