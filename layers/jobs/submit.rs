//! [`submit`]: a batch pushed as one job per item.

use std::collections::HashSet;

use apalis_core::backend::TaskSink;
use apalis_core::task::builder::TaskBuilder;

use super::job::ItemJob;
use super::store::JobStore;
use crate::BoxError;

/// What [`submit`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Submitted {
    /// Jobs pushed (items new, failed before, or never finished).
    pub pushed: usize,
    /// Items already done: not pushed again.
    pub already_done: usize,
    /// Items a worker holds now: not pushed again.
    pub running: usize,
}

/// Jobs pushed per call to the storage.
const PUSH_CHUNK: usize = 500;

/// Submits batch `batch_id` as jobs: registers its items in `store`, then pushes
/// one [`ItemJob`] per item that still needs running to `sink` (any apalis
/// storage, e.g. `apalis_redis::RedisStorage<ItemJob<Req>>`).
///
/// Items already done in the store are not pushed again, nor items a worker
/// holds now; items that failed (or were submitted and never finished) are. So
/// submitting the same batch again after a run sends only what did not succeed.
/// Keys must be unique within the batch.
///
/// If pushing fails midway, the error is returned and the items not pushed stay
/// pending in the store: submitting again pushes them.
pub async fn submit<Req, B, K>(
    sink: &mut B,
    store: &dyn JobStore,
    batch_id: &str,
    items: Vec<(String, Req)>,
) -> Result<Submitted, BoxError>
where
    B: TaskSink<ItemJob<Req>, K>,
    B::Error: std::fmt::Display,
    Req: Send,
{
    submit_with(sink, store, batch_id, items, || async { Ok(()) }).await
}

/// [`submit`] to an `apalis_redis` storage: after each chunk pushed, its due
/// jobs are moved to the active list a thousand at a time (see
/// [`promote_due`](super::promote_due): apalis-redis 1.0.0 workers fail on a
/// backlog of more than about 8,000 due jobs).
#[cfg(feature = "redis")]
pub async fn submit_to_redis<Req>(
    storage: &mut apalis_redis::RedisStorage<ItemJob<Req>>,
    conn: &redis::aio::ConnectionManager,
    config: &apalis_redis::Config,
    store: &dyn JobStore,
    batch_id: &str,
    items: Vec<(String, Req)>,
) -> Result<Submitted, BoxError>
where
    Req: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + Unpin + 'static,
{
    submit_with(storage, store, batch_id, items, || {
        let mut conn = conn.clone();
        async move {
            super::promote_due(&mut conn, config).await?;
            Ok(())
        }
    })
    .await
}

async fn submit_with<Req, B, K, F, Fut>(
    sink: &mut B,
    store: &dyn JobStore,
    batch_id: &str,
    items: Vec<(String, Req)>,
    mut after_chunk: F,
) -> Result<Submitted, BoxError>
where
    B: TaskSink<ItemJob<Req>, K>,
    B::Error: std::fmt::Display,
    Req: Send,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let mut seen = HashSet::with_capacity(items.len());
    if let Some((key, _)) = items.iter().find(|(key, _)| !seen.insert(key.as_str())) {
        return Err(format!("the key {key:?} is used twice in batch {batch_id:?}").into());
    }
    drop(seen);
    let keys: Vec<String> = items.iter().map(|(key, _)| key.clone()).collect();
    let opened = store.open(batch_id, &keys).await?;
    let wanted: HashSet<&str> = opened.to_submit.iter().map(String::as_str).collect();
    let mut tasks = Vec::with_capacity(wanted.len().min(PUSH_CHUNK));
    let mut pushed = 0;
    for (key, request) in items {
        if !wanted.contains(key.as_str()) {
            continue;
        }
        tasks.push(
            TaskBuilder::new(ItemJob {
                batch_id: batch_id.to_owned(),
                key,
                request,
            })
            .build(),
        );
        if tasks.len() == PUSH_CHUNK {
            pushed += tasks.len();
            push(sink, std::mem::take(&mut tasks)).await?;
            after_chunk().await?;
        }
    }
    pushed += tasks.len();
    push(sink, tasks).await?;
    after_chunk().await?;
    Ok(Submitted {
        pushed,
        already_done: opened.already_done,
        running: opened.running,
    })
}

async fn push<Req, B, K>(
    sink: &mut B,
    tasks: Vec<apalis_core::task::Task<ItemJob<Req>>>,
) -> Result<(), BoxError>
where
    B: TaskSink<ItemJob<Req>, K>,
    B::Error: std::fmt::Display,
    Req: Send,
{
    if tasks.is_empty() {
        return Ok(());
    }
    sink.push_all(futures_util::stream::iter(tasks))
        .await
        .map_err(|e| format!("pushing jobs: {e}").into())
}
