use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::HeaderMap;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::builder::NoTokenCost;
use super::state::Shared;
use super::RateLimitExceeded;
use crate::classify::{Classify, DefaultClassifier};
use crate::BoxError;

/// A response that can show the headers an upstream announces its limits in.
///
/// Implemented for `http::Response<B>` and (feature `reqwest`) `reqwest::Response`.
/// A response type without headers can return `None`: the layer then learns only
/// from the classification (a `429`'s `retry_after`) and its own limits.
pub trait RateLimitHeaders {
    /// The response's headers, if it has any.
    fn rate_limit_headers(&self) -> Option<&HeaderMap>;
}

impl<B> RateLimitHeaders for http::Response<B> {
    fn rate_limit_headers(&self) -> Option<&HeaderMap> {
        Some(self.headers())
    }
}

#[cfg(feature = "reqwest")]
impl RateLimitHeaders for reqwest::Response {
    fn rate_limit_headers(&self) -> Option<&HeaderMap> {
        Some(self.headers())
    }
}

/// How many tokens a request costs, for a `tokens_per_minute` limit: any
/// `Fn(&Request) -> u64`, or [`NoTokenCost`].
pub trait TokenCost<Req> {
    /// The tokens `request` will use.
    fn token_cost(&self, request: &Req) -> u64;
}

impl<Req> TokenCost<Req> for NoTokenCost {
    fn token_cost(&self, _request: &Req) -> u64 {
        0
    }
}

impl<F: Fn(&Req) -> u64, Req> TokenCost<Req> for F {
    fn token_cost(&self, request: &Req) -> u64 {
        self(request)
    }
}

/// Where this service stands between `poll_ready` and `call`.
#[derive(Clone, Copy, Debug)]
enum Readiness {
    /// No call admitted yet.
    Idle,
    /// One call's share of every limit is taken; `call` sends it.
    Admitted,
    /// The limit resets too late: `call` fails at once with this wait.
    Rejected(Duration),
}

/// A rate limiter around an inner service; made by
/// [`RateLimitLayer`](super::RateLimitLayer).
///
/// # Readiness
///
/// While a limit is exhausted, `poll_ready` waits (returns `Pending`, woken by
/// a timer at the reset) up to the layer's `max_wait` in all. If the reset is
/// further away, `poll_ready` returns `Ready(Ok)` and the next `call` fails at
/// once with [`RateLimitExceeded`], without calling the inner service. Once a
/// call is admitted, `poll_ready` is the inner service's. It never returns an
/// error of its own. An admitted call's share of the limits is taken in
/// `poll_ready`: a service made ready and dropped without a call wastes it.
pub struct RateLimit<S, C = DefaultClassifier, T = NoTokenCost> {
    pub(crate) inner: S,
    pub(crate) classifier: C,
    pub(crate) token_cost: T,
    pub(crate) shared: Arc<Shared>,
    readiness: Readiness,
    waiting_since: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, C, T> RateLimit<S, C, T> {
    pub(crate) fn new(inner: S, classifier: C, token_cost: T, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            classifier,
            token_cost,
            shared,
            readiness: Readiness::Idle,
            waiting_since: None,
            sleep: None,
        }
    }

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
}

impl<S: Clone, C: Clone, T: Clone> Clone for RateLimit<S, C, T> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.classifier.clone(),
            self.token_cost.clone(),
            self.shared.clone(),
        )
    }
}

impl<S: fmt::Debug, C, T> fmt::Debug for RateLimit<S, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.config.name)
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl<S, C, T, Req> Service<Req> for RateLimit<S, C, T>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: RateLimitHeaders,
    C: Classify<S::Response, S::Error> + Clone,
    T: TokenCost<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            match self.readiness {
                Readiness::Admitted => return self.inner.poll_ready(cx).map_err(Into::into),
                Readiness::Rejected(_) => return Poll::Ready(Ok(())),
                Readiness::Idle => {}
            }
            let now = Instant::now();
            match self.shared.admit(now) {
                Ok(()) => {
                    self.readiness = Readiness::Admitted;
                    self.waiting_since = None;
                    self.sleep = None;
                }
                Err(until) => {
                    let config = &self.shared.config;
                    let since = *self.waiting_since.get_or_insert_with(|| {
                        Shared::count(&self.shared.waits);
                        now
                    });
                    if until.saturating_duration_since(since) > config.max_wait {
                        self.waiting_since = None;
                        self.readiness = Readiness::Rejected(until - now);
                        Shared::count(&self.shared.rejected);
                        metrics::counter!("llm_rate_limit_rejected_total", "limiter" => config.name.clone())
                            .increment(1);
                        tracing::debug!(limiter = %config.name, wait = ?(until - now), "rate limit: exhausted past max_wait, failing fast");
                        continue;
                    }
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(until),
                        None => {
                            metrics::counter!("llm_rate_limit_waits_total", "limiter" => config.name.clone())
                                .increment(1);
                            tracing::debug!(limiter = %config.name, wait = ?(until - now), "rate limit: exhausted, waiting for the reset");
                            self.sleep = Some(Box::pin(tokio::time::sleep_until(until)));
                        }
                    }
                    if let Some(sleep) = &mut self.sleep {
                        ready!(sleep.as_mut().poll(cx));
                    }
                }
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match std::mem::replace(&mut self.readiness, Readiness::Idle) {
            Readiness::Rejected(wait) => ResponseFuture {
                state: State::Rejected {
                    error: Some(RateLimitExceeded::new(wait)),
                },
                learn: None,
            },
            // `Idle`: the caller skipped `poll_ready`; the call goes through
            // rather than failing a contract the inner service would enforce.
            Readiness::Admitted | Readiness::Idle => {
                self.shared
                    .charge_tokens(self.token_cost.token_cost(&request));
                ResponseFuture {
                    state: State::Called {
                        future: self.inner.call(request),
                    },
                    learn: Some((self.shared.clone(), self.classifier.clone())),
                }
            }
        }
    }
}

pin_project! {
    /// The future of a [`RateLimit`] call: the inner call, whose answer teaches
    /// the layer the upstream's limits, or an immediate rejection.
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F>,
        learn: Option<(Arc<Shared>, C)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Rejected { error: Option<RateLimitExceeded> },
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, Res, Err> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, Err>>,
    Err: Into<BoxError>,
    Res: RateLimitHeaders,
    C: Classify<Res, Err>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| RateLimitExceeded::new(Duration::ZERO))
                .into())),
            StateProj::Called { future } => {
                let result = ready!(future.poll(cx));
                if let Some((shared, classifier)) = this.learn.take() {
                    let outcome = classifier.classify(&result);
                    let headers = result.as_ref().ok().and_then(|r| r.rate_limit_headers());
                    shared.learn(outcome.failure(), headers);
                }
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
