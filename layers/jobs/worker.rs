//! [`BatchWorker`]: the tower service an apalis worker runs for each item job.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use apalis_core::error::AbortError;
use apalis_core::task::Task;
use serde::{Deserialize, Serialize};
use tower::{Service, ServiceExt};

use super::job::ItemJob;
use super::store::{Claim, JobStore};
use crate::classify::{cap_retry_after, Classify, DefaultClassifier, FailurePolicy, Outcome};
use crate::partial_batch::backoff::Backoff;
use crate::partial_batch::ItemFailure;
use crate::BoxError;

/// What a job ended with, as apalis records it (the item's result itself is
/// in the [`JobStore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobOutcome {
    /// The call succeeded and its response was recorded.
    Done,
    /// The item was already done (a job delivered twice): no call was made.
    AlreadyDone,
    /// The item had already failed in this run (a job delivered twice).
    AlreadyFailed,
}

/// Builds a [`BatchWorker`].
pub struct BatchWorkerBuilder<C = DefaultClassifier> {
    store: Arc<dyn JobStore>,
    classifier: C,
    policy: FailurePolicy,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    lease: Duration,
    name: String,
    seed: Option<u64>,
}

impl<C> fmt::Debug for BatchWorkerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchWorkerBuilder")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl BatchWorkerBuilder {
    fn new(store: Arc<dyn JobStore>) -> Self {
        Self {
            store,
            classifier: DefaultClassifier,
            policy: FailurePolicy::default(),
            max_attempts: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            lease: Duration::from_secs(30),
            name: default_name(),
            seed: None,
        }
    }
}

fn default_name() -> String {
    format!("worker-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

impl<C> BatchWorkerBuilder<C> {
    /// How calls are classified (default: [`DefaultClassifier`]).
    pub fn classifier<C2>(self, classifier: C2) -> BatchWorkerBuilder<C2> {
        BatchWorkerBuilder {
            store: self.store,
            classifier,
            policy: self.policy,
            max_attempts: self.max_attempts,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            lease: self.lease,
            name: self.name,
            seed: self.seed,
        }
    }

    /// Which failure kinds are retried (default: [`FailurePolicy::default`]).
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Calls per item at most, all deliveries together (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Full-jitter exponential backoff between retries without a server wait
    /// (default 500 ms doubling up to 30 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// How long an item stays this worker's without a renewal (default 30 s).
    /// The worker renews it every third of that while it works, so only a
    /// worker that died (or stalled that long) loses its items to others.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// This worker's name in the store (default `worker-{pid}-{random}`); each
    /// delivery claims items under it plus a random suffix.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Seed of the backoff jitter (default random).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The worker service around `inner`.
    pub fn build<S>(self, inner: S) -> Result<BatchWorker<S, C>, BoxError> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.lease < Duration::from_millis(30) {
            return Err("lease must be at least 30 ms".into());
        }
        if self.backoff_base > self.backoff_max {
            return Err("the backoff base must not exceed its max".into());
        }
        if self.name.is_empty() || self.name.len() > 200 {
            return Err("the worker name must be 1 to 200 bytes".into());
        }
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Ok(BatchWorker {
            inner,
            shared: Arc::new(Shared {
                store: self.store,
                classifier: self.classifier,
                policy: self.policy,
                max_attempts: self.max_attempts,
                backoff: Backoff {
                    base: self.backoff_base,
                    max: self.backoff_max,
                },
                lease: self.lease,
                name: self.name,
                rng: Mutex::new(rng),
            }),
        })
    }
}

struct Shared<C> {
    store: Arc<dyn JobStore>,
    classifier: C,
    policy: FailurePolicy,
    max_attempts: u32,
    backoff: Backoff,
    lease: Duration,
    name: String,
    rng: Mutex<fastrand::Rng>,
}

/// The service an apalis worker runs for each [`ItemJob`]: it runs the item
/// through `S` (your service, with this crate's layers around it) at most once
/// to success, whatever apalis delivers twice.
///
/// For each job:
///
/// 1. **Claim** the item in the [`JobStore`]. Already done (or failed in this
///    run): answer at once, without a call. Held by another worker under a live
///    lease: wait for it to finish or for its lease to run out.
/// 2. Wait while the batch is **paused** (a `Retry-After` seen by any worker).
/// 3. **Call** `S`, renewing the lease meanwhile; classify the result with the
///    shared taxonomy ([`Classify`], [`FailurePolicy`]).
/// 4. Success: **record** the response (JSON) in the store, then answer, so
///    apalis acknowledges only a recorded success. A retryable failure: retry
///    here, after the server's `Retry-After` (which first pauses the whole
///    batch on every worker) or a jittered backoff, up to `max_attempts` calls.
///    A fatal failure, or retries used up: record the failure and answer
///    apalis with an [`AbortError`], which it never retries.
///
/// A store error fails the job with a plain error: apalis delivers it again
/// later.
pub struct BatchWorker<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for BatchWorker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, C> fmt::Debug for BatchWorker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchWorker")
            .field("name", &self.shared.name)
            .field("max_attempts", &self.shared.max_attempts)
            .field("lease", &self.shared.lease)
            .finish_non_exhaustive()
    }
}

impl BatchWorker<(), DefaultClassifier> {
    /// A builder over `store` (shared by every worker and the submitter).
    pub fn builder(store: impl JobStore) -> BatchWorkerBuilder {
        BatchWorkerBuilder::new(Arc::new(store))
    }

    /// [`builder`](Self::builder) with a store already shared.
    pub fn builder_shared(store: Arc<dyn JobStore>) -> BatchWorkerBuilder {
        BatchWorkerBuilder::new(store)
    }
}

/// Renews a lease every third of it until dropped.
struct Renewer(tokio::task::JoinHandle<()>);

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S, C, Req> Service<Task<ItemJob<Req>>> for BatchWorker<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Response: Serialize + Send,
    S::Error: fmt::Display + Send,
    S::Future: Send,
    Req: Clone + Send + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
{
    type Response = JobOutcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<JobOutcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each job waits for its own clone of the inner service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<ItemJob<Req>>) -> Self::Future {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        // On a task of its own: an item once claimed runs to its end even if
        // apalis drops this future (an apalis 1.0.0 worker stopped by a queue
        // error drops every job in flight). Its result is recorded, so the
        // job's next delivery finds it done instead of calling again.
        // Outside a tokio runtime (apalis on another executor) the item runs
        // in this future, as apalis drives it.
        let item = run(inner, shared, task.args, PhantomData);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Box::pin(item);
        };
        let item = runtime.spawn(item);
        Box::pin(async move {
            item.await
                .map_err(|e| BoxError::from(format!("the item's task failed: {e}")))?
        })
    }
}

async fn run<S, C, Req>(
    inner: S,
    shared: Arc<Shared<C>>,
    job: ItemJob<Req>,
    _req: PhantomData<Req>,
) -> Result<JobOutcome, BoxError>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Response: Serialize + Send,
    S::Error: fmt::Display + Send,
    S::Future: Send,
    Req: Clone + Send + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
{
    let store = &shared.store;
    let (batch, key) = (job.batch_id.as_str(), job.key.as_str());
    // Unique per delivery: a second delivery of the same item, even to this
    // worker, waits for the first.
    let owner = format!("{}/{:016x}", shared.name, fastrand::u64(..));
    // The claim counts the first call and says whether the batch is paused:
    // one round trip before it.
    let (mut attempts, paused_for) = loop {
        match store.claim(batch, key, &owner, shared.lease).await? {
            Claim::Claimed {
                attempts,
                paused_for,
            } => break (attempts, paused_for),
            Claim::Done => {
                metrics::counter!("jobs_duplicate_deliveries_total").increment(1);
                return Ok(JobOutcome::AlreadyDone);
            }
            Claim::Failed => return Ok(JobOutcome::AlreadyFailed),
            Claim::Held(wait) => {
                tokio::time::sleep(wait.min(shared.lease).max(Duration::from_millis(10))).await;
            }
            Claim::Unknown => {
                return Err(AbortError::new(format!(
                    "item {key:?} of batch {batch:?} is not in the job store (never \
                     submitted, or expired)"
                ))
                .into())
            }
        }
    };
    let _renewer = {
        let (store, lease) = (store.clone(), shared.lease);
        let (batch, key, owner) = (job.batch_id.clone(), job.key.clone(), owner.clone());
        Renewer(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Ok(false) = store.renew(&batch, &key, &owner, lease, false).await {
                    tracing::warn!(batch, key, "lost the lease on an item");
                    return;
                }
            }
        }))
    };
    let mut first = true;
    loop {
        if first {
            first = false;
            tokio::time::sleep(cap_retry_after(paused_for)).await;
        } else {
            if let Some(until) = store.paused_until(batch).await? {
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(cap_retry_after(wait)).await;
            }
            store.renew(batch, key, &owner, shared.lease, true).await?;
        }
        attempts = attempts.saturating_add(1);
        let result = inner.clone().oneshot(job.request.clone()).await;
        match shared.classifier.classify(&result) {
            Outcome::Success => {
                let response = match &result {
                    Ok(response) => response,
                    Err(_) => return Err("a failed call classified as a success".into()),
                };
                let json = serde_json::to_string(response)?;
                record_success(store.as_ref(), batch, key, &json, attempts).await?;
                return Ok(JobOutcome::Done);
            }
            Outcome::Failure(kind) => {
                let message = match &result {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("the response was classified as {}", kind.name()),
                };
                let retryable = shared.policy.is_retryable(&kind);
                if !retryable || attempts >= shared.max_attempts {
                    let failure = ItemFailure {
                        kind,
                        message: message.clone(),
                        fatal: !retryable,
                    };
                    store.fail(batch, key, &failure, attempts).await?;
                    return Err(AbortError::new(message).into());
                }
                let wait = match kind.retry_after() {
                    Some(wait) => {
                        let wait = cap_retry_after(wait);
                        // Every worker holds this batch's calls until then.
                        store.pause(batch, SystemTime::now() + wait).await?;
                        wait
                    }
                    None => {
                        let mut rng = shared.rng.lock().unwrap_or_else(|p| p.into_inner());
                        shared.backoff.delay(attempts, &mut rng)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Records a success, trying a few times: a success not recorded would be
/// delivered, and called, again.
async fn record_success(
    store: &dyn JobStore,
    batch: &str,
    key: &str,
    json: &str,
    attempts: u32,
) -> Result<(), BoxError> {
    let mut last = None;
    for pause in [50, 200, 1000, 0] {
        match store.succeed(batch, key, json, attempts).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    Err(last.map_or_else(|| "the store failed".into(), Into::into))
}
