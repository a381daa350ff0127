//! Stop calling an upstream that keeps failing: fail fast while open, probe, recover.
//!
//! A [`CircuitBreakerLayer`] wraps any [`Service`](tower_service::Service). While
//! its circuit is **closed**, calls go through and their outcomes are classified
//! with the shared [`classify`](crate::classify) taxonomy. When a trip policy fires
//! the circuit **opens**: calls are rejected at once with [`CircuitOpen`], which
//! says when to retry, and the inner service is not called. After the cooldown the
//! circuit is **half-open**: a few probe calls go through; enough successes close
//! it, a failure opens it again for longer.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
//! use tower_llm_resilience::classify::ErrorOnlyClassifier;
//! use tower_llm_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("openai")
//!     .consecutive_failures(3)
//!     .cooldown(Duration::from_secs(10))
//!     .classifier(ErrorOnlyClassifier)
//!     .build()?;
//! let handle = breaker.handle();
//!
//! let upstream = service_fn(|_prompt: &'static str| async {
//!     Err::<String, BoxError>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
//! });
//! let mut client = ServiceBuilder::new().layer(breaker).service(upstream);
//!
//! for _ in 0..3 {
//!     assert!(client.ready().await?.call("hello").await.is_err());
//! }
//! // Three connection failures in a row: the circuit is open and fails fast.
//! let err = client.ready().await?.call("hello").await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().expect("rejected by the breaker");
//! assert!(open.retry_after() <= Duration::from_secs(11));
//! assert_eq!(handle.circuit().snapshot().rejected, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Trip policies
//!
//! Combinable; the first that fires opens the circuit:
//!
//! - [`consecutive_failures(n)`](Builder::consecutive_failures): `n` failures in a
//!   row (default 5).
//! - [`failure_rate(r)`](Builder::failure_rate): at least `r` of the calls in the
//!   rolling [`Window`] failed, once it holds [`minimum_calls`](Builder::minimum_calls).
//!   The window is a real ring of the last `n` outcomes ([`Window::Count`]) or time
//!   buckets ([`Window::Time`]).
//! - [`slow_call_rate(r, threshold)`](Builder::slow_call_rate): at least `r` of the
//!   calls in the window took `threshold` or longer.
//!
//! What counts as a failure comes from the layer's classifier and its
//! [`FailurePolicy`](crate::classify::FailurePolicy): by default rate limits,
//! overloads, server errors, timeouts, connection errors and rejected provider
//! keys (`401`/`403`: the upstream's own credentials) count; caller bugs (`400`)
//! and prompt problems (context length, content filter) do not, and leave the
//! counts untouched.
//!
//! # Open duration
//!
//! The first trip opens the circuit for [`cooldown`](Builder::cooldown); each
//! re-trip (a failed probe) multiplies it by
//! [`backoff_multiplier`](Builder::backoff_multiplier), up to
//! [`max_cooldown`](Builder::max_cooldown); then up to
//! [`jitter`](Builder::jitter) of it is added at random. A failure that carries a
//! `Retry-After` (a 429 or 503) keeps the circuit open at least that long, up to
//! [`max_retry_after`](Builder::max_retry_after).
//!
//! # Half-open
//!
//! At most [`probe_permits`](Builder::probe_permits) probes are in flight at
//! once; other calls are rejected with a zero `retry_after` instead of waiting. A
//! probe whose future is dropped gives its slot back.
//! [`probe_successes`](Builder::probe_successes) successes close the circuit.
//!
//! # Per-key circuits
//!
//! [`key_by`](Builder::key_by) gives each key (a host, a model name) its own
//! circuit, so one model's outage does not block the others. At most
//! [`max_keys`](Builder::max_keys) circuits are kept. To make room, only a circuit
//! that is idle and holds nothing worth keeping is evicted (closed, not forced, no
//! failure streak or re-trip, no failure in its window), so a key that keeps
//! failing cannot escape its circuit by being evicted and a forced or open state is
//! never forgotten. If none can be evicted, new keys share the layer's overflow
//! circuit (a shared-state backend skips such keys instead, see
//! [`Handle::try_get_or_create`]). The key
//! function runs on every call: prefer cheap keys (`Arc<str>`, `&'static str`,
//! `http::uri::Authority`) over freshly allocated `String`s.
//!
//! # Shared state and observability
//!
//! Every service made by one layer, and their clones, share its circuits. The
//! closed path takes no lock and allocates nothing. A [`Handle`] reads state and
//! counters per key, forces states, toggles metrics-only mode (track, never
//! reject) and subscribes to [`CircuitEvent`]s. Every transition is a `tracing`
//! event; `metrics` counters `llm_circuit_transitions_total` and
//! `llm_circuit_rejected_total` are labelled with the layer's name.
//! [`CircuitRef::apply_remote`] is the seam a shared-state backend uses to apply a
//! state decided by another instance.

mod builder;
mod circuit;
mod error;
mod event;
mod future;
mod handle;
mod key;
mod layer;
mod registry;
mod service;
mod sync_key;
mod window;

pub use self::builder::{BuildError, Builder};
pub use self::error::CircuitOpen;
pub use self::event::{CircuitEvent, CircuitSnapshot, CircuitState, TransitionCause};
pub use self::future::ResponseFuture;
pub use self::handle::{CircuitRef, Handle};
pub use self::key::{KeyBy, KeySelector, NoKey, SelectKey};
pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreaker;
pub use self::sync_key::SyncKey;
pub use self::window::Window;

/// The kind of an error of one of this module's types, for the walk over a
/// type-erased error's sources (see [`ClassifyError`](crate::classify::ClassifyError)).
pub(crate) fn error_kind(
    err: &(dyn std::error::Error + 'static),
) -> Option<crate::classify::FailureKind> {
    crate::classify::kind_if::<CircuitOpen>(err)
}
