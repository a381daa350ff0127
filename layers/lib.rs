//! Production error handling for LLM and AI-agent calls, as [tower] middleware.
//!
//! Each pattern is a [`tower::Layer`] that wraps any [`tower::Service`]:
//!
//! - [`circuit_breaker`]: stop calling an upstream that keeps failing, fail fast
//!   while open, probe and recover.
//! - [`fallback`]: try ordered tiers (primary model, alternates, a template) and
//!   mark the answer as degraded.
//!
//! All layers decide from one shared classification of a call's result, in
//! [`classify`]: a rate limit, an overloaded provider, a context-length error and a
//! caller bug are different failures and are treated differently.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod circuit_breaker;
pub mod classify;
pub mod fallback;

pub use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, CircuitOpen};
pub use fallback::{Degraded, Fallback, FallbackLayer};

/// The boxed error type used across tower: `Box<dyn Error + Send + Sync>`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
