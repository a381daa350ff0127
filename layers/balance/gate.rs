//! A deployment's readiness follows its circuit: an open circuit is not ready.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::circuit_breaker::{self, CircuitRef, CircuitState};

/// The longest an open deployment goes without its circuit being looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// What one deployment shares between its gate, its calls and the [`Handle`](super::Handle).
#[derive(Debug)]
pub(crate) struct Deployment {
    pub(crate) name: Arc<str>,
    pub(crate) breaker: circuit_breaker::Handle<()>,
    circuit: CircuitRef<()>,
    pub(crate) calls: AtomicU64,
    probes_in_flight: AtomicUsize,
    probe_done: Arc<Notify>,
}

impl Deployment {
    pub(crate) fn new(name: Arc<str>, breaker: circuit_breaker::Handle<()>) -> Self {
        Self {
            name,
            circuit: breaker.circuit(),
            breaker,
            calls: AtomicU64::new(0),
            probes_in_flight: AtomicUsize::new(0),
            probe_done: Arc::new(Notify::new()),
        }
    }
}

/// A deployment's service (its circuit breaker around the client) whose
/// readiness follows the circuit, so that a balancer routes around it.
///
/// # Readiness
///
/// - closed: the inner service's readiness;
/// - open: `Pending` until the cooldown ends (a timer wakes the balancer, and
///   looks again at least every second, for a circuit closed from outside),
///   then ready for one probe;
/// - half-open: ready while no probe sent through this gate is in flight;
///   `Pending` (woken when the probe ends) otherwise, so the balancer sends the
///   other calls elsewhere instead of having them rejected.
///
/// It never returns an error of its own. It reads the circuit's state only: a
/// breaker in metrics-only mode (which never rejects) still keeps an open
/// deployment out of the balancer.
pub struct Gate<S> {
    inner: S,
    deployment: Arc<Deployment>,
    cooldown: Option<Pin<Box<Sleep>>>,
    probe_done: Option<Pin<Box<OwnedNotified>>>,
}

impl<S> Gate<S> {
    pub(crate) fn new(inner: S, deployment: Arc<Deployment>) -> Self {
        Self {
            inner,
            deployment,
            cooldown: None,
            probe_done: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.deployment.name
    }

    /// `Ready` when the circuit lets a call through.
    fn poll_circuit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let circuit = &self.deployment.circuit;
            match circuit.state() {
                CircuitState::Closed => return Poll::Ready(()),
                CircuitState::Open => {
                    let left = circuit.snapshot().retry_after.unwrap_or_default();
                    if left.is_zero() {
                        return Poll::Ready(());
                    }
                    // Re-checked at least every second: a circuit closed from
                    // outside (reset, forced, another instance) is seen soon.
                    let until = Instant::now() + left.min(RECHECK);
                    let sleep = match &mut self.cooldown {
                        Some(sleep) => {
                            sleep.as_mut().reset(until);
                            sleep
                        }
                        slot => slot.insert(Box::pin(tokio::time::sleep_until(until))),
                    };
                    ready!(sleep.as_mut().poll(cx));
                }
                CircuitState::HalfOpen => {
                    let notified = self.probe_done.get_or_insert_with(|| {
                        Box::pin(self.deployment.probe_done.clone().notified_owned())
                    });
                    // Registered before the check, so a probe ending in between
                    // still wakes us.
                    notified.as_mut().enable();
                    if self.deployment.probes_in_flight.load(Ordering::Acquire) == 0 {
                        return Poll::Ready(());
                    }
                    ready!(notified.as_mut().poll(cx));
                    self.probe_done = None;
                }
            }
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Gate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("deployment", &self.deployment.name)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for Gate<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        ready!(self.poll_circuit(cx));
        self.cooldown = None;
        self.probe_done = None;
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let deployment = &self.deployment;
        deployment.calls.fetch_add(1, Ordering::Relaxed);
        let probe = (deployment.circuit.state() != CircuitState::Closed).then(|| {
            deployment.probes_in_flight.fetch_add(1, Ordering::AcqRel);
            ProbeGuard(deployment.clone())
        });
        GateFuture {
            future: self.inner.call(request),
            _probe: probe,
        }
    }
}

/// Marks a probe as ended when dropped (answered, failed or abandoned).
struct ProbeGuard(Arc<Deployment>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.probes_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.probe_done.notify_waiters();
    }
}

pin_project! {
    /// The future of a [`Gate`] call: the inner call, and its probe slot if
    /// the circuit was not closed.
    pub struct GateFuture<F> {
        #[pin]
        future: F,
        _probe: Option<ProbeGuard>,
    }
}

impl<F> fmt::Debug for GateFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateFuture").finish_non_exhaustive()
    }
}

impl<F: Future> Future for GateFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}
