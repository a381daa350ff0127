use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::builder::Config;
use super::future::ResponseFuture;
use super::{Immediate, MarkDegraded, SettleResponse};
use crate::classify::{Classify, DefaultClassifier};
use crate::BoxError;

/// Tries ordered tiers until one answers; see the [module docs](super).
///
/// `Req: Clone` because the request is cloned once per call, before the primary
/// gets it, so it can be replayed to the alternates. That clone cannot be put off
/// (the primary consumes the request) and is the one cost of this layer that
/// depends on your types; everything else the fallback needs is only created once
/// the primary fails. Make the request cheap to clone: an `Arc`, a `&'static str`
/// or an id clone without allocating; an `http::Request<Bytes>` shares its body
/// but copies its header map (an allocation or two per call); a `String` or
/// `serde_json::Value` copies everything. The copy is dropped as soon as the
/// primary answers.
///
/// # Readiness
///
/// `poll_ready` is the primary's `poll_ready`, and nothing else: an alternate is
/// cloned from the layer and driven to readiness inside the response future, only
/// when the call falls back to it. So a slow or saturated alternate never blocks a
/// call the primary answers. An error from the primary's `poll_ready` is returned
/// as is (in tower it means the service is broken).
pub struct Fallback<S, Req, Res, Err, C = DefaultClassifier, Settle = Immediate> {
    inner: S,
    config: Arc<Config<Req, Res, Err, C, Settle>>,
}

impl<S, Req, Res, Err, C, Settle> Fallback<S, Req, Res, Err, C, Settle> {
    /// `inner` with the tiers of a layer's configuration; see `new` (in `layer.rs`).
    pub(crate) fn with_config(inner: S, config: Arc<Config<Req, Res, Err, C, Settle>>) -> Self {
        Self { inner, config }
    }

    /// The primary.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The primary, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The primary, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, Req, Res, Err, C, Settle> Clone for Fallback<S, Req, Res, Err, C, Settle> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, Req, Res, Err, C, Settle> fmt::Debug for Fallback<S, Req, Res, Err, C, Settle> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, Req, Res, Err, C, Settle> Service<Req> for Fallback<S, Req, Res, Err, C, Settle>
where
    S: Service<Req, Response = Res, Error = Err>,
    Req: Clone + Send + 'static,
    Res: Send + 'static,
    Err: Into<BoxError> + Send + 'static,
    C: Classify<Res, Err> + Send + Sync + 'static,
    Settle: SettleResponse<Res> + Send + Sync + 'static,
    Settle::Future: Send + 'static,
    Settle::Output: MarkDegraded + Send + 'static,
{
    type Response = Settle::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Req, Res, Err, C, Settle>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let replay = request.clone();
        let primary = self.inner.call(request);
        ResponseFuture::new(primary, replay, self.config.clone())
    }
}
