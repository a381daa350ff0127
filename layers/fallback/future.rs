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
//! other case goes through out-of-line functions (the chain, in `chain.rs`).

use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::attempt::{after_call, after_settle, AfterCall, Attempted, Primary, PrimaryProj};
use super::builder::Config;
use super::chain::{Hedge, LazyChain, Tiers};
use super::{MarkDegraded, SettleResponse, Settlement};
use crate::classify::{Classify, Outcome};
use crate::BoxError;

pin_project! {
    #[project = ResponseFutureProj]
    /// The response future of [`Fallback`](super::Fallback).
    ///
    /// While the primary answers, it is the primary's future, the replay copy of
    /// the request, and two words; the fallback's bookkeeping, the hedge timer and
    /// the alternates' calls are boxed, and only exist once the call falls back
    /// (or waits on a hedge).
    pub struct ResponseFuture<F, Req, Res, Err, C, Settle>
    where
        Settle: SettleResponse<Res>,
    {
        #[pin]
        primary: Primary<F, Settle::Future>,
        config: Arc<Config<Req, Res, Err, C, Settle>>,
        // The copy replayed to the next tier; taken on its last use. Also dropped
        // when the primary answers (see `poll`).
        request: Option<Req>,
        // Only once the call falls back or waits on a hedge. Dropped by hand (see
        // `PinnedDrop`), so that dropping a future without one is only a test.
        chain: LazyChain<Settle::Output>,
    }

    impl<F, Req, Res, Err, C, Settle> PinnedDrop for ResponseFuture<F, Req, Res, Err, C, Settle>
    where
        Settle: SettleResponse<Res>,
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

impl<F, Req, Res, Err, C, Settle> ResponseFuture<F, Req, Res, Err, C, Settle>
where
    Settle: SettleResponse<Res>,
{
    #[inline]
    pub(crate) fn new(
        primary: F,
        request: Req,
        config: Arc<Config<Req, Res, Err, C, Settle>>,
    ) -> Self {
        Self {
            primary: Primary::Calling { future: primary },
            config,
            request: Some(request),
            chain: ManuallyDrop::new(None),
        }
    }
}

impl<F, Req, Res, Err, C, Settle> Future for ResponseFuture<F, Req, Res, Err, C, Settle>
where
    F: Future<Output = Result<Res, Err>>,
    Req: Clone + Send + 'static,
    Res: Send + 'static,
    Err: Into<BoxError> + Send + 'static,
    C: Classify<Res, Err> + Send + Sync + 'static,
    Settle: SettleResponse<Res> + Send + Sync + 'static,
    Settle::Future: Send + 'static,
    Settle::Output: MarkDegraded + Send + 'static,
{
    type Output = Result<Settle::Output, BoxError>;

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

/// The projection, as the fallback chain sees it.
fn tiers<F, Req, Res, Err, C, Settle>(
    this: ResponseFutureProj<'_, F, Req, Res, Err, C, Settle>,
) -> Tiers<'_, F, Req, Res, Err, C, Settle>
where
    Settle: SettleResponse<Res>,
{
    Tiers {
        primary: this.primary,
        config: this.config,
        request: this.request,
        chain: this.chain,
    }
}

#[cold]
#[inline(never)]
fn polled_after_completion() -> ! {
    panic!("`ResponseFuture` polled after completion")
}

impl<F, Req, Res, Err, C, Settle> ResponseFuture<F, Req, Res, Err, C, Settle>
where
    F: Future<Output = Result<Res, Err>>,
    Req: Clone + Send + 'static,
    Res: Send + 'static,
    Err: Into<BoxError> + Send + 'static,
    C: Classify<Res, Err> + Send + Sync + 'static,
    Settle: SettleResponse<Res> + Send + Sync + 'static,
    Settle::Future: Send + 'static,
    Settle::Output: MarkDegraded + Send + 'static,
{
    /// The primary's result classified as a failure, or as an error to return.
    #[inline(never)]
    fn primary_failed(
        self: Pin<&mut Self>,
        outcome: Outcome,
        result: Result<Res, Err>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Settle::Output, BoxError>> {
        let after = after_call(&self.config.settle, outcome, result);
        self.primary_called(after, cx)
    }

    /// The primary's call returned something other than an answer at once: a
    /// response to settle, a failure, or an error to return.
    #[inline(never)]
    fn primary_called(
        self: Pin<&mut Self>,
        after: AfterCall<Settle::Future, Settle::Output>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Settle::Output, BoxError>> {
        let mut this = tiers(self.project());
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
    fn poll_slow(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Settle::Output, BoxError>> {
        let mut this = tiers(self.project());
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

impl<F, Req, Res, Err, C, Settle> fmt::Debug for ResponseFuture<F, Req, Res, Err, C, Settle>
where
    Settle: SettleResponse<Res>,
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
