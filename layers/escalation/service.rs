use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;
use tracing::Instrument;

use super::builder::Config;
use super::flow;
use super::future::{ResponseFuture, Review};
use super::handle::Handle;
use super::policy::{EscalationPolicy, Verdict};
use super::snapshot::{Adapter, HttpAdapter};
use crate::BoxError;

/// The middleware an [`EscalationLayer`](super::EscalationLayer) makes.
///
/// Readiness is the inner service's: escalation state never makes `poll_ready`
/// fail. A call that escalates or resumes uses a clone of the inner service and
/// drives its readiness itself when (and if) it calls it, so the readiness reserved
/// by `poll_ready` is never held while a human thinks. The inner service must
/// therefore be `Clone` (wrap it in `tower::buffer::Buffer` if it is not).
pub struct Escalation<S, P, A = HttpAdapter> {
    inner: S,
    config: Arc<Config<P, A>>,
}

impl<S, P, A> Escalation<S, P, A> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<P, A>>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A handle on the escalations of the layer this service came from.
    pub fn handle(&self) -> Handle {
        Handle::from_shared(self.config.shared.clone())
    }
}

impl<S: Clone, P, A> Clone for Escalation<S, P, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, P, A> fmt::Debug for Escalation<S, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Escalation")
            .field("inner", &self.inner)
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

impl<S, P, A, Req> Service<Req> for Escalation<S, P, A>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    Req: Send + 'static,
    P: EscalationPolicy<Req, S::Response> + Send + Sync + 'static,
    A: Adapter<Req, S::Response> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response, P, A, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let config = &self.config;
        if let Some(token) = config.adapter.take_resume_token(&mut request) {
            let resume = flow::resume(config.clone(), self.inner.clone(), request, token);
            return ResponseFuture::escalating(Box::pin(resume.instrument(flow::span("resume"))));
        }
        if let Verdict::Escalate { reason } = config.policy.check_request(&request) {
            let gate = flow::escalate_request(config.clone(), self.inner.clone(), request, reason);
            return ResponseFuture::escalating(Box::pin(gate.instrument(flow::span("request"))));
        }
        let review = config.policy.reviews_response_to(&request).then(|| Review {
            config: config.clone(),
            request: flow::Reviewed {
                snapshot: config.adapter.snapshot_request(&request),
                fingerprint: config.adapter.fingerprint_request(&request),
            },
        });
        ResponseFuture::called(self.inner.call(request), review)
    }
}
