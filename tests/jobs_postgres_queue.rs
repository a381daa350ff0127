//! Batches as jobs with the queue on PostgreSQL (feature `apalis-postgres`):
//! `jobs::submit` pushes to an `apalis_postgres::PostgresStorage` on a real
//! PostgreSQL, two apalis workers run the items through `BatchWorker`, each
//! item is answered once (its state in a `PostgresJobStore` on the same
//! database), the report is exact, and a re-submission pushes only
//! what did not succeed.
#![cfg(feature = "apalis-postgres")]

#[path = "support/postgres.rs"]
mod postgres_server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{PgPool, PostgresStorage};
use postgres_server::TestDb;
use tower::service_fn;
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::jobs::{self, BatchWorker, ItemJob, JobStore};
use tower_llm_resilience::partial_batch::ItemOutcome;
use tower_llm_resilience::postgres::PostgresJobStore;
use tower_llm_resilience::BoxError;

fn config() -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue("llm-batches")
        .batch_size(1)
        .heartbeat_interval(Duration::from_millis(500))
        .missed_heartbeats(4)
}

/// Every tenth item (index 3) is a fatal 400, every tenth (index 9) fails
/// once with a 500; successes are counted per item.
fn upstream(
    successes: Arc<Mutex<HashMap<String, u32>>>,
    calls: Arc<Mutex<HashMap<String, u32>>>,
) -> impl tower::Service<
    String,
    Response = String,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<String, BoxError>> + Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |key: String| {
        let (successes, calls) = (successes.clone(), calls.clone());
        async move {
            let call = {
                let mut calls = calls.lock().unwrap();
                let n = calls.entry(key.clone()).or_default();
                *n += 1;
                *n
            };
            let index: usize = key[5..].parse().unwrap();
            let fail = |kind| Err(ClassifiedError::new(kind, format!("{key}: call {call}")).into());
            match index % 10 {
                3 => return fail(FailureKind::BadRequest),
                9 if call == 1 => return fail(FailureKind::ServerError),
                _ => {}
            }
            *successes.lock().unwrap().entry(key.clone()).or_default() += 1;
            Ok(format!("answer to {key}"))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_a_postgres_queue_run_each_item_once() {
    let db = TestDb::fresh();
    let pool = PgPool::connect(&db.url()).await.unwrap();
    jobs::setup_postgres_queue(&pool).await.unwrap();
    // The job store on the same database: queue and state on PostgreSQL alone.
    let store: Arc<dyn JobStore> = Arc::new(PostgresJobStore::new(&db.migrated().await));
    let n = 200;
    let items: Vec<(String, String)> = (0..n)
        .map(|i| (format!("item-{i:04}"), format!("item-{i:04}")))
        .collect();
    let mut storage = PostgresStorage::<ItemJob<String>>::new(&pool).with_config(config());
    let submitted = jobs::submit(&mut storage, store.as_ref(), "pg-batch", items.clone())
        .await
        .unwrap();
    assert_eq!(submitted.pushed, n);

    let successes = Arc::new(Mutex::new(HashMap::new()));
    let calls = Arc::new(Mutex::new(HashMap::new()));
    let workers: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let service = BatchWorker::builder_shared(store.clone())
                .classifier(ErrorOnlyClassifier)
                .max_attempts(3)
                .backoff(Duration::from_millis(5), Duration::from_millis(20))
                .name(*name)
                .seed(3)
                .build(upstream(successes.clone(), calls.clone()))
                .unwrap();
            let worker = WorkerBuilder::new(format!("pg-{name}-{}", fastrand::u32(..)))
                .backend(PostgresStorage::<ItemJob<String>>::new(&pool).with_config(config()))
                .concurrency(8)
                .build(service);
            tokio::spawn(async move {
                let _ = worker.run().await;
            })
        })
        .collect();

    let started = Instant::now();
    let progress = loop {
        let progress = store.progress("pg-batch").await.unwrap().unwrap();
        if progress.is_finished() {
            break progress;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not finished: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let fatal = (0..n).filter(|i| i % 10 == 3).count();
    assert_eq!((progress.done, progress.failed), (n - fatal, fatal));
    let successes = successes.lock().unwrap().clone();
    assert_eq!(successes.len(), n - fatal);
    assert!(successes.values().all(|&s| s == 1), "{successes:?}");

    let report = jobs::report::<String>(store.as_ref(), "pg-batch", 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.report.ok, report.report.failed), (n - fatal, fatal));
    for item in &report.report.items {
        let index: usize = item.key[5..].parse().unwrap();
        match (&item.outcome, index % 10) {
            (ItemOutcome::Failed(failure), 3) => assert_eq!(failure.kind, FailureKind::BadRequest),
            (ItemOutcome::Success(_), 9) => assert_eq!(item.attempts, 2),
            (ItemOutcome::Success(answer), _) => {
                assert_eq!(answer, &format!("answer to {}", item.key));
                assert_eq!(item.attempts, 1);
            }
            (other, _) => panic!("{}: {other:?}", item.key),
        }
    }

    // Again: only the fatal items are pushed.
    let again = jobs::submit(&mut storage, store.as_ref(), "pg-batch", items)
        .await
        .unwrap();
    assert_eq!((again.pushed, again.already_done), (fatal, n - fatal));

    // The queue's table is pruned of finished jobs (once apalis has
    // acknowledged them all, the fatal items' second run included).
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let finished_sql = "SELECT count(*) FROM apalis.jobs WHERE job_type = 'llm-batches' \
                        AND status IN ('Done', 'Killed')";
    let all_sql = "SELECT count(*) FROM apalis.jobs WHERE job_type = 'llm-batches'";
    let started = Instant::now();
    while count(finished_sql).await < (n + fatal) as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not all acknowledged: {}",
            count(finished_sql).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = count(finished_sql).await;
    assert_eq!(finished, (n + fatal) as i64);
    let total = count(all_sql).await;
    let hour = Duration::from_secs(3600);
    assert_eq!(
        jobs::prune_postgres_queue(&pool, "llm-batches", hour)
            .await
            .unwrap(),
        Some(0),
        "nothing finished an hour ago"
    );
    assert_eq!(
        jobs::prune_postgres_queue(&pool, "other-queue", Duration::ZERO)
            .await
            .unwrap(),
        Some(0),
        "another queue's jobs are not touched"
    );
    let pruned = jobs::prune_postgres_queue(&pool, "llm-batches", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pruned, Some(finished as u64));
    assert_eq!(count(all_sql).await, total - finished);

    // A job still to run is kept: pending, or failed with attempts left (apalis
    // fetches it again); failed with none left, it goes.
    let mut idle = PostgresStorage::<ItemJob<String>>::new(&pool)
        .with_config(config().queue("llm-batches-idle"));
    let idle_store = jobs::MemoryJobStore::new();
    let pushed = jobs::submit(
        &mut idle,
        &idle_store,
        "idle",
        vec![("k".to_owned(), "never run".to_owned())],
    )
    .await
    .unwrap();
    assert_eq!(pushed.pushed, 1);
    let idle_sql = "SELECT count(*) FROM apalis.jobs WHERE job_type = 'llm-batches-idle'";
    let prune_idle = || jobs::prune_postgres_queue(&pool, "llm-batches-idle", Duration::ZERO);
    assert_eq!(prune_idle().await.unwrap(), Some(0));
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Failed', attempts = 1, max_attempts = 25, \
         done_at = now() - interval '1 hour' WHERE job_type = 'llm-batches-idle'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        prune_idle().await.unwrap(),
        Some(0),
        "a retry is not pruned"
    );
    assert_eq!(count(idle_sql).await, 1);
    sqlx::query("UPDATE apalis.jobs SET attempts = 25 WHERE job_type = 'llm-batches-idle'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(prune_idle().await.unwrap(), Some(1));
    assert_eq!(count(idle_sql).await, 0);

    // One pruner at a time: another process holding the turn, a call skips.
    let mut holder = pool.begin().await.unwrap();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(0x746f_7765_725f_6a70_i64)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    assert!(held);
    assert_eq!(prune_idle().await.unwrap(), None);
    holder.rollback().await.unwrap();
    assert_eq!(prune_idle().await.unwrap(), Some(0));
    for worker in workers {
        worker.abort();
    }
}
