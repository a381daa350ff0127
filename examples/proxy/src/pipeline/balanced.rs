//! A tier over several upstreams (`balance_with`): the library's balancer
//! (p2c over peak-EWMA latency, gated by each upstream's circuit) behind a
//! `tower::buffer::Buffer`, since a balancer is one service and the tiers are
//! cloned per request.
//!
//! The buffer's worker runs on the proxy's control thread: a balanced tier's
//! calls are handed to it and back (one channel hop each way), unlike a
//! single upstream's, which stay on the serving thread.
//!
//! While every upstream of the tier has its circuit open, a call fails at once
//! with `CircuitOpen` (the shortest wait left), so the model's next tier
//! answers, instead of waiting in the buffer for a cooldown to end.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tower::buffer::Buffer;
use tower::Service;
use tower_llm_resilience::balance::{self, GatedBalance};
use tower_llm_resilience::circuit_breaker::{CircuitOpen, CircuitState, Handle};
use tower_llm_resilience::BoxError;

use super::{Guarded, Req, Res};
use crate::config::ConfigError;

type Inner = Buffer<Req, <GatedBalance<Guarded, Req> as Service<Req>>::Future>;

/// Calls queued for a balanced tier at most.
const QUEUE: usize = 1024;

/// One balanced tier, cheap to clone.
#[derive(Clone)]
pub(crate) struct BalancedTier {
    inner: Inner,
    circuits: Arc<[Handle<()>]>,
}

impl std::fmt::Debug for BalancedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedTier")
            .field("upstreams", &self.circuits.len())
            .finish_non_exhaustive()
    }
}

impl BalancedTier {
    /// The balancer over `upstreams` (name, service, its circuit). Must run
    /// inside a tokio runtime (the buffer's worker is spawned on it).
    pub(crate) fn new(
        upstreams: Vec<(Arc<str>, Guarded, Handle<()>)>,
    ) -> Result<Self, ConfigError> {
        let circuits: Arc<[Handle<()>]> = upstreams.iter().map(|(_, _, h)| h.clone()).collect();
        let names: Vec<String> = upstreams.iter().map(|(n, _, _)| n.to_string()).collect();
        let (balancer, _handle) = balance::Builder::new()
            .default_rtt(Duration::from_secs(1))
            .build_with_circuits(upstreams)
            .map_err(|e| ConfigError(format!("tier over {names:?}: {e}")))?;
        Ok(Self {
            inner: Buffer::new(balancer, QUEUE),
            circuits,
        })
    }

    /// The shortest wait left if every circuit is open, else `None`.
    fn all_open(&self) -> Option<Duration> {
        let mut shortest: Option<Duration> = None;
        for handle in self.circuits.iter() {
            let circuit = handle.circuit();
            if circuit.state() != CircuitState::Open {
                return None;
            }
            let left = circuit.snapshot().retry_after.unwrap_or_default();
            if left.is_zero() {
                return None;
            }
            shortest = Some(shortest.map_or(left, |s| s.min(left)));
        }
        shortest
    }
}

impl Service<Req> for BalancedTier {
    type Response = Res;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Res, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if let Some(wait) = self.all_open() {
            // The buffer slot `poll_ready` reserved is given back when the
            // clone below replaces this one.
            self.inner = self.inner.clone();
            return futures_util::future::ready(Err(CircuitOpen::new(wait).into())).boxed();
        }
        self.inner.call(request).boxed()
    }
}
