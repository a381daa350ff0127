//! Settling items: classify each answer, then succeed, retry, or fail it.

use std::cmp::Reverse;
use std::fmt;

use tokio::time::Instant;
use tower_service::Service;

use super::Driver;
use crate::classify::{cap_retry_after, Classify, FailureKind, Outcome};
use crate::partial_batch::progress::{Progress, ProgressEvent};
use crate::partial_batch::report::{ItemFailure, ItemOutcome};
use crate::partial_batch::store::{ResponseStore, StoredSuccess};

impl<S, Req, C, St> Driver<S, Req, C, St>
where
    S: Service<Req>,
    S::Error: fmt::Display,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    St: ResponseStore<S::Response>,
{
    /// Settle one call's `result`; `span` is its `batch_item` span.
    pub(super) fn on_result(
        &mut self,
        index: usize,
        result: Result<S::Response, S::Error>,
        span: &tracing::Span,
    ) {
        let outcome = self.classifier.classify(&result);
        if let Outcome::Failure(kind) = &outcome {
            span.record("error.type", kind.name());
        }
        match (outcome, result) {
            (Outcome::Success, Ok(response)) => self.succeed(index, response),
            (Outcome::Failure(kind), Ok(_)) => {
                let message = format!("response classified as {kind}");
                self.fail(index, kind, message);
            }
            (Outcome::Failure(kind), Err(err)) => self.fail(index, kind, err.to_string()),
            // A classifier that calls an error a success leaves no response to report.
            (Outcome::Success, Err(err)) => self.fail(index, FailureKind::Other, err.to_string()),
        }
    }

    pub(super) fn succeed(&mut self, index: usize, response: S::Response) {
        if let (Some(batch_id), Some(store)) = (&self.batch_id, self.store.store()) {
            match self.store.encode(&response) {
                Ok(response_json) => {
                    let (store, batch_id) = (store.clone(), batch_id.clone());
                    let key = self.slots[index].key.clone();
                    let success = StoredSuccess {
                        response_json,
                        attempts: self.slots[index].attempts,
                    };
                    self.store_writes.push(Box::pin(async move {
                        store.record(&batch_id, &key, success).await
                    }));
                }
                Err(err) => {
                    self.unrecorded += 1;
                    tracing::warn!(index, error = %err, "could not serialise a response for the store");
                }
            }
        }
        self.finish(index, ItemOutcome::Success(response));
    }

    pub(super) fn fail(&mut self, index: usize, kind: FailureKind, message: String) {
        let retryable = self.config.policy.is_retryable(&kind);
        let attempts = self.slots[index].attempts;
        let failure = ItemFailure {
            kind,
            message,
            fatal: !retryable,
        };
        if !retryable || attempts >= self.config.max_attempts || self.service_failed {
            tracing::debug!(
                index,
                attempts,
                kind = failure.kind.name(),
                fatal = failure.fatal,
                "item failed"
            );
            self.finish(index, ItemOutcome::Failed(failure));
            return;
        }
        let backoff = self.config.backoff.delay(attempts, &mut self.rng);
        // Parsed waits are capped already; a custom classifier's are capped here, so
        // no value can overflow an `Instant` or pause the batch beyond the ceiling.
        let server_wait = failure.kind.retry_after().map(cap_retry_after);
        let delay = server_wait.map_or(backoff, |wait| wait.max(backoff));
        let now = Instant::now();
        if let Some(wait) = server_wait {
            let until = later(now, wait);
            if self.paused_until.is_none_or(|current| current < until) {
                tracing::info!(
                    ?wait,
                    kind = failure.kind.name(),
                    "server asked to wait; pausing dispatch"
                );
                metrics::counter!("partial_batch_pauses_total").increment(1);
                self.paused_until = Some(until);
            }
        }
        tracing::debug!(
            index,
            attempts,
            ?delay,
            kind = failure.kind.name(),
            "retrying item"
        );
        metrics::counter!("partial_batch_retries_total", "kind" => failure.kind.name())
            .increment(1);
        self.waiting.push(Reverse((later(now, delay), index)));
        let event = ProgressEvent::Retrying {
            kind: failure.kind.clone(),
            attempts,
            delay,
        };
        self.slots[index].last_failure = Some(failure);
        self.emit(index, event);
    }

    /// The inner service cannot be used any more: fail everything not in flight.
    pub(super) fn fail_service(&mut self, err: S::Error) {
        let message = format!("inner service failed: {err}");
        let kind = match self.classifier.classify(&Err(err)) {
            Outcome::Failure(kind) => kind,
            Outcome::Success => FailureKind::Other,
        };
        tracing::warn!(
            kind = kind.name(),
            "inner service not usable; failing the items not yet sent"
        );
        self.service_failed = true;
        let fatal = !self.config.policy.is_retryable(&kind);
        let stranded: Vec<usize> = self
            .due
            .drain(..)
            .chain(self.fresh.drain(..))
            .chain(self.waiting.drain().map(|Reverse((_, index))| index))
            .collect();
        for index in stranded {
            let failure = ItemFailure {
                kind: kind.clone(),
                message: message.clone(),
                fatal,
            };
            self.finish(index, ItemOutcome::Failed(failure));
        }
    }

    /// The deadline passed: cancel calls in flight, report what did not finish.
    pub(super) fn expire(&mut self) {
        self.expired = true;
        self.in_flight.clear();
        self.due.clear();
        self.fresh.clear();
        self.waiting.clear();
        let mut cut = 0;
        for index in 0..self.slots.len() {
            if self.slots[index].outcome.is_some() {
                continue;
            }
            cut += 1;
            let slot = &mut self.slots[index];
            let outcome = if slot.attempts == 0 {
                ItemOutcome::NotAttempted
            } else {
                ItemOutcome::TimedOut {
                    last_failure: slot.last_failure.take(),
                }
            };
            self.finish(index, outcome);
        }
        tracing::warn!(unfinished = cut, "batch deadline passed");
    }

    pub(super) fn finish(&mut self, index: usize, outcome: ItemOutcome<S::Response>) {
        let slot = &mut self.slots[index];
        slot.request = None;
        let (event, label) = match &outcome {
            ItemOutcome::Success(_) => (
                ProgressEvent::Succeeded {
                    attempts: slot.attempts,
                    cached: slot.from_store,
                },
                if slot.from_store { "cached" } else { "ok" },
            ),
            ItemOutcome::Failed(failure) => (
                ProgressEvent::Failed {
                    kind: failure.kind.clone(),
                    fatal: failure.fatal,
                    attempts: slot.attempts,
                },
                "failed",
            ),
            ItemOutcome::NotAttempted
            | ItemOutcome::TimedOut { .. }
            | ItemOutcome::InProgress { .. } => (
                ProgressEvent::Unfinished {
                    attempts: slot.attempts,
                },
                "unfinished",
            ),
        };
        slot.outcome = Some(outcome);
        self.finished += 1;
        metrics::counter!("partial_batch_items_total", "result" => label).increment(1);
        self.emit(index, event);
    }

    pub(super) fn emit(&self, index: usize, event: ProgressEvent) {
        if let Some(observer) = &self.progress {
            observer(&Progress {
                batch_id: self.batch_id.as_deref(),
                key: &self.slots[index].key,
                index,
                event,
                finished: self.finished,
                total: self.slots.len(),
            });
        }
    }
}

/// `now + wait`, saturating far in the future instead of panicking.
fn later(now: Instant, wait: std::time::Duration) -> Instant {
    now.checked_add(wait)
        .unwrap_or_else(|| now + crate::partial_batch::MAX_DURATION)
}
