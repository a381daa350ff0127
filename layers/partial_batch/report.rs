use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::FailureKind;

/// The answer of a [`PartialBatch`](super::PartialBatch) service: one
/// [`ItemReport`] per item, in input order, plus counts.
///
/// A batch where items failed is still a successful call: look at the counts or at
/// each item. The counts partition the batch: `ok + failed == items.len()`, where
/// `cached` counts the successes taken from the store and `unfinished` the failures
/// the batch deadline cut short.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchReport<Res> {
    /// The batch id, if the batch had one.
    pub batch_id: Option<String>,
    /// One report per item, in input order.
    pub items: Vec<ItemReport<Res>>,
    /// Items with a response (called now or taken from the store).
    pub ok: usize,
    /// Items without a response: failed, or unfinished at the deadline.
    pub failed: usize,
    /// Of the `ok` items, those taken from the store without a call.
    pub cached: usize,
    /// Of the `failed` items, those the deadline cut short.
    pub unfinished: usize,
    /// Items whose success could not be recorded in the store (a re-run sends
    /// them again).
    pub unrecorded: usize,
    /// Wall time of the batch, store look-ups included.
    pub duration: Duration,
}

impl<Res> BatchReport<Res> {
    pub(crate) fn new(
        batch_id: Option<String>,
        items: Vec<ItemReport<Res>>,
        unrecorded: usize,
        duration: Duration,
    ) -> Self {
        let ok = items.iter().filter(|i| i.is_ok()).count();
        let cached = items.iter().filter(|i| i.from_store).count();
        let unfinished = items.iter().filter(|i| i.outcome.is_unfinished()).count();
        Self {
            batch_id,
            failed: items.len() - ok,
            items,
            ok,
            cached,
            unfinished,
            unrecorded,
            duration,
        }
    }

    /// `true` when every item has a response.
    pub fn all_ok(&self) -> bool {
        self.failed == 0
    }

    /// The report of the item with this key.
    pub fn get(&self, key: &str) -> Option<&ItemReport<Res>> {
        self.items.iter().find(|i| i.key == key)
    }

    /// The items without a response.
    pub fn failures(&self) -> impl Iterator<Item = &ItemReport<Res>> {
        self.items.iter().filter(|i| !i.is_ok())
    }

    /// `(key, response)` for every item with a response, in input order.
    pub fn responses(&self) -> impl Iterator<Item = (&str, &Res)> {
        self.items
            .iter()
            .filter_map(|i| i.response().map(|r| (i.key.as_str(), r)))
    }
}

/// What became of one item.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ItemReport<Res> {
    /// The item's key.
    pub key: String,
    /// Its outcome.
    pub outcome: ItemOutcome<Res>,
    /// Calls to the inner service made for it in this run (0 when cached or never
    /// started).
    pub attempts: u32,
    /// The response came from the idempotency store, without a call.
    pub from_store: bool,
}

impl<Res> ItemReport<Res> {
    /// `true` when the item has a response.
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, ItemOutcome::Success(_))
    }

    /// The response, if the item succeeded.
    pub fn response(&self) -> Option<&Res> {
        match &self.outcome {
            ItemOutcome::Success(res) => Some(res),
            _ => None,
        }
    }

    /// The failure of its last attempt, if it has no response.
    pub fn failure(&self) -> Option<&ItemFailure> {
        match &self.outcome {
            ItemOutcome::Failed(failure) => Some(failure),
            ItemOutcome::TimedOut { last_failure } => last_failure.as_ref(),
            _ => None,
        }
    }
}

/// The outcome of one item.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ItemOutcome<Res> {
    /// The inner service's response (or the stored one).
    Success(Res),
    /// The item failed for good: a fatal kind, retries used up, or the inner
    /// service stopped being usable.
    Failed(ItemFailure),
    /// The batch deadline passed before the item was sent.
    NotAttempted,
    /// The batch deadline passed while the item was in flight or waiting to retry.
    TimedOut {
        /// Why its last finished attempt failed, if one did.
        last_failure: Option<ItemFailure>,
    },
    /// Not finished yet (a batch run as jobs, see `jobs`): waiting for a
    /// worker, or held by one (`in_flight`).
    InProgress {
        /// A worker holds it now.
        in_flight: bool,
    },
}

impl<Res> ItemOutcome<Res> {
    /// `true` for the outcomes of the batch deadline, and for items of a batch
    /// run as jobs that are not finished yet.
    pub fn is_unfinished(&self) -> bool {
        matches!(
            self,
            ItemOutcome::NotAttempted
                | ItemOutcome::TimedOut { .. }
                | ItemOutcome::InProgress { .. }
        )
    }
}

/// Why an item failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailure {
    /// The classified kind.
    pub kind: FailureKind,
    /// The error's message (or, for a response classified as a failure, a
    /// description of it).
    pub message: String,
    /// The kind is never retried under the layer's policy (a re-run will fail
    /// the same way unless the request changes).
    pub fatal: bool,
}
