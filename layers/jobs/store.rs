//! [`JobStore`]: where a distributed batch keeps its items' states, results,
//! claims and pause, shared by the submitter, every worker and the report.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::partial_batch::{ItemFailure, StoreError, StoreFuture};

/// The longest batch id or item key, in bytes.
pub const JOB_MAX_KEY: usize = 512;

/// The most items one [`JobStore::items`] page holds.
pub const JOB_MAX_PAGE: usize = 1000;

/// One item's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ItemState {
    /// Submitted, not started (or given back).
    Pending {
        /// Calls made for it so far, all runs together.
        attempts: u32,
    },
    /// A worker holds it until `lease_until` (renewed while it works); past
    /// that, another worker may take it over.
    Running {
        /// The worker holding it.
        worker: String,
        /// When its lease runs out, in Unix milliseconds.
        lease_until_ms: u64,
        /// Calls made for it so far.
        attempts: u32,
    },
    /// Succeeded: its response (JSON), recorded once.
    Done {
        /// The response, as JSON.
        response_json: String,
        /// Calls made for it.
        attempts: u32,
    },
    /// Failed for good in its last run (fatal, or retries used up); a
    /// re-submission runs it again.
    Failed {
        /// Why.
        failure: ItemFailure,
        /// Calls made for it.
        attempts: u32,
    },
}

impl ItemState {
    /// Calls made for the item so far.
    pub fn attempts(&self) -> u32 {
        match self {
            ItemState::Pending { attempts }
            | ItemState::Running { attempts, .. }
            | ItemState::Done { attempts, .. }
            | ItemState::Failed { attempts, .. } => *attempts,
        }
    }
}

/// What [`JobStore::open`] found: the keys to submit (not done, not running
/// under a live lease), and how many it left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Opened {
    /// The keys to push as jobs, in the order given.
    pub to_submit: Vec<String>,
    /// Keys already done (not submitted again).
    pub already_done: usize,
    /// Keys a worker is running now (not submitted again).
    pub running: usize,
}

/// What [`JobStore::claim`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The item is this worker's until its lease runs out: run it. The claim
    /// counts the call it is for.
    Claimed {
        /// Calls made for it before this claim.
        attempts: u32,
        /// How long its batch is still paused (zero: not paused): wait that
        /// long before the call.
        paused_for: Duration,
    },
    /// Already done: do not call again.
    Done,
    /// Failed for good in this run: do not call again.
    Failed,
    /// Another worker holds it for this long yet.
    Held(Duration),
    /// Not part of the batch (never opened, or expired).
    Unknown,
}

/// How far a batch has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Progress {
    /// Items in the batch.
    pub total: usize,
    /// Succeeded.
    pub done: usize,
    /// Failed for good.
    pub failed: usize,
    /// Not started.
    pub pending: usize,
    /// Held by a worker (a dead worker's items stay here until another takes
    /// them over).
    pub in_flight: usize,
}

impl Progress {
    /// Every item done or failed.
    pub fn is_finished(&self) -> bool {
        self.done + self.failed == self.total
    }
}

/// One page of a batch's items, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ItemsPage {
    /// `(key, state)`, sorted by key.
    pub items: Vec<(String, ItemState)>,
    /// The key to pass as `after` for the next page (`None`: the last page).
    pub next: Option<String>,
}

/// Where a distributed batch keeps its state, shared by the submitter, the
/// workers and whoever reads the report. Every transition is atomic, so that a
/// job delivered twice (apalis delivers at least once) calls the upstream at
/// most once while the first delivery holds it, and records one result.
///
/// Implementations: [`MemoryJobStore`] (one process), `redis::RedisJobStore`
/// (every worker on one Redis) and, with the `postgres` feature,
/// `postgres::PostgresJobStore` (every worker on one PostgreSQL).
pub trait JobStore: fmt::Debug + Send + Sync + 'static {
    /// Adds `keys` to batch `batch` (creating it): new and failed keys become
    /// pending and are returned to be submitted; done keys and keys running
    /// under a live lease are left alone.
    fn open<'a>(&'a self, batch: &'a str, keys: &'a [String]) -> StoreFuture<'a, Opened>;

    /// Takes item `key` for `worker` for `lease` (if not done, failed, or held
    /// by another under a live lease), counting one call for it, and says how
    /// long the batch is still paused: one round trip before a first call.
    fn claim<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        worker: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Claim>;

    /// Extends `worker`'s lease on `key`, and counts one more call
    /// (`called`). `false`: the lease was lost (taken over, or the item
    /// finished elsewhere).
    fn renew<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        worker: &'a str,
        lease: Duration,
        called: bool,
    ) -> StoreFuture<'a, bool>;

    /// Records the item's success (its response as JSON). `false`: it was
    /// already done (this result is not kept).
    fn succeed<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        response_json: &'a str,
        attempts: u32,
    ) -> StoreFuture<'a, bool>;

    /// Records that the item failed for good. `false`: it was already done.
    fn fail<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        failure: &'a ItemFailure,
        attempts: u32,
    ) -> StoreFuture<'a, bool>;

    /// Gives the item back (pending) if `worker` still holds it.
    fn release<'a>(&'a self, batch: &'a str, key: &'a str, worker: &'a str) -> StoreFuture<'a, ()>;

    /// No worker starts a call for `batch` before `until` (a later pause wins).
    fn pause<'a>(&'a self, batch: &'a str, until: SystemTime) -> StoreFuture<'a, ()>;

    /// Until when `batch` is paused, if it is now.
    fn paused_until<'a>(&'a self, batch: &'a str) -> StoreFuture<'a, Option<SystemTime>>;

    /// How far `batch` has come (`None`: unknown batch).
    fn progress<'a>(&'a self, batch: &'a str) -> StoreFuture<'a, Option<Progress>>;

    /// At most `limit` items of `batch` (clamped to 1 to [`JOB_MAX_PAGE`])
    /// with keys after `after`, in key order.
    fn items<'a>(
        &'a self,
        batch: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, ItemsPage>;
}

pub(crate) fn check_key(what: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > JOB_MAX_KEY {
        return Err(StoreError::new(format!(
            "a {what} must be 1 to {JOB_MAX_KEY} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn lease_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A [`JobStore`] in this process's memory: for workers that share one
/// process, and for tests. Time is the system clock.
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    batches: Mutex<HashMap<String, MemoryBatch>>,
}

#[derive(Debug, Default)]
struct MemoryBatch {
    items: std::collections::BTreeMap<String, ItemState>,
    paused_until_ms: u64,
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, MemoryBatch>) -> T) -> T {
        let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut batches)
    }
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

impl JobStore for MemoryJobStore {
    fn open<'a>(&'a self, batch: &'a str, keys: &'a [String]) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            check_key("batch id", batch)?;
            for key in keys {
                check_key("item key", key)?;
            }
            let now = now_ms();
            Ok(self.with(|batches| {
                let items = &mut batches.entry(batch.to_owned()).or_default().items;
                let mut opened = Opened::default();
                for key in keys {
                    match items.get(key) {
                        Some(ItemState::Done { .. }) => opened.already_done += 1,
                        Some(ItemState::Running { lease_until_ms, .. })
                            if *lease_until_ms > now =>
                        {
                            opened.running += 1
                        }
                        other => {
                            let attempts = other.map_or(0, ItemState::attempts);
                            items.insert(key.clone(), ItemState::Pending { attempts });
                            opened.to_submit.push(key.clone());
                        }
                    }
                }
                opened
            }))
        })
    }

    fn claim<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        worker: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let now = now_ms();
            let mut paused_ms = None;
            let claim = self.with(|batches| {
                let Some(batch) = batches.get_mut(batch) else {
                    return Claim::Unknown;
                };
                paused_ms = Some(batch.paused_until_ms);
                let Some(state) = batch.items.get_mut(key) else {
                    return Claim::Unknown;
                };
                match state {
                    ItemState::Done { .. } => Claim::Done,
                    ItemState::Failed { .. } => Claim::Failed,
                    ItemState::Running {
                        worker: holder,
                        lease_until_ms,
                        ..
                    } if *lease_until_ms > now && holder != worker => {
                        Claim::Held(Duration::from_millis(*lease_until_ms - now))
                    }
                    _ => {
                        let attempts = state.attempts();
                        *state = ItemState::Running {
                            worker: worker.to_owned(),
                            lease_until_ms: now.saturating_add(lease_ms(lease)),
                            attempts: attempts.saturating_add(1),
                        };
                        Claim::Claimed {
                            attempts,
                            paused_for: Duration::ZERO,
                        }
                    }
                }
            });
            Ok(match claim {
                Claim::Claimed { attempts, .. } => Claim::Claimed {
                    attempts,
                    paused_for: paused_ms.map_or(Duration::ZERO, |until| {
                        Duration::from_millis(until.saturating_sub(now))
                    }),
                },
                other => other,
            })
        })
    }

    fn renew<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        worker: &'a str,
        lease: Duration,
        called: bool,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = now_ms();
            Ok(self.with(|batches| {
                match batches.get_mut(batch).and_then(|b| b.items.get_mut(key)) {
                    Some(ItemState::Running {
                        worker: holder,
                        lease_until_ms,
                        attempts,
                    }) if holder == worker => {
                        *lease_until_ms = now.saturating_add(lease_ms(lease));
                        *attempts += u32::from(called);
                        true
                    }
                    _ => false,
                }
            }))
        })
    }

    fn succeed<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        response_json: &'a str,
        attempts: u32,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            Ok(self.with(|batches| {
                let items = &mut batches.entry(batch.to_owned()).or_default().items;
                if matches!(items.get(key), Some(ItemState::Done { .. })) {
                    return false;
                }
                items.insert(
                    key.to_owned(),
                    ItemState::Done {
                        response_json: response_json.to_owned(),
                        attempts,
                    },
                );
                true
            }))
        })
    }

    fn fail<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        failure: &'a ItemFailure,
        attempts: u32,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            Ok(self.with(|batches| {
                let items = &mut batches.entry(batch.to_owned()).or_default().items;
                if matches!(items.get(key), Some(ItemState::Done { .. })) {
                    return false;
                }
                items.insert(
                    key.to_owned(),
                    ItemState::Failed {
                        failure: failure.clone(),
                        attempts,
                    },
                );
                true
            }))
        })
    }

    fn release<'a>(&'a self, batch: &'a str, key: &'a str, worker: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.with(|batches| {
                if let Some(state) = batches.get_mut(batch).and_then(|b| b.items.get_mut(key)) {
                    if let ItemState::Running {
                        worker: holder,
                        attempts,
                        ..
                    } = state
                    {
                        if holder == worker {
                            *state = ItemState::Pending {
                                attempts: *attempts,
                            };
                        }
                    }
                }
            });
            Ok(())
        })
    }

    fn pause<'a>(&'a self, batch: &'a str, until: SystemTime) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let until = unix_ms(until);
            self.with(|batches| {
                let batch = batches.entry(batch.to_owned()).or_default();
                batch.paused_until_ms = batch.paused_until_ms.max(until);
            });
            Ok(())
        })
    }

    fn paused_until<'a>(&'a self, batch: &'a str) -> StoreFuture<'a, Option<SystemTime>> {
        Box::pin(async move {
            let now = now_ms();
            Ok(self.with(|batches| {
                let until = batches.get(batch)?.paused_until_ms;
                (until > now).then(|| UNIX_EPOCH + Duration::from_millis(until))
            }))
        })
    }

    fn progress<'a>(&'a self, batch: &'a str) -> StoreFuture<'a, Option<Progress>> {
        Box::pin(async move {
            Ok(self.with(|batches| {
                let batch = batches.get(batch)?;
                let mut progress = Progress {
                    total: batch.items.len(),
                    ..Progress::default()
                };
                for state in batch.items.values() {
                    match state {
                        ItemState::Pending { .. } => progress.pending += 1,
                        ItemState::Running { .. } => progress.in_flight += 1,
                        ItemState::Done { .. } => progress.done += 1,
                        ItemState::Failed { .. } => progress.failed += 1,
                    }
                }
                Some(progress)
            }))
        })
    }

    fn items<'a>(
        &'a self,
        batch: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, ItemsPage> {
        Box::pin(async move {
            Ok(self.with(|batches| {
                let Some(batch) = batches.get(batch) else {
                    return ItemsPage::default();
                };
                let range = match after {
                    Some(after) => batch.items.range::<str, _>((
                        std::ops::Bound::Excluded(after),
                        std::ops::Bound::Unbounded,
                    )),
                    None => batch.items.range::<str, _>(..),
                };
                let limit = limit.clamp(1, JOB_MAX_PAGE);
                // One more than asked: whether there is a next page.
                let mut items: Vec<(String, ItemState)> = range
                    .take(limit + 1)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let more = items.len() > limit;
                items.truncate(limit);
                let next = more.then(|| items.last().map(|(k, _)| k.clone())).flatten();
                ItemsPage { items, next }
            }))
        })
    }
}
