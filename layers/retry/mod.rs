//! Retry the failures worth retrying, without turning an outage into a retry storm.
//!
//! A [`RetryLayer`] wraps any cloneable [`Service`](tower_service::Service) in
//! tower's own [`Retry`](tower::retry::Retry), driven by a [`RetryPolicy`] that
//! decides from the shared [`classify`](crate::classify) taxonomy:
//!
//! - only the kinds the [`FailurePolicy`](crate::classify::FailurePolicy) calls
//!   retryable are retried (rate limits, overloads, server errors, timeouts,
//!   connection errors, open circuits by default; never a `400`, a `401`, a
//!   context-length error or a quota that is used up);
//! - the wait before a retry is the server's (`Retry-After`, `retry-after-ms`,
//!   the provider reset headers, an open circuit's remaining time), cut to
//!   [`max_retry_after`](Builder::max_retry_after); without one, an exponential
//!   backoff with full jitter ([`base_backoff`](Builder::base_backoff) doubling up
//!   to [`max_backoff`](Builder::max_backoff), seedable with
//!   [`seed`](Builder::seed));
//! - at most [`max_attempts`](Builder::max_attempts) attempts, and no retry whose
//!   wait would end past the [`deadline`](Builder::deadline) counted from the first
//!   attempt;
//! - a retry budget (tower's [`TpsBudget`](tower::retry::budget::TpsBudget)),
//!   shared by every service the layer made: retries add at most a configured
//!   fraction to the calls the upstream sees, so a full outage gets
//!   `1 + ratio` times the traffic, not `max_attempts` times.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
//! use tower_llm_resilience::retry::RetryLayer;
//! use tower_llm_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let retry = RetryLayer::builder()
//!     .max_attempts(3)
//!     .classifier(ErrorOnlyClassifier)
//!     .build()?;
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let counted = calls.clone();
//! let upstream = service_fn(move |prompt: String| {
//!     let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         if n == 0 {
//!             let limited = FailureKind::RateLimited { retry_after: Some(Duration::from_secs(2)) };
//!             return Err::<String, BoxError>(ClassifiedError::new(limited, "429").into());
//!         }
//!         Ok(format!("answer to {prompt}"))
//!     }
//! });
//! let mut client = ServiceBuilder::new().layer(retry).service(upstream);
//! let started = tokio::time::Instant::now();
//! let answer = client.ready().await?.call("hello".to_owned()).await?;
//! assert_eq!(answer, "answer to hello");
//! assert_eq!(started.elapsed(), Duration::from_secs(2)); // the server's Retry-After
//! # Ok(())
//! # }
//! ```
//!
//! # Requests must be cloneable
//!
//! Each attempt sends a copy of the request ([`clone_request`](tower::retry::Policy::clone_request)
//! is `request.clone()`), so the request type must be `Clone`. For HTTP that
//! means a buffered body: `http::Request<Bytes>` (or `String`, `Vec<u8>`,
//! `Full<Bytes>`) clones its body cheaply, since `Bytes` is reference-counted;
//! a streaming body cannot be sent twice, so buffer it first (the `reqwest`
//! clients' `ChatRequest` is a plain value and clones).
//!
//! # Streams
//!
//! The policy sees only the result of the call: for a streamed answer (SSE),
//! the response head. A stream whose head was a success is an `Ok`, and the
//! events that follow belong to the caller; a stream that breaks after its
//! first event is never retried (the caller already saw part of the answer,
//! and a second answer would be different). A stream that fails before its
//! head (a `429`, a refused connection) is retried like any other call.
//!
//! # Cost and observability
//!
//! A retried request allocates nothing more than its request clone; the wait is
//! a `tokio::time::Sleep` inside tower's future. `metrics` counters
//! `llm_retry_attempts_total` (labels `retry`, `kind`) and
//! `llm_retry_budget_exhausted_total` (label `retry`); a `tracing` debug event for
//! each retry and each give-up; [`Handle`] reads the counters.

mod builder;
mod layer;
mod policy;

pub use self::builder::{BuildError, Builder};
pub use self::layer::{Handle, Retry, RetryLayer};
pub use self::policy::RetryPolicy;
