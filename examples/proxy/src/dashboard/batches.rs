//! The summaries of the last [`RECENT_BATCHES`] batches this process ran
//! (`GET /v1/admin/batches`): the batch store keeps answers for re-runs, not a
//! list of runs, so the dashboard's "recent batches" come from here. In
//! memory, per process; a ring, so it never grows.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How many batch summaries are kept.
pub(crate) const RECENT_BATCHES: usize = 20;

/// One batch run, as the dashboard lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct BatchSummary {
    /// The client's `batch_id` (`None`: an unnamed batch).
    pub(crate) batch_id: Option<String>,
    /// The client key id that sent it (`-`: no client keys).
    pub(crate) client: String,
    /// Items in the batch.
    pub(crate) items: usize,
    pub(crate) ok: usize,
    pub(crate) failed: usize,
    /// Successes taken from an earlier run of the same `batch_id`.
    pub(crate) cached: usize,
    /// Items neither answered nor failed (the batch's time ran out).
    pub(crate) unfinished: usize,
    pub(crate) duration_ms: u64,
    /// When it finished (RFC 3339, seconds).
    pub(crate) finished_at: String,
}

impl BatchSummary {
    /// A summary of a batch that finished now.
    pub(crate) fn finished_now(
        batch_id: Option<String>,
        client: String,
        counts: [usize; 5],
        took: Duration,
    ) -> Self {
        let [items, ok, failed, cached, unfinished] = counts;
        Self {
            batch_id,
            client,
            items,
            ok,
            failed,
            cached,
            unfinished,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            finished_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

/// An asynchronous batch this process accepted, as the dashboard lists it
/// (its progress is read from the job store when listed).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct AsyncSubmission {
    /// The client's batch id.
    pub(crate) batch_id: String,
    /// The client key id that sent it (`-`: no client keys).
    pub(crate) client: String,
    /// Jobs pushed, items already done, items a worker held.
    pub(crate) pushed: usize,
    pub(crate) already_done: usize,
    pub(crate) running: usize,
    /// When it was accepted (RFC 3339, seconds).
    pub(crate) submitted_at: String,
    /// The batch's id in the job store (not shown).
    #[serde(skip)]
    pub(crate) store_id: String,
}

/// The rings of recent batch summaries and asynchronous submissions.
#[derive(Debug, Default)]
pub(crate) struct RecentBatches {
    ring: Mutex<VecDeque<BatchSummary>>,
    submissions: Mutex<VecDeque<AsyncSubmission>>,
}

impl RecentBatches {
    /// Keep `summary`; the oldest goes when [`RECENT_BATCHES`] are kept.
    pub(crate) fn record(&self, summary: BatchSummary) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= RECENT_BATCHES {
            ring.pop_front();
        }
        ring.push_back(summary);
    }

    /// Keep `submission` (a batch submitted again replaces its older entry);
    /// the oldest goes when [`RECENT_BATCHES`] are kept.
    pub(crate) fn record_submission(&self, submission: AsyncSubmission) {
        let mut ring = self.submissions.lock().unwrap_or_else(|e| e.into_inner());
        ring.retain(|kept| kept.store_id != submission.store_id);
        if ring.len() >= RECENT_BATCHES {
            ring.pop_front();
        }
        ring.push_back(submission);
    }

    /// The kept asynchronous submissions, newest first.
    pub(crate) fn submissions_newest_first(&self) -> Vec<AsyncSubmission> {
        let ring = self.submissions.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }

    /// The kept summaries, newest first.
    pub(crate) fn newest_first(&self) -> Vec<BatchSummary> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_twenty_newest_first() {
        let recent = RecentBatches::default();
        for i in 0..RECENT_BATCHES + 5 {
            recent.record(BatchSummary::finished_now(
                Some(format!("b{i}")),
                "-".into(),
                [1, 1, 0, 0, 0],
                Duration::from_millis(3),
            ));
        }
        let kept = recent.newest_first();
        assert_eq!(kept.len(), RECENT_BATCHES);
        assert_eq!(kept[0].batch_id.as_deref(), Some("b24"));
        assert_eq!(kept[RECENT_BATCHES - 1].batch_id.as_deref(), Some("b5"));
        assert_eq!(kept[0].duration_ms, 3);
    }
}
