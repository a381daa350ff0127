//! Respect an upstream's rate limits before it answers `429`.
//!
//! A [`RateLimitLayer`] learns each upstream's limits from the headers of its
//! answers, the same ones the [`classify`](crate::classify) module reads:
//! OpenAI's `x-ratelimit-remaining-{requests,tokens}` with
//! `x-ratelimit-reset-{requests,tokens}`, Anthropic's
//! `anthropic-ratelimit-*-remaining` with `anthropic-ratelimit-*-reset`, and the
//! `Retry-After` of a `429`. Optionally it also keeps limits of its own:
//! [`requests_per_minute`](Builder::requests_per_minute) and
//! [`tokens_per_minute`](Builder::tokens_per_minute).
//!
//! While a limit is exhausted (its remaining count is 0, or a `429` asked for a
//! wait), calls wait in `poll_ready` until it resets, up to
//! [`max_wait`](Builder::max_wait); if the reset is further away (or with
//! [`fail_fast`](Builder::fail_fast)) they fail at once with
//! [`RateLimitExceeded`], which classifies as the same
//! [`FailureKind::RateLimited { retry_after }`](crate::classify::FailureKind::RateLimited)
//! a `429` gives, without sending anything. Between answers, each call sent
//! counts down the requests the upstream said were left, so the limiter stops
//! at zero rather than at the first `429`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::rate_limit::RateLimitLayer;
//! use tower_llm_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let limiter = RateLimitLayer::builder()
//!     .name("openai")
//!     .max_wait(Duration::from_secs(30))
//!     .build()?;
//! let upstream = service_fn(|_prompt: &'static str| async {
//!     let answer = http::Response::builder()
//!         .header("x-ratelimit-remaining-requests", "0")
//!         .header("x-ratelimit-reset-requests", "20s")
//!         .body(())?;
//!     Ok::<_, BoxError>(answer)
//! });
//! let mut client = ServiceBuilder::new().layer(limiter).service(upstream);
//! client.ready().await?.call("first").await?;
//! // No request left until the reset: the next call waits for it.
//! let started = tokio::time::Instant::now();
//! client.ready().await?.call("second").await?;
//! assert_eq!(started.elapsed(), Duration::from_secs(20));
//! # Ok(())
//! # }
//! ```
//!
//! # Shared state
//!
//! Every service one layer made, and their clones, share its limits: build one
//! layer per upstream and key. Provider resets in Anthropic's form are instants,
//! read against the system clock; every wait is capped at
//! [`max_retry_after`](crate::classify::max_retry_after).
//!
//! # Cost and observability
//!
//! Each call takes one short lock to take its share and one to learn from the
//! answer; a waiting service holds one boxed timer. `metrics` counters
//! `llm_rate_limit_waits_total` and `llm_rate_limit_rejected_total` (label
//! `limiter`); a `tracing` debug event for each wait and rejection; [`Handle`]
//! lists the limits exhausted now.

mod builder;
mod error;
mod layer;
mod service;
mod state;

pub use self::builder::{BuildError, Builder, NoTokenCost};
pub use self::error::RateLimitExceeded;
pub use self::layer::{Handle, RateLimitLayer};
pub use self::service::{RateLimit, RateLimitHeaders, ResponseFuture, TokenCost};
pub use self::state::Exhausted;

/// The kind of an error of one of this module's types, for the walk over a
/// type-erased error's sources (see [`ClassifyError`](crate::classify::ClassifyError)).
pub(crate) fn error_kind(
    err: &(dyn std::error::Error + 'static),
) -> Option<crate::classify::FailureKind> {
    crate::classify::kind_if::<RateLimitExceeded>(err)
}
