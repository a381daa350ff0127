use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;
use tracing::Instrument;

use super::batch::Batch;
use super::builder::Config;
use super::driver::Driver;
use super::error::BatchError;
use super::future::ResponseFuture;
use super::report::{BatchReport, ItemOutcome, ItemReport};
use super::store::{NoStore, ResponseStore};
use crate::classify::{Classify, DefaultClassifier};

/// Runs a [`Batch`] of requests through the inner service, item by item; see the
/// [module docs](super).
///
/// # Readiness
///
/// `poll_ready` is always ready: the inner service's readiness is respected per
/// item, inside the response future, which asks the inner service (a clone of the
/// one this service wraps) for readiness before each call. An inner `poll_ready`
/// error fails the items not yet sent; it does not fail the batch.
#[derive(Clone)]
pub struct PartialBatch<S, C = DefaultClassifier, St = NoStore> {
    pub(super) inner: S,
    pub(super) config: Config,
    pub(super) classifier: C,
    pub(super) store: St,
    // The layer's generator, shared by its services (see `PartialBatchLayer`).
    pub(super) rng: Arc<Mutex<fastrand::Rng>>,
}

impl<S, C, St> PartialBatch<S, C, St> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, C: fmt::Debug, St: fmt::Debug> fmt::Debug for PartialBatch<S, C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialBatch")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("classifier", &self.classifier)
            .field("store", &self.store)
            .finish()
    }
}

impl<S, Req, C, St> Service<Batch<Req>> for PartialBatch<S, C, St>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    Req: Clone + Send + 'static,
    C: Classify<S::Response, S::Error> + Clone + Send + 'static,
    St: ResponseStore<S::Response>,
{
    type Response = BatchReport<S::Response>;
    type Error = BatchError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Batch<Req>) -> Self::Future {
        // The clone was never asked for readiness here, so there is nothing to swap:
        // the batch's future drives its readiness itself.
        let inner = self.inner.clone();
        let rng = self.rng.lock().unwrap_or_else(|e| e.into_inner()).fork();
        let span = tracing::info_span!(
            "partial_batch",
            llm.batch.id = batch.id.as_deref(),
            llm.batch.items = batch.items.len()
        );
        let run = run(
            inner,
            self.classifier.clone(),
            self.config,
            self.store.clone(),
            rng,
            batch,
        );
        ResponseFuture::new(Box::pin(run.instrument(span)))
    }
}

async fn run<S, Req, C, St>(
    inner: S,
    classifier: C,
    config: Config,
    store: St,
    rng: fastrand::Rng,
    batch: Batch<Req>,
) -> Result<BatchReport<S::Response>, BatchError>
where
    S: Service<Req>,
    S::Error: fmt::Display,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    St: ResponseStore<S::Response>,
{
    let started = Instant::now();
    let Batch {
        id,
        items,
        deadline,
        progress,
    } = batch;
    let mut keys = HashSet::with_capacity(items.len());
    if let Some(item) = items.iter().find(|item| !keys.insert(item.key.as_str())) {
        return Err(BatchError::DuplicateKey {
            key: item.key.clone(),
        });
    }
    drop(keys);
    if items.is_empty() {
        return Ok(BatchReport::new(id, Vec::new(), 0, started.elapsed()));
    }
    let batch_id: Option<Arc<str>> = id.map(Arc::from);
    let deadline_at = deadline
        .or(config.deadline)
        .map(|d| started + d.min(super::builder::MAX_DURATION));
    let stored = match (&batch_id, store.store()) {
        (Some(batch_id), Some(store)) => {
            let load = store.load(batch_id);
            let loaded = match deadline_at {
                Some(at) => match tokio::time::timeout_at(at, load).await {
                    Ok(loaded) => loaded,
                    Err(_) => {
                        // The deadline bounds the store too: nothing was sent.
                        tracing::warn!("the store did not answer before the batch deadline");
                        metrics::counter!("partial_batch_store_errors_total").increment(1);
                        let items = items
                            .into_iter()
                            .map(|item| ItemReport {
                                key: item.key,
                                outcome: ItemOutcome::NotAttempted,
                                attempts: 0,
                                from_store: false,
                            })
                            .collect();
                        let id = Some(batch_id.to_string());
                        return Ok(BatchReport::new(id, items, 0, started.elapsed()));
                    }
                },
                None => load.await,
            };
            loaded.map_err(|err| {
                tracing::warn!(error = %err, "could not load the batch from the store");
                BatchError::Store(err)
            })?
        }
        _ => Default::default(),
    };
    let mut driver = Driver::new(
        inner,
        classifier,
        config,
        store,
        rng,
        batch_id,
        items,
        progress,
        deadline_at,
    );
    driver.apply_stored(stored);
    std::future::poll_fn(|cx| driver.poll_run(cx)).await;
    let report = driver.into_report(started.elapsed());
    metrics::counter!("partial_batch_batches_total").increment(1);
    metrics::histogram!("partial_batch_duration_seconds").record(report.duration.as_secs_f64());
    tracing::info!(
        ok = report.ok,
        failed = report.failed,
        cached = report.cached,
        unfinished = report.unfinished,
        "batch done"
    );
    Ok(report)
}
