use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::future::{Guard, ResponseFuture};
use super::handle::Handle;
use super::key::{KeySelector, NoKey, SelectKey};
use super::registry::Registry;
use crate::classify::{Classify, DefaultClassifier};
use crate::BoxError;

/// A circuit breaker around an inner service; made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// # Readiness
///
/// `poll_ready` is the inner service's `poll_ready`: the circuit never makes it
/// return an error, and never makes a caller wait. An open circuit rejects in
/// `call`, at once, with [`CircuitOpen`](super::CircuitOpen) (boxed in the
/// [`BoxError`]), without calling the inner service.
pub struct CircuitBreaker<S, C = DefaultClassifier, K: KeySelector = NoKey> {
    pub(crate) inner: S,
    pub(crate) classifier: C,
    pub(crate) keys: K,
    pub(crate) registry: Arc<Registry<K::Key>>,
}

impl<S, C, K: KeySelector> CircuitBreaker<S, C, K> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The circuits this service shares with its layer.
    pub fn handle(&self) -> Handle<K::Key> {
        Handle {
            registry: self.registry.clone(),
        }
    }
}

impl<S: Clone, C: Clone, K: KeySelector + Clone> Clone for CircuitBreaker<S, C, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            classifier: self.classifier.clone(),
            keys: self.keys.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<S: fmt::Debug, C, K: KeySelector> fmt::Debug for CircuitBreaker<S, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.registry.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl<S, C, K, Req> Service<Req> for CircuitBreaker<S, C, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    K: SelectKey<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, K::Key>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let circuit = self.registry.circuit(self.keys.select(&request));
        let span = tracing::debug_span!(
            "circuit_breaker",
            llm.circuit = %circuit.config().name,
            llm.circuit.state = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        match circuit.admit() {
            Ok(admission) => {
                span.record("llm.circuit.state", admission.state_name());
                let started = circuit.needs_clock().then(Instant::now);
                let future = span.in_scope(|| self.inner.call(request));
                ResponseFuture::called(
                    future,
                    Guard::new(circuit, admission, started),
                    self.classifier.clone(),
                    span,
                )
            }
            Err(open) => {
                span.record("llm.circuit.state", "open");
                span.record("error.type", "circuit_open");
                ResponseFuture::rejected(open, self.classifier.clone(), span)
            }
        }
    }
}
