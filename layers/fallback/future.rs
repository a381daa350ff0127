//! The response future: the primary's call, then alternates, hedges and the final
//! responder, as an explicit state machine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{sleep, Sleep};
use tower::ServiceExt;

use super::layer::Config;
use super::{AllTiersFailed, Degraded, FailedTier, MarkDegraded, SettleResponse};
use crate::classify::{classify_dyn_error, Classify, FailureKind, Outcome};
use crate::BoxError;

/// What one tier's attempt came to.
pub(crate) enum Attempted<Out> {
    /// The tier answered.
    Answer(Out),
    /// The tier failed; `answer` is what it returned, converted, in case it is
    /// returned as is.
    Failed {
        kind: FailureKind,
        answer: Result<Out, BoxError>,
    },
    /// The classifier called an error a success: return it, no fallback.
    Return(Result<Out, BoxError>),
}

type BoxAttempt<Out> = Pin<Box<dyn Future<Output = Attempted<Out>> + Send>>;

pin_project! {
    /// The response future of [`Fallback`](super::Fallback).
    ///
    /// While the primary answers, it is the primary's future plus a few words; the
    /// alternates' calls are boxed, and only exist once the call falls back.
    pub struct ResponseFuture<F, Req, Res, Err, C, P>
    where
        P: SettleResponse<Res>,
    {
        #[pin]
        primary: Primary<F, P::Future>,
        chain: Chain<Req, Res, Err, C, P>,
    }
}

pin_project! {
    #[project = PrimaryProj]
    enum Primary<F, SF> {
        Calling { #[pin] future: F },
        Settling { #[pin] future: SF },
        Done,
    }
}

/// Everything past the primary: which tiers failed, what runs, what comes next.
struct Chain<Req, Res, Err, C, P: SettleResponse<Res>> {
    config: Arc<Config<Req, Res, Err, C, P>>,
    request: Option<Req>,
    /// The next alternate (1-based) that has not been started.
    next: usize,
    in_flight: Vec<(usize, BoxAttempt<P::Output>)>,
    failed: Vec<FailedTier>,
    errors: Vec<Option<BoxError>>,
    hedge_timer: Option<Pin<Box<Sleep>>>,
    hedged: bool,
}

impl<F, Req, Res, Err, C, P> ResponseFuture<F, Req, Res, Err, C, P>
where
    P: SettleResponse<Res>,
{
    pub(crate) fn new(primary: F, request: Req, config: Arc<Config<Req, Res, Err, C, P>>) -> Self {
        Self {
            primary: Primary::Calling { future: primary },
            chain: Chain {
                config,
                request: Some(request),
                next: 1,
                in_flight: Vec::new(),
                failed: Vec::new(),
                errors: Vec::new(),
                hedge_timer: None,
                hedged: false,
            },
        }
    }
}

impl<F, Req, Res, Err, C, P> Future for ResponseFuture<F, Req, Res, Err, C, P>
where
    F: Future<Output = Result<Res, Err>>,
    Req: Clone + Send + 'static,
    Res: Send + 'static,
    Err: Into<BoxError> + Send + 'static,
    C: Classify<Res, Err> + Send + Sync + 'static,
    P: SettleResponse<Res> + Send + Sync + 'static,
    P::Future: Send + 'static,
    P::Output: MarkDegraded + Send + 'static,
{
    type Output = Result<P::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let chain = this.chain;
        loop {
            if let Poll::Ready(Some(attempted)) =
                poll_primary(this.primary.as_mut(), &chain.config, cx)
            {
                let done = match attempted {
                    Attempted::Answer(out) => Some(Ok(out)),
                    Attempted::Return(result) => Some(result),
                    Attempted::Failed { kind, answer } => chain.on_failure(0, kind, answer),
                };
                if let Some(result) = done {
                    chain.finish(0);
                    return Poll::Ready(result);
                }
                chain.hedge_timer = None;
            }

            let mut i = 0;
            while i < chain.in_flight.len() {
                let Poll::Ready(attempted) = chain.in_flight[i].1.as_mut().poll(cx) else {
                    i += 1;
                    continue;
                };
                let (index, _) = chain.in_flight.remove(i);
                chain.hedge_timer = None;
                let done = match attempted {
                    Attempted::Answer(out) => Some(Ok(chain.degrade(index, out))),
                    Attempted::Return(result) => Some(result),
                    Attempted::Failed { kind, answer } => chain.on_failure(index, kind, answer),
                };
                if let Some(result) = done {
                    // Cancel whatever still runs, the primary included.
                    this.primary.set(Primary::Done);
                    chain.finish(index);
                    return Poll::Ready(result);
                }
            }

            let running = chain.in_flight.len() + usize::from(!this.primary.is_done());
            if running == 0 {
                match chain.start_next() {
                    None => continue,
                    Some(result) => {
                        chain.finish(usize::MAX);
                        return Poll::Ready(result);
                    }
                }
            }
            if running == 1 && chain.can_hedge() {
                let delay = chain.config.hedge_after.unwrap_or_default();
                let timer = chain
                    .hedge_timer
                    .get_or_insert_with(|| Box::pin(sleep(delay)));
                if timer.as_mut().poll(cx).is_ready() {
                    chain.hedged = true;
                    tracing::debug!(
                        tier = %chain.config.name(chain.next),
                        ?delay,
                        "no answer yet; hedging to the next tier"
                    );
                    metrics::counter!("llm_fallback_hedges_total").increment(1);
                    chain.start(chain.next);
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}

impl<F, SF> Primary<F, SF> {
    fn is_done(&self) -> bool {
        matches!(self, Primary::Done)
    }
}

#[inline]
fn poll_primary<F, Req, Res, Err, C, P>(
    mut primary: Pin<&mut Primary<F, P::Future>>,
    config: &Config<Req, Res, Err, C, P>,
    cx: &mut Context<'_>,
) -> Poll<Option<Attempted<P::Output>>>
where
    F: Future<Output = Result<Res, Err>>,
    Err: Into<BoxError>,
    C: Classify<Res, Err>,
    P: SettleResponse<Res>,
{
    loop {
        let attempted = match primary.as_mut().project() {
            PrimaryProj::Calling { future } => match after_call(config, ready!(future.poll(cx))) {
                AfterCall::Settle(future) => {
                    primary.set(Primary::Settling { future });
                    continue;
                }
                AfterCall::Done(attempted) => attempted,
            },
            PrimaryProj::Settling { future } => after_settle(ready!(future.poll(cx))),
            PrimaryProj::Done => return Poll::Ready(None),
        };
        primary.set(Primary::Done);
        return Poll::Ready(Some(attempted));
    }
}

enum AfterCall<SF, Out> {
    Settle(SF),
    Done(Attempted<Out>),
}

#[inline]
fn after_call<Req, Res, Err, C, P>(
    config: &Config<Req, Res, Err, C, P>,
    result: Result<Res, Err>,
) -> AfterCall<P::Future, P::Output>
where
    Err: Into<BoxError>,
    C: Classify<Res, Err>,
    P: SettleResponse<Res>,
{
    match config.classifier.classify(&result) {
        Outcome::Success => match result {
            Ok(response) => AfterCall::Settle(config.settle.settle(response)),
            Err(error) => AfterCall::Done(Attempted::Return(Err(error.into()))),
        },
        Outcome::Failure(kind) => AfterCall::Done(Attempted::Failed {
            kind,
            answer: result
                .map(|response| config.settle.pass(response))
                .map_err(Into::into),
        }),
    }
}

#[inline]
fn after_settle<Out>(settled: Result<Out, BoxError>) -> Attempted<Out> {
    match settled {
        Ok(out) => Attempted::Answer(out),
        Err(error) => Attempted::Failed {
            kind: classify_dyn_error(&*error),
            answer: Err(error),
        },
    }
}

async fn run_alternate<Req, Res, Err, C, P>(
    config: Arc<Config<Req, Res, Err, C, P>>,
    index: usize,
    request: Req,
) -> Attempted<P::Output>
where
    Err: Into<BoxError>,
    C: Classify<Res, Err>,
    P: SettleResponse<Res>,
{
    let tier = &config.alternates[index - 1];
    let request = match &tier.map_request {
        Some(map) => map(request),
        None => request,
    };
    let result = tier.service.clone().oneshot(request).await;
    match after_call(&config, result) {
        AfterCall::Settle(future) => after_settle(future.await),
        AfterCall::Done(attempted) => attempted,
    }
}

impl<Req, Res, Err, C, P> Chain<Req, Res, Err, C, P>
where
    Req: Clone + Send + 'static,
    Res: Send + 'static,
    Err: Into<BoxError> + Send + 'static,
    C: Classify<Res, Err> + Send + Sync + 'static,
    P: SettleResponse<Res> + Send + Sync + 'static,
    P::Future: Send + 'static,
    P::Output: MarkDegraded + Send + 'static,
{
    /// Record a failed tier. Returns the call's result when this failure ends it:
    /// the policy does not fall back from it and no later tier takes it over.
    fn on_failure(
        &mut self,
        index: usize,
        kind: FailureKind,
        answer: Result<P::Output, BoxError>,
    ) -> Option<Result<P::Output, BoxError>> {
        let name = self.config.name(index).clone();
        metrics::counter!(
            "llm_fallback_tier_failures_total",
            "tier" => name.clone(),
            "kind" => kind.name(),
        )
        .increment(1);
        if !self.config.falls_back(self.next, &kind) {
            tracing::debug!(tier = %name, %kind, "tier failed; not a failure to fall back from");
            return Some(answer.map(|out| {
                if index == 0 {
                    out
                } else {
                    self.degrade(index, out)
                }
            }));
        }
        tracing::warn!(tier = %name, %kind, "fallback tier failed");
        self.failed.push(FailedTier { index, name, kind });
        self.errors.push(answer.err());
        None
    }

    /// Nothing runs: start the next tier that takes over from the last failure,
    /// or answer from the final responder, or fail with every tier's failure.
    fn start_next(&mut self) -> Option<Result<P::Output, BoxError>> {
        let kind = self
            .failed
            .last()
            .map_or(FailureKind::Other, |tier| tier.kind.clone());
        if let Some(index) = self.config.next_accepting(self.next, &kind) {
            if self.start(index) {
                return None;
            }
        } else if self.config.worth_final(&kind) {
            if let (Some(last), Some(request)) = (&self.config.final_responder, self.request.take())
            {
                let answer = self.config.settle.pass((last.respond)(request));
                return Some(Ok(self.degrade(self.config.final_index(), answer)));
            }
        }
        tracing::warn!(tiers = self.failed.len(), "all fallback tiers failed");
        metrics::counter!("llm_fallback_all_failed_total").increment(1);
        Some(Err(Box::new(AllTiersFailed {
            tiers: std::mem::take(&mut self.failed),
            errors: std::mem::take(&mut self.errors),
        })))
    }

    /// Start alternate `index`; `false` if the request is gone (cannot happen
    /// while an alternate is left, but never worth a panic).
    fn start(&mut self, index: usize) -> bool {
        let last_use =
            index == self.config.alternates.len() && self.config.final_responder.is_none();
        let request = if last_use {
            self.request.take()
        } else {
            self.request.clone()
        };
        let Some(request) = request else {
            return false;
        };
        tracing::debug!(tier = %self.config.name(index), "calling fallback tier");
        self.next = index + 1;
        self.hedge_timer = None;
        let attempt = run_alternate(self.config.clone(), index, request);
        self.in_flight.push((index, Box::pin(attempt)));
        true
    }

    fn can_hedge(&self) -> bool {
        self.config.hedge_after.is_some()
            && self.next <= self.config.alternates.len()
            && self.request.is_some()
    }

    /// Mark an answer from tier `index` as degraded.
    fn degrade(&self, index: usize, mut out: P::Output) -> P::Output {
        let name = self.config.name(index).clone();
        tracing::info!(tier = %name, failed = self.failed.len(), hedged = self.hedged, "degraded answer");
        metrics::counter!("llm_fallback_degraded_total", "tier" => name.clone()).increment(1);
        out.mark_degraded(Degraded {
            index,
            name,
            failed: self.failed.clone(),
            hedged: self.hedged,
        });
        out
    }

    /// The call is over: drop (cancel) every call still running.
    #[inline]
    fn finish(&mut self, winner: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        if self.hedged {
            tracing::debug!(
                winner,
                dropped = self.in_flight.len(),
                "dropping the slower hedged call"
            );
        }
        self.in_flight.clear();
    }
}

impl<F, Req, Res, Err, C, P> fmt::Debug for ResponseFuture<F, Req, Res, Err, C, P>
where
    P: SettleResponse<Res>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("primary_done", &self.primary.is_done())
            .field("next", &self.chain.next)
            .field("in_flight", &self.chain.in_flight.len())
            .field("failed", &self.chain.failed)
            .field("hedged", &self.chain.hedged)
            .finish_non_exhaustive()
    }
}
