//! The response future: the primary's call, then alternates, hedges and the final
//! responder, as an explicit state machine.
//!
//! The primary-answers path is the hot one and is kept lean: the future is the
//! primary's future, the replay copy of the request, the shared configuration and
//! one (empty) pointer. Everything the fallback needs (failed tiers, alternate
//! calls in flight, errors, the hedge timer) lives in a `Chain` that is boxed and
//! only created once the call falls back (or waits on a hedge). An answer from
//! the primary is returned straight from the first poll that sees it, in a `poll`
//! small enough to inline, without touching the chain, metrics or tracing; every
//! other case goes through out-of-line functions.

use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{sleep, Sleep};
use tower::ServiceExt;

use super::layer::Config;
use super::{AllTiersFailed, Degraded, FailedTier, MarkDegraded, SettleResponse, Settlement};
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
    #[project = ResponseFutureProj]
    /// The response future of [`Fallback`](super::Fallback).
    ///
    /// While the primary answers, it is the primary's future, the replay copy of
    /// the request, and two words; the fallback's bookkeeping, the hedge timer and
    /// the alternates' calls are boxed, and only exist once the call falls back
    /// (or waits on a hedge).
    pub struct ResponseFuture<F, Req, Res, Err, C, P>
    where
        P: SettleResponse<Res>,
    {
        #[pin]
        primary: Primary<F, P::Future>,
        config: Arc<Config<Req, Res, Err, C, P>>,
        // The copy replayed to the next tier; taken on its last use. Also dropped
        // when the primary answers (see `poll`).
        request: Option<Req>,
        // Only once the call falls back or waits on a hedge. Dropped by hand (see
        // `PinnedDrop`), so that dropping a future without one is only a test.
        chain: ManuallyDrop<Option<Pin<Box<Chain<P::Output>>>>>,
    }

    impl<F, Req, Res, Err, C, P> PinnedDrop for ResponseFuture<F, Req, Res, Err, C, P>
    where
        P: SettleResponse<Res>,
    {
        #[inline]
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.chain.is_some() {
                drop_chain(this.chain);
            }
        }
    }
}

#[cold]
#[inline(never)]
fn drop_chain<T>(chain: &mut ManuallyDrop<Option<T>>) {
    drop(ManuallyDrop::into_inner(std::mem::replace(
        chain,
        ManuallyDrop::new(None),
    )));
}

pin_project! {
    #[project = PrimaryProj]
    enum Primary<F, SF> {
        Calling { #[pin] future: F },
        Settling { #[pin] future: SF },
        Done,
    }
}

pin_project! {
    #[project = ChainProj]
    /// Everything past the primary: which tiers failed, what runs, what comes next.
    struct Chain<Out> {
        // Runs while one call waits alone and hedging is on.
        #[pin]
        hedge_timer: Option<Sleep>,
        // The next alternate (1-based) that has not been started.
        next: usize,
        // At most two calls run at a time, the primary included.
        in_flight: Vec<(usize, BoxAttempt<Out>)>,
        failed: Vec<FailedTier>,
        errors: Vec<Option<BoxError>>,
        hedged: bool,
        // A hedged alternate's failure that is not fallen back from, kept while
        // another call still runs: a hedge only adds chances, so it ends the call
        // only if the other call cannot answer either.
        deferred: Option<(usize, Result<Out, BoxError>)>,
    }
}

impl<Out> Chain<Out> {
    fn new() -> Self {
        Self {
            hedge_timer: None,
            next: 1,
            in_flight: Vec::new(),
            failed: Vec::new(),
            errors: Vec::new(),
            hedged: false,
            deferred: None,
        }
    }
}

impl<F, Req, Res, Err, C, P> ResponseFuture<F, Req, Res, Err, C, P>
where
    P: SettleResponse<Res>,
{
    #[inline]
    pub(crate) fn new(primary: F, request: Req, config: Arc<Config<Req, Res, Err, C, P>>) -> Self {
        Self {
            primary: Primary::Calling { future: primary },
            config,
            request: Some(request),
            chain: ManuallyDrop::new(None),
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

    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The hot path, kept small enough to inline into the caller: only the
        // primary runs, nothing has failed, and it answers.
        let this = self.as_mut().project();
        if this.chain.is_none() {
            if let PrimaryProj::Calling { future } = this.primary.project() {
                if this.request.is_none() {
                    polled_after_completion();
                }
                match future.poll(cx) {
                    Poll::Ready(result) => {
                        let outcome = this.config.classifier.classify(&result);
                        let response = match (outcome, result) {
                            (Outcome::Success, Ok(response)) => response,
                            (outcome, result) => return self.primary_failed(outcome, result, cx),
                        };
                        return match this.config.settle.try_settle(response) {
                            Settlement::Now(Ok(out)) => {
                                // Done. The primary's spent future is dropped with
                                // this one; dropping the replay copy now marks
                                // completion.
                                *this.request = None;
                                Poll::Ready(Ok(out))
                            }
                            Settlement::Now(Err(error)) => {
                                self.primary_called(AfterCall::Done(after_settle(Err(error))), cx)
                            }
                            Settlement::Wait(future) => {
                                self.primary_called(AfterCall::Settle(future), cx)
                            }
                        };
                    }
                    Poll::Pending if this.config.hedge_after.is_none() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
        }
        self.poll_slow(cx)
    }
}

#[cold]
#[inline(never)]
fn polled_after_completion() -> ! {
    panic!("`ResponseFuture` polled after completion")
}

impl<F, Req, Res, Err, C, P> ResponseFuture<F, Req, Res, Err, C, P>
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
    /// The primary's result classified as a failure, or as an error to return.
    #[inline(never)]
    fn primary_failed(
        self: Pin<&mut Self>,
        outcome: Outcome,
        result: Result<Res, Err>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<P::Output, BoxError>> {
        let after = after_call(&self.config.settle, outcome, result);
        self.primary_called(after, cx)
    }

    /// The primary's call returned something other than an answer at once: a
    /// response to settle, a failure, or an error to return.
    #[inline(never)]
    fn primary_called(
        self: Pin<&mut Self>,
        after: AfterCall<P::Future, P::Output>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<P::Output, BoxError>> {
        let mut this = self.project();
        let attempted = match after {
            AfterCall::Settle(future) => {
                this.primary.set(Primary::Settling { future });
                return this.poll_tiers(cx);
            }
            AfterCall::Done(attempted) => attempted,
        };
        this.primary.set(Primary::Done);
        match attempted {
            Attempted::Answer(out) => Poll::Ready(Ok(out)),
            Attempted::Return(result) => Poll::Ready(result),
            Attempted::Failed { kind, answer } => match this.on_failure(0, kind, answer) {
                Some(result) => Poll::Ready(result),
                None => this.poll_tiers(cx),
            },
        }
    }

    /// Every poll but the hot path's: the primary still pending with hedging on,
    /// settling, or the fallback under way.
    #[inline(never)]
    fn poll_slow(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<P::Output, BoxError>> {
        let mut this = self.project();
        if this.chain.is_none() {
            match this.primary.as_mut().project() {
                // Only when hedging, and the primary is pending.
                PrimaryProj::Calling { .. } => {
                    // Nothing has failed yet, so a hedge can only start a tier.
                    if !matches!(this.poll_hedge(cx), Hedge::Started) {
                        return Poll::Pending;
                    }
                }
                PrimaryProj::Settling { .. } => {}
                // Without a chain, only an answer or a failure that is not fallen
                // back from ends the primary: the call is over.
                PrimaryProj::Done => polled_after_completion(),
            }
        }
        this.poll_tiers(cx)
    }
}

impl<F, Req, Res, Err, C, P> ResponseFutureProj<'_, F, Req, Res, Err, C, P>
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
    /// The primary (while it still runs or settles), the alternates in flight,
    /// the next tier, hedges.
    fn poll_tiers(&mut self, cx: &mut Context<'_>) -> Poll<Result<P::Output, BoxError>> {
        loop {
            if let Poll::Ready(Some(attempted)) =
                poll_primary(self.primary.as_mut(), self.config, cx)
            {
                self.stop_hedge_timer();
                let done = match attempted {
                    Attempted::Answer(out) => Some(Ok(out)),
                    Attempted::Return(result) => Some(result),
                    Attempted::Failed { kind, answer } => self.on_failure(0, kind, answer),
                };
                if let Some(result) = done {
                    self.finish(0);
                    return Poll::Ready(result);
                }
            }

            let mut i = 0;
            while i < self.in_flight() {
                let mut chain = self.chain();
                let Poll::Ready(attempted) = chain.in_flight[i].1.as_mut().poll(cx) else {
                    i += 1;
                    continue;
                };
                let (index, _) = chain.in_flight.remove(i);
                chain.hedge_timer.set(None);
                let done = match attempted {
                    Attempted::Answer(out) => Some(Ok(self.degrade(index, out))),
                    Attempted::Return(result) => Some(result),
                    Attempted::Failed { kind, answer } => self.on_failure(index, kind, answer),
                };
                if let Some(result) = done {
                    // Cancel whatever still runs, the primary included.
                    self.primary.set(Primary::Done);
                    self.finish(index);
                    return Poll::Ready(result);
                }
            }

            let running = self.in_flight() + usize::from(!self.primary.is_done());
            if running == 0 {
                match self.start_next() {
                    None => continue,
                    Some(result) => {
                        self.finish(usize::MAX);
                        return Poll::Ready(result);
                    }
                }
            }
            if running == 1 {
                match self.poll_hedge(cx) {
                    Hedge::Started => continue,
                    Hedge::Final(result) => {
                        self.primary.set(Primary::Done);
                        self.finish(usize::MAX);
                        return Poll::Ready(result);
                    }
                    Hedge::No => {}
                }
            }
            return Poll::Pending;
        }
    }

    /// The fallback state, created on first use.
    fn chain(&mut self) -> ChainProj<'_, P::Output> {
        self.chain
            .get_or_insert_with(|| Box::pin(Chain::new()))
            .as_mut()
            .project()
    }

    /// The number of alternates' calls running.
    fn in_flight(&self) -> usize {
        self.chain.as_ref().map_or(0, |chain| chain.in_flight.len())
    }

    /// The next alternate to start.
    fn next(&self) -> usize {
        self.chain.as_ref().map_or(1, |chain| chain.next)
    }

    fn stop_hedge_timer(&mut self) {
        if let Some(chain) = self.chain.as_mut() {
            chain.as_mut().project().hedge_timer.set(None);
        }
    }

    /// With one call running and hedging on, once the delay has passed: the next
    /// tier started, or, past the last alternate and after a tier failed with a
    /// failure worth the final responder, the final responder's answer (the call
    /// that still runs is taken as timed out, so a hung call never keeps the call
    /// pending for ever).
    fn poll_hedge(&mut self, cx: &mut Context<'_>) -> Hedge<P::Output> {
        let next = self.next();
        let Some(delay) = self.config.hedge_after else {
            return Hedge::No;
        };
        if self.request.is_none() {
            return Hedge::No;
        }
        let to_final = next > self.config.alternates.len();
        if to_final {
            // Only after a failure the final responder is meant for (and never
            // over a hedged tier's own error, which waits for the other call).
            let last_failure_worth_it = self.chain.as_ref().is_some_and(|chain| {
                chain.deferred.is_none()
                    && chain
                        .failed
                        .last()
                        .is_some_and(|tier| self.config.worth_final(&tier.kind))
            });
            if !(last_failure_worth_it && self.config.worth_final(&FailureKind::Timeout)) {
                return Hedge::No;
            }
        }
        let mut timer = self.chain().hedge_timer;
        if timer.is_none() {
            timer.set(Some(sleep(delay)));
        }
        if timer
            .as_pin_mut()
            .is_some_and(|timer| timer.poll(cx).is_pending())
        {
            return Hedge::No;
        }
        tracing::debug!(
            tier = %self.config.name(next),
            ?delay,
            "no answer yet; hedging to the next tier"
        );
        metrics::counter!("llm_fallback_hedges_total").increment(1);
        *self.chain().hedged = true;
        if !to_final {
            return if self.start(next) {
                Hedge::Started
            } else {
                Hedge::No
            };
        }
        match (&self.config.final_responder, self.request.take()) {
            (Some(last), Some(request)) => {
                let answer = self.config.settle.pass((last.respond)(request));
                Hedge::Final(Ok(self.degrade(self.config.final_index(), answer)))
            }
            _ => Hedge::No,
        }
    }

    /// Record a failed tier. Returns the call's result when this failure ends it:
    /// the policy does not fall back from it and no later tier takes it over.
    #[cold]
    fn on_failure(
        &mut self,
        index: usize,
        kind: FailureKind,
        answer: Result<P::Output, BoxError>,
    ) -> Option<Result<P::Output, BoxError>> {
        self.stop_hedge_timer();
        let name = self.config.name(index).clone();
        metrics::counter!(
            "llm_fallback_tier_failures_total",
            "tier" => name.clone(),
            "kind" => kind.name(),
        )
        .increment(1);
        if !self.config.falls_back(self.next(), &kind) {
            let others_running = self.in_flight() > 0 || !self.primary.is_done();
            if index > 0 && others_running {
                // A hedge only adds chances: wait for the call still running.
                tracing::debug!(tier = %name, %kind, "hedged tier failed; waiting for the other call");
                let chain = self.chain();
                chain.failed.push(FailedTier { index, name, kind });
                chain.errors.push(None);
                if chain.deferred.is_none() {
                    *chain.deferred = Some((index, answer));
                }
                return None;
            }
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
        let chain = self.chain();
        chain.failed.push(FailedTier { index, name, kind });
        chain.errors.push(answer.err());
        None
    }

    /// Nothing runs: start the next tier that takes over from the last failure,
    /// or answer from the final responder, or fail with every tier's failure.
    fn start_next(&mut self) -> Option<Result<P::Output, BoxError>> {
        if let Some((index, answer)) = self.chain().deferred.take() {
            // The hedged tier's own failure ends the call, as it would have
            // without the hedge once the other call failed too.
            return Some(answer.map(|out| self.degrade(index, out)));
        }
        let next = self.next();
        let kind = self
            .chain()
            .failed
            .last()
            .map_or(FailureKind::Other, |tier| tier.kind.clone());
        if let Some(index) = self.config.next_accepting(next, &kind) {
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
        let chain = self.chain();
        tracing::warn!(tiers = chain.failed.len(), "all fallback tiers failed");
        metrics::counter!("llm_fallback_all_failed_total").increment(1);
        Some(Err(Box::new(AllTiersFailed {
            tiers: std::mem::take(chain.failed),
            errors: std::mem::take(chain.errors),
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
        let attempt = Box::pin(run_alternate(self.config.clone(), index, request));
        let mut chain = self.chain();
        chain.hedge_timer.set(None);
        *chain.next = index + 1;
        chain.in_flight.push((index, attempt));
        true
    }

    /// Mark an answer from tier `index` as degraded. Only called when that answer
    /// ends the call, so the list of failed tiers moves into the marker.
    fn degrade(&mut self, index: usize, mut out: P::Output) -> P::Output {
        let name = self.config.name(index).clone();
        let chain = self.chain();
        let failed = std::mem::take(chain.failed);
        let hedged = *chain.hedged;
        tracing::info!(tier = %name, failed = failed.len(), hedged, "degraded answer");
        metrics::counter!("llm_fallback_degraded_total", "tier" => name.clone()).increment(1);
        out.mark_degraded(Degraded {
            index,
            name,
            failed,
            hedged,
        });
        out
    }

    /// The call is over: drop (cancel) every call still running.
    fn finish(&mut self, winner: usize) {
        let Some(chain) = self.chain.as_mut() else {
            return;
        };
        let chain = chain.as_mut().project();
        if chain.in_flight.is_empty() {
            return;
        }
        if *chain.hedged {
            tracing::debug!(
                winner,
                dropped = chain.in_flight.len(),
                "dropping the slower hedged call"
            );
        }
        chain.in_flight.clear();
    }
}

/// What a hedge timer came to.
enum Hedge<Out> {
    /// Not (yet) hedging.
    No,
    /// The next tier was started.
    Started,
    /// The final responder answered.
    Final(Result<Out, BoxError>),
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
            PrimaryProj::Calling { future } => {
                match classify_and_settle(config, ready!(future.poll(cx))) {
                    AfterCall::Settle(future) => {
                        primary.set(Primary::Settling { future });
                        continue;
                    }
                    AfterCall::Done(attempted) => attempted,
                }
            }
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
fn after_call<Res, Err, P>(
    settle: &P,
    outcome: Outcome,
    result: Result<Res, Err>,
) -> AfterCall<P::Future, P::Output>
where
    Err: Into<BoxError>,
    P: SettleResponse<Res>,
{
    match outcome {
        Outcome::Success => match result {
            Ok(response) => match settle.try_settle(response) {
                Settlement::Now(settled) => AfterCall::Done(after_settle(settled)),
                Settlement::Wait(future) => AfterCall::Settle(future),
            },
            Err(error) => AfterCall::Done(Attempted::Return(Err(error.into()))),
        },
        Outcome::Failure(kind) => AfterCall::Done(Attempted::Failed {
            kind,
            answer: result
                .map(|response| settle.pass(response))
                .map_err(Into::into),
        }),
    }
}

/// Classify a tier's result, and settle it if it is a success.
#[inline]
fn classify_and_settle<Req, Res, Err, C, P>(
    config: &Config<Req, Res, Err, C, P>,
    result: Result<Res, Err>,
) -> AfterCall<P::Future, P::Output>
where
    Err: Into<BoxError>,
    C: Classify<Res, Err>,
    P: SettleResponse<Res>,
{
    let outcome = config.classifier.classify(&result);
    after_call(&config.settle, outcome, result)
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
    match classify_and_settle(&config, result) {
        AfterCall::Settle(future) => after_settle(future.await),
        AfterCall::Done(attempted) => attempted,
    }
}

impl<F, Req, Res, Err, C, P> fmt::Debug for ResponseFuture<F, Req, Res, Err, C, P>
where
    P: SettleResponse<Res>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain = self.chain.as_deref();
        f.debug_struct("ResponseFuture")
            .field(
                "primary_done",
                // A primary that answered on the hot path leaves `request` empty.
                &(self.primary.is_done() || (chain.is_none() && self.request.is_none())),
            )
            .field("next", &chain.map_or(1, |chain| chain.next))
            .field("in_flight", &chain.map_or(0, |chain| chain.in_flight.len()))
            .field("failed", &chain.map_or(&[][..], |chain| &chain.failed[..]))
            .field("hedged", &chain.is_some_and(|chain| chain.hedged))
            .finish_non_exhaustive()
    }
}
