//! [`report`]: a distributed batch's report, assembled from the store.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::store::{ItemState, JobStore, Progress};
use crate::partial_batch::{BatchReport, ItemOutcome, ItemReport, StoreError};

/// Items read per page while assembling a report.
const PAGE: usize = 1000;

/// A batch run as jobs: the same [`BatchReport`] as an in-process batch (one
/// [`ItemReport`] per item, in key order; items not finished yet are
/// [`ItemOutcome::InProgress`] and counted in `unfinished`), plus its
/// [`Progress`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct JobBatchReport<Res> {
    /// The items and their counts.
    pub report: BatchReport<Res>,
    /// Done, failed, pending, in flight.
    pub progress: Progress,
}

/// The report of `batch_id` (`None`: unknown to the store), reading at most
/// `max_items` items (the report says how many there are in all through
/// `progress.total`). Responses are read back from their JSON as `Res`.
///
/// Each item's `attempts` counts calls over every run; `from_store` is
/// `false` (every response came from a worker).
pub async fn report<Res: DeserializeOwned>(
    store: &dyn JobStore,
    batch_id: &str,
    max_items: usize,
) -> Result<Option<JobBatchReport<Res>>, StoreError> {
    let Some(progress) = store.progress(batch_id).await? else {
        return Ok(None);
    };
    let mut items = Vec::with_capacity(progress.total.min(max_items));
    let mut after: Option<String> = None;
    while items.len() < max_items {
        let page = store
            .items(
                batch_id,
                after.as_deref(),
                PAGE.min(max_items - items.len()),
            )
            .await?;
        for (key, state) in page.items {
            items.push(item_report(key, state)?);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(Some(JobBatchReport {
        report: BatchReport::new(Some(batch_id.to_owned()), items, 0, Duration::ZERO),
        progress,
    }))
}

fn item_report<Res: DeserializeOwned>(
    key: String,
    state: ItemState,
) -> Result<ItemReport<Res>, StoreError> {
    let attempts = state.attempts();
    let outcome = match state {
        ItemState::Pending { .. } => ItemOutcome::InProgress { in_flight: false },
        ItemState::Running { .. } => ItemOutcome::InProgress { in_flight: true },
        ItemState::Done { response_json, .. } => ItemOutcome::Success(
            serde_json::from_str(&response_json)
                .map_err(|e| StoreError::new(format!("item {key:?}: unreadable response: {e}")))?,
        ),
        ItemState::Failed { failure, .. } => ItemOutcome::Failed(failure),
    };
    Ok(ItemReport {
        key,
        outcome,
        attempts,
        from_store: false,
    })
}
