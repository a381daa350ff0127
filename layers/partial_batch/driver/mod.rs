//! The engine of one batch: dispatches items to the inner service within the
//! concurrency limit and its readiness, retries, pauses on `Retry-After`, enforces
//! the deadline, and records successes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

mod settle;

use super::batch::BatchItem;
use super::builder::Config;
use super::progress::ProgressFn;
use super::report::{BatchReport, ItemFailure, ItemOutcome, ItemReport};
use super::store::{ResponseStore, StoreError, StoredSuccess};
use crate::classify::Classify;

pin_project! {
    /// One call of the inner service, tagged with its item, in its
    /// `batch_item` span.
    struct Attempt<F> {
        index: usize,
        #[pin]
        call: F,
        span: tracing::Span,
    }
}

impl<F: Future> Future for Attempt<F> {
    type Output = (usize, F::Output, tracing::Span);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = {
            let _entered = this.span.enter();
            ready!(this.call.poll(cx))
        };
        Poll::Ready((
            *this.index,
            output,
            std::mem::replace(this.span, tracing::Span::none()),
        ))
    }
}

type StoreWrite = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

struct Slot<Req, Res> {
    key: String,
    /// Dropped once the item needs no more attempts.
    request: Option<Req>,
    attempts: u32,
    last_failure: Option<ItemFailure>,
    outcome: Option<ItemOutcome<Res>>,
    from_store: bool,
}

pub(crate) struct Driver<S: Service<Req>, Req, C, St> {
    inner: S,
    classifier: C,
    config: Config,
    store: St,
    rng: fastrand::Rng,
    batch_id: Option<Arc<str>>,
    progress: Option<ProgressFn>,
    slots: Vec<Slot<Req, S::Response>>,
    /// Items never sent, in input order.
    fresh: VecDeque<usize>,
    /// Items whose backoff is over; sent before fresh ones so started items finish.
    due: VecDeque<usize>,
    /// Items waiting out a backoff, earliest first.
    waiting: BinaryHeap<Reverse<(Instant, usize)>>,
    in_flight: FuturesUnordered<Attempt<S::Future>>,
    store_writes: FuturesUnordered<StoreWrite>,
    /// No item is sent before this (a server's `Retry-After`).
    paused_until: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
    service_failed: bool,
    finished: usize,
    unrecorded: usize,
}

impl<S, Req, C, St> Driver<S, Req, C, St>
where
    S: Service<Req>,
    S::Error: fmt::Display,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    St: ResponseStore<S::Response>,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        inner: S,
        classifier: C,
        config: Config,
        store: St,
        rng: fastrand::Rng,
        batch_id: Option<Arc<str>>,
        items: Vec<BatchItem<Req>>,
        progress: Option<ProgressFn>,
        deadline_at: Option<Instant>,
    ) -> Self {
        let slots: Vec<_> = items
            .into_iter()
            .map(|item| Slot {
                key: item.key,
                request: Some(item.request),
                attempts: 0,
                last_failure: None,
                outcome: None,
                from_store: false,
            })
            .collect();
        Self {
            fresh: (0..slots.len()).collect(),
            slots,
            inner,
            classifier,
            config,
            store,
            rng,
            batch_id,
            progress,
            due: VecDeque::new(),
            waiting: BinaryHeap::new(),
            in_flight: FuturesUnordered::new(),
            store_writes: FuturesUnordered::new(),
            paused_until: None,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            timer_at: None,
            deadline: deadline_at.map(|at| Box::pin(tokio::time::sleep_until(at))),
            expired: false,
            service_failed: false,
            finished: 0,
            unrecorded: 0,
        }
    }

    /// Mark the items the store already has as cached successes.
    pub(crate) fn apply_stored(&mut self, mut stored: HashMap<String, StoredSuccess>) {
        if stored.is_empty() {
            return;
        }
        let mut fresh = VecDeque::with_capacity(self.fresh.len());
        for index in std::mem::take(&mut self.fresh) {
            let Some(success) = stored.remove(&self.slots[index].key) else {
                fresh.push_back(index);
                continue;
            };
            match self.store.decode(&success.response_json) {
                Ok(response) => {
                    self.slots[index].from_store = true;
                    self.finish(index, ItemOutcome::Success(response));
                }
                Err(err) => {
                    tracing::warn!(index, error = %err, "stored response unreadable; sending the item again");
                    fresh.push_back(index);
                }
            }
        }
        self.fresh = fresh;
    }

    /// Drive the batch; ready when every item is finished and recorded.
    pub(crate) fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.expired {
            if self.deadline_passed(cx) {
                // Keep what finished right at the deadline, send nothing new.
                self.harvest(cx);
                self.expire();
            } else {
                self.drive(cx);
            }
        }
        while let Poll::Ready(Some(written)) = self.store_writes.poll_next_unpin(cx) {
            if let Err(err) = written {
                self.unrecorded += 1;
                metrics::counter!("partial_batch_store_errors_total").increment(1);
                tracing::warn!(error = %err, "could not record a success; a re-run will send it again");
            }
        }
        if !self.store_writes.is_empty() && self.deadline_passed(cx) {
            // The deadline bounds the store too: a write still pending is given up.
            let abandoned = self.store_writes.len();
            self.store_writes.clear();
            self.unrecorded += abandoned;
            metrics::counter!("partial_batch_store_errors_total").increment(abandoned as u64);
            tracing::warn!(
                abandoned,
                "the store did not record in time; a re-run will send these again"
            );
        }
        if self.finished == self.slots.len() && self.store_writes.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }

    pub(crate) fn into_report(self, duration: Duration) -> BatchReport<S::Response> {
        let items = self
            .slots
            .into_iter()
            .map(|slot| ItemReport {
                key: slot.key,
                outcome: slot.outcome.unwrap_or(ItemOutcome::NotAttempted),
                attempts: slot.attempts,
                from_store: slot.from_store,
            })
            .collect();
        let batch_id = self.batch_id.map(|id| id.to_string());
        BatchReport::new(batch_id, items, self.unrecorded, duration)
    }

    fn drive(&mut self, cx: &mut Context<'_>) {
        loop {
            let mut progressed = self.harvest(cx);
            let now = Instant::now();
            while let Some(&Reverse((at, index))) = self.waiting.peek() {
                if at > now {
                    break;
                }
                self.waiting.pop();
                self.due.push_back(index);
            }
            if self.paused_until.is_some_and(|until| until <= now) {
                self.paused_until = None;
            }
            while self.paused_until.is_none()
                && !self.service_failed
                && self.in_flight.len() < self.config.concurrency
                && !(self.due.is_empty() && self.fresh.is_empty())
            {
                // Ask for readiness only with an item in hand: a reservation (a
                // permit, a connection) is never held idle.
                match self.inner.poll_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(err)) => self.fail_service(err),
                    Poll::Ready(Ok(())) => {
                        let index = self.due.pop_front().or_else(|| self.fresh.pop_front());
                        self.dispatch(index.expect("checked non-empty"));
                        progressed = true;
                    }
                }
            }
            if let Some(at) = self.next_wake() {
                if self.timer_at != Some(at) {
                    self.timer.as_mut().reset(at);
                    self.timer_at = Some(at);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.timer_at = None;
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Take every finished call. `true` if there was one.
    fn harvest(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        while let Poll::Ready(Some((index, result, span))) = self.in_flight.poll_next_unpin(cx) {
            self.on_result(index, result, &span);
            any = true;
        }
        any
    }

    /// When something waiting on time can next move.
    fn next_wake(&self) -> Option<Instant> {
        let backoff_over = self.waiting.peek().map(|Reverse((at, _))| *at);
        let has_queued = !(self.due.is_empty() && self.fresh.is_empty());
        let pause_over = self
            .paused_until
            .filter(|_| has_queued && !self.service_failed);
        match (backoff_over, pause_over) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn dispatch(&mut self, index: usize) {
        let last_try = self.slots[index].attempts + 1 >= self.config.max_attempts;
        let slot = &mut self.slots[index];
        slot.attempts += 1;
        let request = if last_try {
            slot.request.take()
        } else {
            slot.request.clone()
        };
        let span = tracing::debug_span!(
            "batch_item",
            llm.batch.id = self.batch_id.as_deref(),
            llm.batch.item_key = %slot.key,
            llm.attempt = slot.attempts,
            error.type = tracing::field::Empty,
        );
        let call = span.in_scope(|| {
            self.inner
                .call(request.expect("a queued item keeps its request"))
        });
        self.in_flight.push(Attempt { index, call, span });
    }
}
