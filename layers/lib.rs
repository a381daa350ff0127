//! Production error handling for LLM and AI-agent calls, as [tower] middleware.
//!
//! Each pattern is a [`tower::Layer`] that wraps any [`tower::Service`]:
//!
//! - [`circuit_breaker`]: stop calling an upstream that keeps failing, fail fast
//!   while open, probe and recover.
//! - [`fallback`]: try ordered tiers (primary model, alternates, a template) and
//!   mark the answer as degraded.
//! - [`escalation`]: pause a call that needs a human, notify, resume with a token.
//! - [`partial_batch`]: run a batch item by item, retry only what can succeed,
//!   report every item, and skip what already succeeded on a re-run.
//! - [`retry`]: retry only the failures worth it, after the server's
//!   `Retry-After` or a jittered backoff, within a budget that caps amplification.
//! - [`rate_limit`]: learn an upstream's limits from its headers and wait (or
//!   fail fast) before sending a request sure to get a `429`.
//! - [`balance`]: spread one model's calls over several deployments (p2c over
//!   peak-EWMA latency), none to one whose circuit is open.
//!
//! With the `reqwest` feature, [`client`] has the services these layers most often
//! wrap: LLM clients for OpenAI-compatible servers and the Anthropic Messages API.
//!
//! All layers decide from one shared classification of a call's result, in
//! [`classify`]: a rate limit, an overloaded provider, a context-length error and a
//! caller bug are different failures and are treated differently.
//!
//! # At the crate root
//!
//! Each layer and its service ([`CircuitBreakerLayer`], [`FallbackLayer`],
//! [`EscalationLayer`], [`PartialBatchLayer`], [`RetryLayer`], [`RateLimitLayer`]), the marker of a degraded answer
//! ([`Degraded`], read through [`MarkDegraded`]), the failure taxonomy
//! ([`FailureKind`], [`Outcome`]) and, with `reqwest`, the clients and their
//! request and answer types (`OpenAiClient`, `ChatRequest`, `Message`,
//! `ChatResponse`, ...).
//! Everything else is in its layer's module.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `reqwest` | `client`: LLM clients on reqwest, and classifiers for `reqwest` responses and errors |
//! | `rustls` | HTTPS for those clients (rustls) |
//! | `sqlite` | `escalation::SqliteStore`, a durable escalation store |
//! | `redis` | `redis`: circuit state, escalations and batch results shared through Redis |
//! | `postgres` | `postgres`: the same shared state, plus usage records and an audit log, on PostgreSQL (TLS through rustls) |
//!
//! [`usage`] (tokens and cost per answer, from a price table you supply) and [`cache`] (a
//! response cache with request coalescing) need no feature.
//!
//! # Tracing
//!
//! Every layer's decisions are [`tracing`] spans and events, named after the
//! [OpenTelemetry GenAI semantic conventions] where one applies (export them with
//! `tracing-opentelemetry`: `otel.name` and `otel.kind` set the OpenTelemetry span
//! name and kind). A span's fields start empty and are recorded as the call goes.
//! No span or event holds prompt or answer text, keys or headers, unless a client
//! is built with `trace_content(true)`.
//!
//! | span (level) | made by | fields |
//! |---|---|---|
//! | `gen_ai.chat` (INFO) | each call of `OpenAiClient` / `AnthropicClient` (a stream's span lasts until it ends) | `otel.name` (`chat {model}`), `otel.kind` (`client`), `gen_ai.operation.name` (`chat`), `gen_ai.system` (`openai`, `anthropic`, or the provider name given), `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `error.type` (the [`FailureKind`] name: `rate_limited`, `server_error`, `timeout`, ...), `otel.status_code` (`ERROR` on failure), `llm.streaming` |
//! | `circuit_breaker` (DEBUG) | each call through a [`CircuitBreaker`] | `llm.circuit` (its name), `llm.circuit.state` (`closed`, `half_open` for a probe, `open` for a rejected call, `passthrough` in metrics-only mode), `error.type` (the outcome's kind; `circuit_open` when rejected) |
//! | `fallback_tier` (DEBUG) | each call of a fallback tier after the primary (the primary runs in the caller's span) | `llm.tier` (its name), `llm.tier.index`, `error.type` |
//! | `escalation` (INFO) | a call that escalates, or resumes with a token | `llm.escalation.stage` (`request`, `response`, `resume`), `llm.escalation.id`, `llm.escalation.outcome` (`detached`, `approved`, `answered`, `rejected`, `expired`) |
//! | `partial_batch` (INFO) | each batch | `llm.batch.id`, `llm.batch.items` |
//! | `batch_item` (DEBUG) | each attempt of a batch item | `llm.batch.id`, `llm.batch.item_key`, `llm.attempt` (from 1), `error.type` |
//!
//! The decisions between calls are events inside these spans (or the caller's):
//! a circuit opening (WARN) or changing state (INFO, with `circuit`, `from`, `to`,
//! `cause`); a fallback tier failing (WARN, `tier`, `kind`), a degraded answer
//! (INFO, `tier`, `failed`, `hedged`), every tier failing (WARN); a retry, its
//! budget running out or its deadline passing (DEBUG, `retry`, `kind`, `attempt`,
//! `wait`); a rate limit making a call wait or fail (DEBUG, `limiter`, `wait`); an
//! escalation created or resolved (INFO, `escalation_id`); a cache store failing
//! (WARN). With `trace_content(true)`, a `gen_ai.chat` span also has the events
//! `gen_ai.content.prompt` (field `gen_ai.prompt`: the messages as JSON) and
//! `gen_ai.content.completion` (field `gen_ai.completion`: the answer's text, at
//! most 64 KiB of a stream's).
//!
//! A span is made in the layer's `call` and entered while its future is polled,
//! so it nests under the span current at `call` (tower-http's `TraceLayer` makes
//! one per request). A disabled span costs a level check: the DEBUG spans cost
//! nothing measurable unless a subscriber wants them.
//!
//! [OpenTelemetry GenAI semantic conventions]: https://opentelemetry.io/docs/specs/semconv/gen-ai/
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "redis", feature = "postgres"))]
mod backend;
pub mod balance;
pub mod cache;
pub mod circuit_breaker;
pub mod classify;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod client;
mod dyn_error;
pub mod escalation;
pub mod fallback;
#[cfg(feature = "apalis")]
#[cfg_attr(docsrs, doc(cfg(feature = "apalis")))]
pub mod jobs;
pub mod partial_batch;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod rate_limit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod retry;
pub mod usage;

#[cfg(feature = "reqwest")]
pub use client::{
    AnthropicClient, ChatRequest, ChatResponse, ChatStream, ClientError, Message, OpenAiClient,
};

pub use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, CircuitOpen};
pub use classify::{FailureKind, Outcome};
pub use escalation::{Escalation, EscalationLayer};
pub use fallback::{Degraded, Fallback, FallbackLayer, MarkDegraded, Marked};
pub use partial_batch::{PartialBatch, PartialBatchLayer};
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use retry::{Retry, RetryLayer};

/// The README's examples, compiled and run as doc tests.
#[cfg(all(doctest, feature = "reqwest"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The boxed error type used across tower: `Box<dyn Error + Send + Sync>`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
