//! Process a batch item by item: per-item results, retries only for what can
//! succeed, idempotent re-runs.
//!
//! [`PartialBatchLayer`] turns a `Service<Req>` into a service over a [`Batch<Req>`]:
//! keyed items, an optional batch id, an optional deadline. The answer is a
//! [`BatchReport`]: for each item, in input order, its key, its [`ItemOutcome`] (the
//! response, or the [`FailureKind`](crate::classify::FailureKind) with the error's
//! message and whether it was fatal), its number of attempts, and whether it came
//! from the store; plus `ok` / `failed` / `cached` counts and the duration. A batch
//! where some items fail is a successful call with a report, not an error.
//!
//! # Behaviour
//!
//! - **Concurrency**: at most [`concurrency`](PartialBatchLayerBuilder::concurrency)
//!   calls in flight, and never more than the inner service is ready for: the batch
//!   asks the inner service for readiness before every call (with an item in hand,
//!   so no reservation is held idle), and sleeps on wakers and timers, never polls
//!   in a loop. Items waiting out a backoff do not hold a slot.
//! - **Retries**, decided by the shared classification: a failure whose kind the
//!   [`FailurePolicy`](crate::classify::FailurePolicy) calls retryable
//!   (`RateLimited`, `Overloaded`, `ServerError`, `Timeout`, `Connect` by default)
//!   is retried up to [`max_attempts`](PartialBatchLayerBuilder::max_attempts) with
//!   exponential backoff and full jitter (seedable, see
//!   [`seed`](PartialBatchLayerBuilder::seed)). Fatal kinds (`ContextLengthExceeded`,
//!   `BadRequest`, `Auth`, `ContentFiltered`, ...) are reported after one attempt
//!   with `fatal: true`.
//! - **`Retry-After`**: a failure that carries a server wait delays that item at
//!   least that long *and* pauses sending any item of the batch until then, so the
//!   rest of the batch does not hammer a rate limit. Calls already in flight go on.
//! - **Deadline** (layer-wide, or per batch with [`Batch::with_deadline`]): when it
//!   passes, calls in flight are cancelled; items never sent are reported
//!   [`ItemOutcome::NotAttempted`], items started [`ItemOutcome::TimedOut`] (with
//!   their last failure); what finished is kept.
//! - **Idempotency**: with a batch id and a [`BatchStore`] on the layer, each
//!   success is recorded as it happens (the response serialised with serde). A
//!   re-run of the same batch id returns those as cached (`from_store: true`,
//!   0 attempts) without calling the inner service; only the items that failed or
//!   never ran are sent again. The store is looked up before anything is sent; if
//!   it cannot be read, the batch fails with [`BatchError::Store`] rather than
//!   risk doing work twice. [`InMemoryBatchStore`] ships here; the trait is small
//!   and object-safe so other backends (SQLite, Redis) can implement it.
//! - **Progress**: [`Batch::on_progress`] observes each item as it finishes (and
//!   each retry); `examples/partial_batch_progress.rs` drives an `indicatif` bar.
//! - **Bad input**: an empty batch is an empty report; duplicate keys are
//!   [`BatchError::DuplicateKey`] before any call.
//!
//! Nothing here logs requests or responses: `tracing` events carry item indexes,
//! kinds and counts. Metrics (through the `metrics` facade):
//! `partial_batch_items_total{result=ok|cached|failed|unfinished}`,
//! `partial_batch_retries_total{kind}`, `partial_batch_pauses_total`,
//! `partial_batch_store_errors_total`, `partial_batch_batches_total`, and the
//! histogram `partial_batch_duration_seconds`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
//! use tower_llm_resilience::partial_batch::{Batch, InMemoryBatchStore, PartialBatchLayer};
//! use tower_llm_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // An "LLM" that cannot fit long documents, and is rate limited once in a while.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let counter = calls.clone();
//! let summarise = service_fn(move |doc: String| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         if doc.len() > 20 {
//!             Err::<String, BoxError>(ClassifiedError::new(FailureKind::ContextLengthExceeded, "too long").into())
//!         } else if n == 1 {
//!             let wait = Some(Duration::from_secs(2));
//!             Err(ClassifiedError::new(FailureKind::RateLimited { retry_after: wait }, "slow down").into())
//!         } else {
//!             Ok(format!("summary of {doc}"))
//!         }
//!     }
//! });
//!
//! let store = InMemoryBatchStore::new();
//! let layer = PartialBatchLayer::builder()
//!     .concurrency(4)
//!     .max_attempts(3)
//!     .classifier(ErrorOnlyClassifier)
//!     .store(store.clone())
//!     .seed(7)
//!     .build()?;
//! let mut batches = layer.layer(summarise);
//!
//! let docs = || Batch::from_pairs([
//!     ("a", "short".to_string()),
//!     ("b", "brief".to_string()),
//!     ("c", "a document far too long to fit".to_string()),
//! ]).with_id("nightly");
//!
//! let report = batches.ready().await?.call(docs()).await?;
//! assert_eq!((report.ok, report.failed, report.cached), (2, 1, 0));
//! let c = report.get("c").unwrap();
//! assert_eq!(c.attempts, 1);
//! assert!(c.failure().unwrap().fatal);
//!
//! // Re-run: the two successes come from the store; only "c" is sent again.
//! let before = calls.load(std::sync::atomic::Ordering::SeqCst);
//! let again = batches.ready().await?.call(docs()).await?;
//! assert_eq!((again.ok, again.cached), (2, 2));
//! assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst) - before, 1);
//! # Ok(())
//! # }
//! ```

pub(crate) mod backoff;
mod batch;
mod builder;
mod driver;
mod error;
mod future;
mod layer;
mod progress;
mod report;
mod service;
mod store;

pub use self::batch::{Batch, BatchItem};
pub use self::builder::{ConfigError, PartialBatchLayerBuilder, MAX_DURATION};
pub use self::error::BatchError;
pub use self::future::ResponseFuture;
pub use self::layer::PartialBatchLayer;
pub use self::progress::{Progress, ProgressEvent};
pub use self::report::{BatchReport, ItemFailure, ItemOutcome, ItemReport};
pub use self::service::PartialBatch;
pub use self::store::{
    BatchStore, InMemoryBatchStore, NoStore, ResponseStore, StoreError, StoreFuture, StoredSuccess,
    WithStore,
};
