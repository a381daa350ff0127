//! Partial batches past one machine: each item a job on [apalis] workers
//! (feature `apalis`).
//!
//! [`PartialBatchLayer`](crate::PartialBatchLayer) runs a batch inside one
//! process. For a batch that outgrows one machine or one process lifetime,
//! this module runs the same idea on a job engine:
//!
//! - [`submit`] registers the batch's items in a [`JobStore`] and pushes one
//!   [`ItemJob`] per item to an apalis storage (on Redis: [`submit_to_redis`]).
//!   Items that already succeeded are not pushed again, so submitting the batch
//!   again sends only what did not succeed.
//! - On any number of machines, an apalis worker runs [`BatchWorker`] around
//!   your service (with this crate's layers: a circuit breaker shared through
//!   Redis or PostgreSQL, fallback tiers, escalation). It claims each item in
//!   the store, calls once, classifies the outcome with the shared taxonomy,
//!   retries retryable failures with backoff or the provider's `Retry-After`
//!   (which pauses the batch on every worker until it passes), records fatal
//!   failures without retrying, and records each result in the store before
//!   apalis acknowledges the job.
//! - [`report`] assembles a [`JobBatchReport`] from the store on demand: the
//!   in-process [`BatchReport`](crate::partial_batch::BatchReport) shape plus
//!   [`Progress`] (done, failed, pending, in flight).
//!
//! # At most one success per item
//!
//! apalis delivers a job at least once: a worker killed after its call but
//! before its acknowledgement reached the storage, or a worker that looked dead
//! while busy, gets its jobs delivered again. The [`JobStore`] makes that
//! harmless: a delivery first claims its item (atomically, with a lease the
//! worker renews while it works); an item already done is answered without a
//! call, and an item another worker holds is waited for. Only a worker that
//! stops renewing (it died, or stalled for a whole lease) loses its item to
//! another. Use `batch_size(1)` in the storage's config (see
//! [`redis_storage_config`]) so that a busy worker keeps sending heartbeats.
//!
//! # apalis-redis 1.0.0
//!
//! Its workers stop (`too many results to unpack`) when more than about 8,000
//! jobs are due at once: submit with [`submit_to_redis`] and run a
//! [`spawn_redis_promoter`] in each worker process, which keep that backlog
//! under a thousand (see [`promote_due`]).
//!
//! # A queue error ends an apalis 1.0.0 worker
//!
//! `Worker::run` returns at the first failed fetch, heartbeat or
//! acknowledgement (Redis or PostgreSQL restarting, a pool timeout), and the
//! storage stays dead. Run workers in a loop that builds a fresh storage and
//! worker after a backoff (`llm-proxy worker` does). The stopped worker drops
//! its jobs in flight, but not their items: [`BatchWorker`] runs each item on
//! a task of its own, which goes on to its end and records the result; the
//! jobs, delivered again once the stopped worker's registration times out,
//! find their items done.
//!
//! # Storage growth
//!
//! apalis 1.0.0 keeps each job (its whole request) after it ran, until
//! vacuumed: a million items leave a million jobs. Their results are in the
//! [`JobStore`], which expires batches on its own; prune the queue now and
//! then (every few seconds to a minute, from any worker) with
//! `prune_redis_queue` or `prune_postgres_queue` (feature `apalis-postgres`;
//! set the queue up with `setup_postgres_queue`).
//!
//! # Example
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use apalis::prelude::*;
//! use apalis_redis::RedisStorage;
//! use tower::service_fn;
//! use tower_llm_resilience::classify::ErrorOnlyClassifier;
//! use tower_llm_resilience::jobs::{self, BatchWorker, ItemJob};
//! use tower_llm_resilience::redis::RedisJobStore;
//!
//! let client = redis::Client::open("redis://127.0.0.1/")?;
//! let store = RedisJobStore::new(client.clone())?;
//! let conn = client.get_connection_manager().await?;
//! let config = jobs::redis_storage_config("llm-batches");
//! let mut storage = RedisStorage::<ItemJob<String>>::new(conn.clone()).with_config(config.clone());
//!
//! // Anywhere: submit a batch (again later: only what did not succeed).
//! let items = vec![("doc-1".to_owned(), "Summarise ...".to_owned())];
//! jobs::submit_to_redis(&mut storage, &conn, &config, &store, "nightly-2026-12-01", items).await?;
//!
//! // On each worker machine: your service, with this crate's layers around it.
//! let llm = service_fn(|prompt: String| async move {
//!     Ok::<_, tower::BoxError>(format!("summary of {prompt}"))
//! });
//! let service = BatchWorker::builder(store.clone())
//!     .classifier(ErrorOnlyClassifier)
//!     .max_attempts(4)
//!     .build(llm)?;
//! // Keeps apalis-redis 1.0.0's backlog of due jobs small (see `promote_due`).
//! let _promoter = jobs::spawn_redis_promoter(conn, config, std::time::Duration::from_millis(100));
//! let worker = WorkerBuilder::new("worker-a")
//!     .backend(storage)
//!     .concurrency(16)
//!     .build(service);
//! # let _ = worker;
//! // worker.run().await?;
//!
//! // Anywhere: the report, assembled from the store.
//! let report = jobs::report::<String>(&store, "nightly-2026-12-01", 10_000).await?;
//! # let _ = report;
//! # Ok(())
//! # }
//! ```
//!
//! [apalis]: https://docs.rs/apalis

mod job;
#[cfg(feature = "apalis-postgres")]
mod postgres_queue;
#[cfg(feature = "redis")]
mod redis_queue;
mod report;
pub(crate) mod store;
mod submit;
mod worker;

pub use self::job::ItemJob;
#[cfg(feature = "apalis-postgres")]
pub use self::postgres_queue::{prune_postgres_queue, setup_postgres_queue};
#[cfg(feature = "redis")]
pub use self::redis_queue::{promote_due, prune_redis_queue, spawn_redis_promoter, RedisPromoter};
pub use self::report::{report, JobBatchReport};
pub use self::store::{
    Claim, ItemState, ItemsPage, JobStore, MemoryJobStore, Opened, Progress, JOB_MAX_KEY,
    JOB_MAX_PAGE,
};
#[cfg(feature = "redis")]
pub use self::submit::submit_to_redis;
pub use self::submit::{submit, Submitted};
pub use self::worker::{BatchWorker, BatchWorkerBuilder, JobOutcome};

/// The settings this module expects of an `apalis_redis` storage on `queue`:
/// one job fetched at a time (a worker busy with fetched jobs sends no
/// heartbeats, and would look dead), a heartbeat every 5 s, a worker taken for
/// dead after 30 s of silence (its jobs then go to the others).
#[cfg(feature = "redis")]
pub fn redis_storage_config(queue: &str) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(queue)
        .batch_size(1)
        .heartbeat_interval(std::time::Duration::from_secs(5))
        .missed_heartbeats(6)
}
