use std::sync::Arc;
use std::time::Duration;

use crate::classify::FailureKind;

/// The observer a [`Batch`](super::Batch) calls as it makes progress.
pub(crate) type ProgressFn = Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

/// One step of a batch, as seen by the observer given to
/// [`Batch::on_progress`](super::Batch::on_progress).
///
/// Every item produces exactly one finishing event ([`ProgressEvent::Succeeded`],
/// [`ProgressEvent::Failed`] or [`ProgressEvent::Unfinished`]), so `finished`
/// reaches `total` when the batch is done; [`ProgressEvent::Retrying`] may come
/// before it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Progress<'a> {
    /// The batch id, if the batch has one.
    pub batch_id: Option<&'a str>,
    /// The item's key.
    pub key: &'a str,
    /// The item's position in the batch.
    pub index: usize,
    /// What happened.
    pub event: ProgressEvent,
    /// Items finished so far, this one included.
    pub finished: usize,
    /// Items in the batch.
    pub total: usize,
}

/// What happened to one item.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressEvent {
    /// The item succeeded (`cached`: taken from the store, no call made).
    Succeeded {
        /// Calls made for it in this run.
        attempts: u32,
        /// It came from the idempotency store.
        cached: bool,
    },
    /// The item failed for good.
    Failed {
        /// Why its last attempt failed.
        kind: FailureKind,
        /// The kind is never retried.
        fatal: bool,
        /// Calls made for it.
        attempts: u32,
    },
    /// The item failed with a retryable kind and will be sent again after `delay`.
    Retrying {
        /// Why the attempt failed.
        kind: FailureKind,
        /// Calls made so far.
        attempts: u32,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// The batch deadline passed before the item finished.
    Unfinished {
        /// Calls started for it.
        attempts: u32,
    },
}

impl ProgressEvent {
    /// `true` for the events that finish an item.
    pub const fn is_finished(&self) -> bool {
        !matches!(self, ProgressEvent::Retrying { .. })
    }
}
