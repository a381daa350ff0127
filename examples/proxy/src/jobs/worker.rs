//! `llm-proxy worker --config FILE`: an apalis worker that runs the items of
//! asynchronous batches, on any machine that shares the proxy's Redis or
//! PostgreSQL.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::WorkerBuilder;
use futures_util::future::BoxFuture;
use tower::Service;
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::jobs::BatchWorker;
use tower_llm_resilience::BoxError;

use super::JobRequest;
use crate::batch::{ItemAnswer, ItemRequest, ItemService};
use crate::config::Config;
use crate::postgres_state::MigrateFailure;
use crate::state::Shared;
use crate::usage::Answered;

/// Runs a worker for `config` until `shutdown` completes, then stops taking
/// jobs and gives the items in flight `limits.shutdown_grace_secs` to finish
/// (an item cut there goes to another worker once its lease runs out).
///
/// The models' pipelines are built from `config` as the proxy builds them;
/// each item goes through its model's tiers without escalation, as in-process
/// batches do. `concurrency`: items run at once (default `[batch]
/// concurrency`). Needs `[state] redis_url` or `postgres_url` (the queue of
/// asynchronous batches).
pub async fn run_worker(
    config: &Config,
    concurrency: Option<usize>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    config.validate()?;
    let concurrency = concurrency.unwrap_or(config.batch.concurrency);
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    // `[state] postgres_url`: the schema first, as the proxy does at startup
    // (the job store's tables among it).
    if config.state.postgres_migrate {
        match crate::postgres_state::try_migrate(config).await {
            Ok(_) => {}
            Err(MigrateFailure::Refused(e)) => {
                return Err(format!(
                    "{e} (fix it, or set state.postgres_migrate = false and run \
                     `llm-proxy migrate`)"
                )
                .into())
            }
            Err(MigrateFailure::Unreachable(e)) => {
                tracing::warn!(error = %e, "PostgreSQL unreachable: migrating once it answers");
                tokio::spawn(crate::postgres_state::migrate_in_background(
                    config.clone(),
                    Duration::from_secs(5),
                ));
            }
        }
    }
    let state = crate::state::build(config)?;
    let jobs = state.jobs.clone().ok_or(
        "the worker needs [state] redis_url or postgres_url: the batch queue and the \
         items' results live there, shared with the proxy",
    )?;
    let name = format!("llm-proxy-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let mut builder = BatchWorker::builder_shared(jobs.store.clone())
        .classifier(ErrorOnlyClassifier)
        .max_attempts(config.batch.max_attempts)
        .lease(config.batch.job_lease_secs)
        .name(name.clone());
    if let Some(seed) = config.batch.seed {
        builder = builder.seed(seed);
    }
    let service = builder.build(JobItems::new(state.clone()))?;
    tracing::info!(
        worker = %name,
        queue = jobs.queue(),
        on = jobs.backend(),
        concurrency,
        "batch worker started"
    );
    println!(
        "llm-proxy worker {name} on queue {} ({}, {concurrency} items at once)",
        jobs.queue(),
        jobs.backend()
    );
    let grace = config.limits.shutdown_grace_secs;
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // apalis 1.0.0 stops a worker for good at the first error of its queue (a
    // fetch, heartbeat or acknowledgement that fails: the store restarting, a
    // pool timeout). So the process runs one apalis worker after another: a
    // worker stopped by an error is logged and counted, and a fresh one starts
    // after a backoff. The items the stopped one had in flight run to their end
    // (`BatchWorker` runs each on a task of its own) and are recorded; their
    // jobs, delivered again once its registration times out, are found done.
    let mut chores = None;
    let mut backoff = RESTART_MIN;
    let mut generation = 0u32;
    let result = loop {
        generation += 1;
        let started = tokio::time::Instant::now();
        let ran = run_generation(
            &jobs,
            &format!("{name}-{generation}"),
            service.clone(),
            concurrency,
            &mut chores,
            stop.clone(),
            grace,
        )
        .await;
        if *stop.borrow() {
            // Asked to stop: an error on the way out is logged, not the
            // process's failure.
            if let Err(error) = ran {
                tracing::warn!(%error, "the batch worker stopped with an error");
            }
            break Ok(());
        }
        let error = ran.err().unwrap_or_else(|| "it stopped".to_owned());
        if started.elapsed() >= RESTART_RESET {
            backoff = RESTART_MIN;
        }
        tracing::warn!(
            %error,
            restart_in = ?backoff,
            "the batch worker lost its queue: starting a fresh worker"
        );
        metrics::counter!("llm_proxy_batch_worker_restarts_total").increment(1);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    };
    // The answers' usage records are written before the process goes.
    state.flush_writers(grace).await;
    result
}

/// The least and the most time between a worker stopped by a queue error and
/// the next (doubling in between).
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A worker that ran this long resets the backoff.
const RESTART_RESET: Duration = Duration::from_secs(60);

/// The queue's housekeeping, for the process's life: started with the first
/// worker that reaches the queue.
struct Chores {
    _promoter: Option<tower_llm_resilience::jobs::RedisPromoter>,
    _pruner: Pruner,
}

/// One apalis worker `name` on the queue of `jobs`, running `service`, until
/// `stop` (then `grace` for the items in flight) or a queue error.
#[allow(clippy::too_many_arguments)]
async fn run_generation(
    jobs: &super::Jobs,
    name: &str,
    service: JobService,
    concurrency: usize,
    chores: &mut Option<Chores>,
    stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), String> {
    let mut signalled = stop.clone();
    let signal = async move {
        let _ = signalled.wait_for(|stopped| *stopped).await;
        Ok::<(), std::io::Error>(())
    };
    if let Some(storage) = jobs.redis_storage().await {
        let (storage, conn) =
            storage.map_err(|e| format!("cannot reach the batch queue on Redis: {e}"))?;
        if chores.is_none() {
            // apalis-redis 1.0.0 stops its workers past ~8,000 due jobs: keep
            // the backlog small (see `tower_llm_resilience::jobs::promote_due`).
            let promoter = tower_llm_resilience::jobs::spawn_redis_promoter(
                conn.clone(),
                jobs.redis_config(),
                Duration::from_millis(100),
            );
            let config = jobs.redis_config();
            let pruner = Pruner::spawn(move || {
                let (mut conn, config) = (conn.clone(), config.clone());
                async move {
                    tower_llm_resilience::jobs::prune_redis_queue(
                        &mut conn,
                        &config,
                        Duration::ZERO,
                    )
                    .await
                    .map(|n| n as u64)
                    .map_err(|e| e.to_string())
                }
            });
            *chores = Some(Chores {
                _promoter: Some(promoter),
                _pruner: pruner,
            });
        }
        let worker = WorkerBuilder::new(name)
            .backend(storage)
            .concurrency(concurrency)
            .build(service);
        return drive(worker.run_until(signal), stop, grace).await;
    }
    let storage = jobs
        .postgres_storage()
        .await
        .ok_or("the batch queue is on Redis or PostgreSQL")?
        .map_err(|e| format!("cannot reach the batch queue on PostgreSQL: {e}"))?;
    if chores.is_none() {
        let (pool, queue) = (storage.pool().clone(), jobs.queue().to_owned());
        let pruner = Pruner::spawn(move || {
            let (pool, queue) = (pool.clone(), queue.clone());
            async move {
                tower_llm_resilience::jobs::prune_postgres_queue(&pool, &queue, Duration::ZERO)
                    .await
                    .map(Option::unwrap_or_default)
                    .map_err(|e| e.to_string())
            }
        });
        *chores = Some(Chores {
            _promoter: None,
            _pruner: pruner,
        });
    }
    let worker = WorkerBuilder::new(name)
        .backend(storage)
        .concurrency(concurrency)
        .build(service);
    drive(worker.run_until(signal), stop, grace).await
}

/// Runs a worker until it stops; once `stop` says so, gives it `grace` to
/// finish the items in flight.
async fn drive<E: std::fmt::Display>(
    run: impl Future<Output = Result<(), E>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), String> {
    tokio::pin!(run);
    let result = tokio::select! {
        result = &mut run => result,
        _ = stop.wait_for(|stopped| *stopped) => {
            tracing::info!("stopping: no new items, finishing the items in flight");
            match tokio::time::timeout(grace, &mut run).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(
                        grace = ?grace,
                        "items still running after the grace period: left to other workers"
                    );
                    Ok(())
                }
            }
        }
    };
    result.map_err(|e| format!("the worker stopped: {e}"))
}

/// How often a worker prunes the queue's finished jobs.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Prunes the queue's finished jobs every [`PRUNE_EVERY`] until dropped: apalis
/// 1.0.0 keeps each job (its whole request) after it ran, and the items'
/// results are in the job store (see `tower_llm_resilience::jobs`, "Storage
/// growth"). Every worker runs one; they do not get in each other's way.
struct Pruner(tokio::task::JoinHandle<()>);

impl Pruner {
    fn spawn<F, Fut>(prune: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, String>> + Send,
    {
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(PRUNE_EVERY).await;
                match prune().await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics::counter!("llm_proxy_batch_jobs_pruned_total").increment(n);
                        tracing::debug!(pruned = n, "finished jobs pruned from the queue");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot prune the batch queue"),
                }
            }
        }))
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What each apalis worker runs.
type JobService = BatchWorker<JobItems, ErrorOnlyClassifier>;

/// The service the worker runs for each item: the chat body checked and
/// prepared as the chat endpoint does, then sent through its model's tiers.
#[derive(Clone)]
struct JobItems {
    state: Shared,
    items: ItemService,
}

impl JobItems {
    fn new(state: Shared) -> Self {
        let items = ItemService::new(Arc::new(state.pipeline.cores.clone()));
        Self { state, items }
    }
}

impl Service<JobRequest> for JobItems {
    type Response = ItemAnswer;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<ItemAnswer, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: JobRequest) -> Self::Future {
        let answering = self.answer(&job);
        let Some(usage) = self.state.usage.clone() else {
            return answering;
        };
        Box::pin(async move {
            let answer = answering.await?;
            // Each answer an upstream gave is recorded (and charged to the
            // submitting key), as for in-process batches.
            let answered = Answered {
                client: job.client.as_str().into(),
                model: job.model.as_str().into(),
                tier: answer.tier.as_str().into(),
                cached: false,
                degraded: answer.degraded,
            };
            usage.record(&answered, crate::routes::batch::usage_of(&answer));
            Ok(answer)
        })
    }
}

impl JobItems {
    fn answer(&mut self, job: &JobRequest) -> BoxFuture<'static, Result<ItemAnswer, BoxError>> {
        let item = match serde_json::to_vec(&job.body) {
            Ok(body) => match crate::routes::chat::prepare(&self.state.models, &body, true) {
                Ok((_, prepared)) => ItemRequest::Ready(Box::new(prepared.request)),
                Err(refused) => ItemRequest::Invalid(
                    crate::routes::batch::invalid_reason(refused.status()).into(),
                ),
            },
            Err(e) => {
                let message = format!("the item's body cannot be sent: {e}");
                return Box::pin(async move {
                    Err(ClassifiedError::new(FailureKind::BadRequest, message).into())
                });
            }
        };
        self.items.call(item)
    }
}
