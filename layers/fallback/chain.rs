//! The fallback chain: everything past the primary's own answer. Which tiers
//! failed, the alternates' calls in flight, hedges, the final responder, and the
//! error listing every tier's failure. Only created once a call falls back (or
//! waits on a hedge); see `future.rs` for the hot path.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{sleep, Sleep};

use super::attempt::{poll_primary, run_alternate, Attempted, BoxAttempt, Primary};
use super::builder::Config;
use super::{AllTiersFailed, Degraded, FailedTier, MarkDegraded, SettleResponse};
use crate::classify::{Classify, FailureKind};
use crate::BoxError;

pin_project! {
    #[project = ChainProj]
    /// Everything past the primary: which tiers failed, what runs, what comes next.
    pub(super) struct Chain<Out> {
        // Runs while one call waits alone and hedging is on.
        #[pin]
        pub(super) hedge_timer: Option<Sleep>,
        // The next alternate (1-based) that has not been started.
        pub(super) next: usize,
        // At most two calls run at a time, the primary included.
        pub(super) in_flight: Vec<(usize, BoxAttempt<Out>)>,
        pub(super) failed: Vec<FailedTier>,
        pub(super) errors: Vec<Option<BoxError>>,
        pub(super) hedged: bool,
        // A hedged alternate's failure that is not fallen back from, kept while
        // another call still runs: a hedge only adds chances, so it ends the call
        // only if the other call cannot answer either.
        pub(super) deferred: Option<(usize, Result<Out, BoxError>)>,
    }
}

impl<Out> Chain<Out> {
    pub(super) fn new() -> Self {
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

/// The chain of a response future: created on first use, dropped by hand.
pub(super) type LazyChain<Out> = ManuallyDrop<Option<Pin<Box<Chain<Out>>>>>;

/// The response future's fields, seen by the fallback chain: the same borrows as
/// its pin projection.
pub(super) struct Tiers<'a, F, Req, Res, Err, C, Settle>
where
    Settle: SettleResponse<Res>,
{
    pub(super) primary: Pin<&'a mut Primary<F, Settle::Future>>,
    pub(super) config: &'a mut Arc<Config<Req, Res, Err, C, Settle>>,
    pub(super) request: &'a mut Option<Req>,
    pub(super) chain: &'a mut LazyChain<Settle::Output>,
}

impl<F, Req, Res, Err, C, Settle> Tiers<'_, F, Req, Res, Err, C, Settle>
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
    /// The primary (while it still runs or settles), the alternates in flight,
    /// the next tier, hedges.
    pub(super) fn poll_tiers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Settle::Output, BoxError>> {
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
    fn chain(&mut self) -> ChainProj<'_, Settle::Output> {
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
    pub(super) fn poll_hedge(&mut self, cx: &mut Context<'_>) -> Hedge<Settle::Output> {
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
    pub(super) fn on_failure(
        &mut self,
        index: usize,
        kind: FailureKind,
        answer: Result<Settle::Output, BoxError>,
    ) -> Option<Result<Settle::Output, BoxError>> {
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
    fn start_next(&mut self) -> Option<Result<Settle::Output, BoxError>> {
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
    fn degrade(&mut self, index: usize, mut out: Settle::Output) -> Settle::Output {
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
pub(super) enum Hedge<Out> {
    /// Not (yet) hedging.
    No,
    /// The next tier was started.
    Started,
    /// The final responder answered.
    Final(Result<Out, BoxError>),
}
