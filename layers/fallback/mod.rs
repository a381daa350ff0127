//! Graceful degradation through ordered tiers: try the primary model, then the
//! alternates in order, then a final responder that cannot fail. The caller always
//! gets an answer, and knows when it was degraded.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::classify::FailureKind;
//! use tower_llm_resilience::fallback::{FallbackLayer, MarkDegraded};
//! use tower_llm_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Stand-ins for real model clients. The primary is rate-limited.
//! let gpt = service_fn(|_prompt: String| async {
//!     let limited = http::Response::builder()
//!         .status(429)
//!         .header("retry-after", "20")
//!         .body(String::new())?;
//!     Ok::<_, BoxError>(limited)
//! });
//! let claude = service_fn(|prompt: String| async move {
//!     Ok::<_, BoxError>(http::Response::new(format!("claude answers {prompt:?}")))
//! });
//!
//! let fallback = FallbackLayer::builder()
//!     .primary_name("gpt-4o")
//!     .alternate("claude", claude)
//!     .final_responder("template", |_prompt: String| {
//!         http::Response::new("We are very busy; please try again shortly.".to_owned())
//!     })
//!     .build()?;
//! let mut service = ServiceBuilder::new().layer(fallback).service(gpt);
//!
//! let response = service.ready().await?.call("hi".to_owned()).await?;
//! assert_eq!(response.body(), "claude answers \"hi\"");
//! let degraded = response.degraded().expect("not the primary's answer");
//! assert_eq!(degraded.name(), "claude");
//! assert_eq!(degraded.failed()[0].name(), "gpt-4o");
//! assert_eq!(
//!     degraded.failed()[0].kind(),
//!     &FailureKind::RateLimited { retry_after: Some(Duration::from_secs(20)) }
//! );
//! # Ok(())
//! # }
//! ```
//!
//! # Tiers
//!
//! The wrapped service is the primary. [`alternate`](FallbackBuilder::alternate)s
//! are any services with the same request, response and error types (boxed, so
//! they can be different service types), tried in the order they were added; a
//! [`Tier`] adds a request mapping (for example [`rewrite_model`], which sets the
//! `model` field of a JSON `http::Request<Bytes>`) and failure kinds it takes over.
//! The optional [`final_responder`](FallbackBuilder::final_responder) is a closure
//! from the request to an answer, and cannot fail. Every tier has a name, used in
//! markers, errors, logs and metrics; names must be unique.
//!
//! The request is `Clone`: it is cloned once per call, before the primary gets it,
//! so it can be replayed. Make it cheap to clone (an `Arc`; an
//! `http::Request<Bytes>` shares its body but copies its headers); see
//! [`Fallback`] for what each call costs.
//!
//! # What triggers a fallback
//!
//! Each result is classified with the layer's classifier
//! ([`DefaultClassifier`](crate::classify::DefaultClassifier) unless set), and the
//! `worth_fallback` column of the [`FailurePolicy`](crate::classify::FailurePolicy)
//! decides:
//!
//! | failure | by default |
//! |---|---|
//! | `RateLimited`, `QuotaExhausted`, `Overloaded`, `ServerError`, `Timeout`, `Connect`, `InvalidResponse`, `CircuitOpen`, `Auth`, `Other` | next tier (`Auth`: each tier has credentials of its own) |
//! | `BadRequest` | returned as is: a fallback would hide a caller bug |
//! | `ContextLengthExceeded`, `ContentFiltered` | returned as is, unless a later tier [`accepts`](Tier::accepts) it: then straight to that tier, skipping those in between |
//!
//! A failure that is not fallen back from ends the call with that tier's own
//! answer or error, unchanged (a response from an alternate still carries the
//! [`Degraded`] marker).
//!
//! A tier behind a [`CircuitBreakerLayer`](crate::circuit_breaker) whose circuit
//! is open answers at once with [`CircuitOpen`](crate::circuit_breaker::CircuitOpen),
//! so it is skipped without touching its upstream.
//!
//! # Degraded answers
//!
//! An answer from any tier but the primary carries a [`Degraded`] marker: which
//! tier answered, its name, whether a hedge ran, and the failure kind of each tier
//! tried before it. It goes in the extensions of an `http::Response` (and a
//! `reqwest::Response`); other response types implement [`MarkDegraded`] or are
//! wrapped in [`Marked`]. Read it with [`MarkDegraded::degraded`].
//!
//! When every tier fails with failures worth a fallback and there is no final
//! responder, the error is [`AllTiersFailed`], which lists every tier's failure in
//! order. It classifies as the chain's failure (a retryable one if any tier's was),
//! so a retry or a [`PartialBatchLayer`](crate::partial_batch) around the
//! fallback retries a chain that may still answer.
//!
//! # Hedging
//!
//! With [`hedge_after`](FallbackBuilder::hedge_after), a tier that has not answered
//! after the delay gets company: the next alternate starts too. The first answer
//! wins, the other call is dropped at once (which cancels it), and a degraded answer
//! is marked [`hedged`](Degraded::hedged); when the primary wins, its answer
//! carries no marker (it is not degraded). At most two calls run at a time.
//!
//! # Streaming and whole answers
//!
//! With [`first_event_timeout`](FallbackBuilder::first_event_timeout) (or
//! [`settle_with`](FallbackBuilder::settle_with) a configured [`FirstEvent`]), an
//! `http::Response` counts as an answer only once it is one:
//!
//! - an event stream (`text/event-stream`) once its first `data:` event arrives,
//!   within the limit after the response head. A stream that breaks, ends,
//!   stalls, or opens with a provider error event before that falls back to the
//!   next tier, and the client has received nothing. After it, the stream is
//!   checked as it passes: it is complete only once its [`TerminalEvent`]
//!   arrived (`data: [DONE]` or a `finish_reason`, `message_stop`). One that
//!   breaks, ends in any way before it, goes silent past the idle limit, or sends
//!   an oversized event ends with a [`StreamInterrupted`] body error, never as a
//!   silently truncated `200`.
//! - any other answer once it is read whole, up to a limit (16 MiB by default):
//!   an answer over the limit, shorter than its `Content-Length`, or JSON that
//!   does not parse fails the tier as an
//!   [`InvalidResponse`](crate::classify::FailureKind::InvalidResponse)
//!   ([`IncompleteAnswer`]) and the next tier is tried.
//!
//! The response body becomes an [`SseBody`]; the final responder's answer is
//! passed through unchanged, so tiers that return `hyper::body::Incoming` should
//! map their bodies to a boxed body the responder can build too.
//!
//! # Readiness
//!
//! [`Fallback`]'s `poll_ready` is the primary's, and nothing else. Alternates are
//! cloned and driven to readiness inside the response future, only when a call
//! reaches them, so a slow or saturated alternate never blocks calls the primary
//! answers.
//!
//! # Observability
//!
//! `tracing` events for each failed tier, each hedge, each degraded answer and each
//! call where all tiers failed (tier names and failure kinds, never request
//! content); `metrics` counters `llm_fallback_tier_failures_total{tier,kind}`,
//! `llm_fallback_degraded_total{tier}`, `llm_fallback_hedges_total`,
//! `llm_fallback_all_failed_total` and `llm_fallback_stream_interrupted_total`.
//! An answer from the primary records nothing.
//!
//! # Cost
//!
//! When the primary answers, the layer adds the request's clone, an `Arc`
//! increment and decrement, and the classification of the result; it allocates
//! nothing of its own: the fallback's state (failed tiers, alternate calls, the
//! hedge timer) is boxed and created only once the call falls back or waits on
//! a hedge. Metrics and `tracing` events are only emitted on that path too.
//! `benches/fallback.rs` measures this against the bare service, and one hop.

#![cfg_attr(feature = "reqwest", doc = include_str!("client_example.md"))]

mod answer;
mod attempt;
mod builder;
mod chain;
mod degraded;
mod error;
mod future;
mod layer;
mod request;
mod scan;
mod service;
mod settle;
mod sse;
mod sse_body;
mod terminal;

pub use self::builder::{FallbackBuilder, Tier};
pub use self::degraded::{Degraded, FailedTier, MarkDegraded, Marked};
pub use self::error::{
    AllTiersFailed, FallbackConfigError, FirstEventError, IncompleteAnswer, StreamFault,
    StreamInterrupted,
};
pub use self::future::ResponseFuture;
pub use self::layer::FallbackLayer;
pub use self::request::{rewrite_model, set_json_model};
pub use self::service::Fallback;
pub use self::settle::{Immediate, SettleResponse, Settlement};
pub use self::sse::{
    FirstEvent, FirstEventFuture, DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_PREFIX_BYTES, DEFAULT_STREAM_IDLE_TIMEOUT,
};
pub use self::sse_body::SseBody;
pub use self::terminal::TerminalEvent;

use crate::classify::{kind_if, FailureKind};

/// The kind of an error of one of this module's types, for the walk over a
/// type-erased error's sources (see [`ClassifyError`](crate::classify::ClassifyError)).
pub(crate) fn error_kind(err: &(dyn std::error::Error + 'static)) -> Option<FailureKind> {
    kind_if::<AllTiersFailed>(err)
        .or_else(|| kind_if::<FirstEventError>(err))
        .or_else(|| kind_if::<StreamInterrupted>(err))
        .or_else(|| kind_if::<StreamFault>(err))
        .or_else(|| kind_if::<IncompleteAnswer>(err))
}
