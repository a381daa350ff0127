//! Spread calls for one model over several deployments: power of two choices
//! over peak-EWMA latency, each deployment behind its own circuit breaker.
//!
//! [`Builder::build`] takes the deployments of one model (regions, API keys,
//! self-hosted replicas), puts each behind its own
//! [`CircuitBreaker`](crate::CircuitBreaker) (named after it) and a [`Gate`]
//! that makes an open circuit *not ready*, measures each with tower's
//! [`PeakEwma`](tower::load::PeakEwma), and balances over them with tower's
//! [`p2c::Balance`](tower::balance::p2c::Balance): each call picks two
//! deployments at random among the ready ones and goes to the less loaded
//! (latency times calls in flight). A slow deployment gets little traffic; one
//! whose circuit is open gets none until its cooldown ends, then one probe at a
//! time until it closes again. [`Builder::build_with_circuits`] does the same over
//! services that already have breakers of their own (shared with other callers).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceExt};
//! use tower_llm_resilience::balance;
//! use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;
//! use tower_llm_resilience::classify::ErrorOnlyClassifier;
//! use tower_llm_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let region = |name: &'static str| {
//!     service_fn(move |prompt: String| async move { Ok::<_, BoxError>(format!("{name}: {prompt}")) })
//! };
//! let (mut balancer, handle) = balance::Builder::new()
//!     .breaker(
//!         CircuitBreakerLayer::builder()
//!             .consecutive_failures(3)
//!             .classifier(ErrorOnlyClassifier),
//!     )
//!     .default_rtt(Duration::from_millis(500))
//!     .build([("eu", region("eu")), ("us", region("us"))])?;
//! // The US circuit is open: every call goes to the EU deployment.
//! handle.circuit("us").unwrap().force_open();
//! for _ in 0..10 {
//!     let answer = balancer.ready().await?.call("hi".to_owned()).await?;
//!     assert_eq!(answer, "eu: hi");
//! }
//! assert_eq!(handle.deployments()[1].calls, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Readiness
//!
//! The balancer is ready when at least one deployment is. While every circuit
//! is open, `poll_ready` waits until the first cooldown ends; bound the wait
//! with a timeout (or put a fallback tier with its own readiness in front)
//! when that is not what callers want. The balancer is not `Clone`: share it
//! through `tower::buffer::Buffer` (or build one per worker).
//!
//! # Cost and observability
//!
//! Per call: p2c's two random picks, a peak-EWMA update, an atomic read of the
//! circuit state (a lock only while it is not closed). [`Handle`] reports each
//! deployment's calls and circuit; each circuit is named after its deployment,
//! so the breaker's `metrics` and `tracing` events are labelled by deployment.
//!
//! # Weights
//!
//! [`Builder::build_weighted`] gives each deployment a weight from 1 to
//! [`MAX_WEIGHT`]: a deployment of weight `w` takes `w` places among the
//! candidates p2c draws from, so at equal latency it gets about `w` times the
//! traffic of weight 1 (tower's peak-EWMA cost is opaque, so the weight cannot
//! scale the load itself). Latency still decides between the two candidates
//! drawn, and an open circuit takes all of a deployment's places out.

mod builder;
mod gate;
mod handle;

pub use self::builder::{Balanced, BuildError, Builder, GatedBalance, P2cBalance, MAX_WEIGHT};
pub use self::gate::{Gate, GateFuture};
pub use self::handle::{DeploymentSnapshot, Handle};
