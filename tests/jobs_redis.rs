//! Batches as jobs (feature `apalis`): the job store's contract on memory and on
//! a real `redis-server`, and whole batches run by several apalis workers on
//! Redis, with seeded failures, duplicate deliveries, a worker killed mid-run,
//! a `Retry-After` that pauses every worker, and a re-submission.
#![cfg(feature = "apalis")]

#[path = "support/job_store_contract.rs"]
mod contract;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use contract::contract;
use redis_server::RedisServer;
use tower::service_fn;
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::jobs::{
    self, BatchWorker, ItemJob, ItemState, JobStore, MemoryJobStore, Progress,
};
use tower_llm_resilience::partial_batch::ItemOutcome;
use tower_llm_resilience::redis::RedisJobStore;
use tower_llm_resilience::BoxError;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("item-{i:04}")).collect()
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    contract(&MemoryJobStore::new()).await;
}

#[tokio::test]
async fn the_redis_store_keeps_the_contract() {
    let redis = RedisServer::start();
    let store = RedisJobStore::new(redis::Client::open(redis.url()).unwrap())
        .unwrap()
        .prefix("contract");
    contract(&store).await;
    // Another prefix is another namespace.
    let other = RedisJobStore::new(redis::Client::open(redis.url()).unwrap())
        .unwrap()
        .prefix("other");
    assert_eq!(other.progress("b").await.unwrap(), None);
}

#[tokio::test]
async fn a_result_over_the_bound_is_recorded_as_a_failure() {
    let redis = RedisServer::start();
    let store = RedisJobStore::new(redis::Client::open(redis.url()).unwrap())
        .unwrap()
        .max_result_bytes(100);
    store.open("b", &keys(1)).await.unwrap();
    let big = format!("\"{}\"", "x".repeat(200));
    assert!(store.succeed("b", "item-0000", &big, 1).await.unwrap());
    let page = store.items("b", None, 10).await.unwrap();
    match &page.items[0].1 {
        ItemState::Failed { failure, .. } => {
            assert_eq!(failure.kind, FailureKind::InvalidResponse);
            assert!(failure.message.contains("100 bytes"), "{}", failure.message);
        }
        other => panic!("{other:?}"),
    }
}

/// What the seeded upstream does with an item: by its index.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    Ok,
    /// A 400: fatal, never retried.
    Fatal,
    /// A 429 with `Retry-After` on the first call, then an answer.
    RateLimitedOnce,
    /// A 500 on the first call, then an answer.
    ServerErrorOnce,
}

fn plan(index: usize) -> Plan {
    match index % 10 {
        3 => Plan::Fatal,
        7 => Plan::RateLimitedOnce,
        9 => Plan::ServerErrorOnce,
        _ => Plan::Ok,
    }
}

/// The mock upstream: counts calls and successes per item, and when each call
/// started.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<HashMap<String, u32>>>,
    successes: Arc<Mutex<HashMap<String, u32>>>,
    starts: Arc<Mutex<Vec<(String, Instant)>>>,
    retry_after: Duration,
    latency: Duration,
}

impl Upstream {
    fn service(
        &self,
    ) -> impl tower::Service<
        String,
        Response = String,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<String, BoxError>> + Send,
    > + Clone
           + Send
           + 'static {
        let this = self.clone();
        service_fn(move |key: String| {
            let this = this.clone();
            async move {
                this.starts
                    .lock()
                    .unwrap()
                    .push((key.clone(), Instant::now()));
                let call = {
                    let mut calls = this.calls.lock().unwrap();
                    let n = calls.entry(key.clone()).or_default();
                    *n += 1;
                    *n
                };
                tokio::time::sleep(this.latency).await;
                let index: usize = key[5..].parse().unwrap();
                let fail =
                    |kind| Err(ClassifiedError::new(kind, format!("{key}: call {call}")).into());
                match plan(index) {
                    Plan::Fatal => return fail(FailureKind::BadRequest),
                    Plan::RateLimitedOnce if call == 1 => {
                        return fail(FailureKind::RateLimited {
                            retry_after: Some(this.retry_after),
                        })
                    }
                    Plan::ServerErrorOnce if call == 1 => return fail(FailureKind::ServerError),
                    _ => {}
                }
                *this
                    .successes
                    .lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default() += 1;
                Ok(format!("answer to {key}"))
            }
        })
    }

    fn successes(&self) -> HashMap<String, u32> {
        self.successes.lock().unwrap().clone()
    }
}

/// The storage settings of `queue`, with fast heartbeats (a dead worker's jobs
/// go to the others after 2 s).
fn queue_config(queue: &str) -> apalis_redis::Config {
    jobs::redis_storage_config(queue)
        .heartbeat_interval(Duration::from_millis(500))
        .missed_heartbeats(4)
}

/// A submitter's side of `queue`: the storage and its connection.
struct Sink {
    storage: RedisStorage<ItemJob<String>>,
    conn: redis::aio::ConnectionManager,
    config: apalis_redis::Config,
}

impl Sink {
    async fn new(redis: &RedisServer, queue: &str) -> Sink {
        let conn = redis::Client::open(redis.url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        Sink {
            storage: RedisStorage::new(conn.clone()).with_config(queue_config(queue)),
            conn,
            config: queue_config(queue),
        }
    }

    async fn submit(
        &mut self,
        store: &RedisJobStore,
        batch: &str,
        items: Vec<(String, String)>,
    ) -> jobs::Submitted {
        jobs::submit_to_redis(
            &mut self.storage,
            &self.conn,
            &self.config,
            store,
            batch,
            items,
        )
        .await
        .unwrap()
    }
}

/// A worker on its own runtime and thread (as another machine would be);
/// dropping the returned runtime kills it without a goodbye.
fn start_worker(
    redis: &RedisServer,
    queue: &str,
    store: &RedisJobStore,
    upstream: &Upstream,
    name: &str,
    lease: Duration,
) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, queue, store, upstream, name) = (
        redis.url(),
        queue.to_owned(),
        store.clone(),
        upstream.clone(),
        name.to_owned(),
    );
    runtime.spawn(async move {
        let conn = redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let storage =
            RedisStorage::<ItemJob<String>>::new(conn.clone()).with_config(queue_config(&queue));
        let _promoter =
            jobs::spawn_redis_promoter(conn, queue_config(&queue), Duration::from_millis(100));
        let service = BatchWorker::builder(store)
            .classifier(ErrorOnlyClassifier)
            .max_attempts(3)
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .lease(lease)
            .name(name.clone())
            .seed(7)
            .build(upstream.service())
            .unwrap();
        let worker = WorkerBuilder::new(format!("{name}-{}", fastrand::u32(..)))
            .backend(storage)
            .concurrency(8)
            .build(service);
        let _ = worker.run().await;
    });
    runtime
}

/// Polls the batch's progress until it is finished (bounded).
async fn wait_finished(store: &RedisJobStore, batch: &str, deadline: Duration) -> Progress {
    let started = Instant::now();
    loop {
        let progress = store.progress(batch).await.unwrap().unwrap();
        if progress.is_finished() {
            return progress;
        }
        assert!(
            started.elapsed() < deadline,
            "the batch did not finish within {deadline:?}: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn items(n: usize) -> Vec<(String, String)> {
    keys(n).into_iter().map(|k| (k.clone(), k)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_a_seeded_batch_once_per_item_and_the_report_is_exact() {
    let redis = RedisServer::start();
    let store = RedisJobStore::new(redis::Client::open(redis.url()).unwrap())
        .unwrap()
        .prefix("t1");
    let upstream = Upstream {
        retry_after: Duration::from_millis(300),
        ..Upstream::default()
    };
    let n = 300;
    let mut sink = Sink::new(&redis, "q1").await;
    let submitted = sink.submit(&store, "batch-1", items(n)).await;
    assert_eq!(submitted.pushed, n);
    // The same item pushed twice more (as a crashed submitter retrying would):
    // delivered three times, called once.
    for _ in 0..2 {
        sink.storage
            .push(ItemJob {
                batch_id: "batch-1".into(),
                key: "item-0000".into(),
                request: "item-0000".into(),
            })
            .await
            .unwrap();
    }

    let workers: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            start_worker(
                &redis,
                "q1",
                &store,
                &upstream,
                name,
                Duration::from_secs(5),
            )
        })
        .collect();
    let progress = wait_finished(&store, "batch-1", Duration::from_secs(60)).await;
    let fatal = (0..n).filter(|i| plan(*i) == Plan::Fatal).count();
    assert_eq!(
        (progress.total, progress.done, progress.failed),
        (n, n - fatal, fatal)
    );

    // No item called to success twice; fatal items called once, retried ones twice.
    let successes = upstream.successes();
    assert_eq!(successes.len(), n - fatal);
    assert!(successes.values().all(|&s| s == 1), "{successes:?}");
    let calls = upstream.calls.lock().unwrap().clone();
    for (i, key) in keys(n).iter().enumerate() {
        let expected = match plan(i) {
            Plan::Ok | Plan::Fatal => 1,
            Plan::RateLimitedOnce | Plan::ServerErrorOnce => 2,
        };
        assert_eq!(calls[key], expected, "{key}");
    }

    let report = jobs::report::<String>(&store, "batch-1", 10_000)
        .await
        .unwrap()
        .expect("the batch is known");
    let summary = &report.report;
    assert_eq!(
        (summary.ok, summary.failed, summary.unfinished),
        (n - fatal, fatal, 0)
    );
    assert_eq!(summary.items.len(), n);
    for (i, item) in summary.items.iter().enumerate() {
        assert_eq!(item.key, keys(n)[i]);
        match (&item.outcome, plan(i)) {
            (ItemOutcome::Failed(failure), Plan::Fatal) => {
                assert_eq!(failure.kind, FailureKind::BadRequest);
                assert!(failure.fatal);
                assert_eq!(item.attempts, 1);
            }
            (ItemOutcome::Success(answer), Plan::RateLimitedOnce | Plan::ServerErrorOnce) => {
                assert_eq!(answer, &format!("answer to {}", item.key));
                assert_eq!(item.attempts, 2);
            }
            (ItemOutcome::Success(_), Plan::Ok) => assert_eq!(item.attempts, 1),
            (outcome, plan) => panic!("{}: {outcome:?} for {plan:?}", item.key),
        }
    }

    // The Retry-After of any item paused every worker: no call started in the
    // 300 ms after a rate-limited call began (less the scheduling slack of the
    // calls already past their pause check).
    let starts = upstream.starts.lock().unwrap().clone();
    let first_limited = starts
        .iter()
        .find(|(key, _)| plan(key[5..].parse().unwrap()) == Plan::RateLimitedOnce)
        .map(|(_, at)| *at)
        .unwrap();
    let during = starts
        .iter()
        .filter(|(_, at)| {
            *at > first_limited + Duration::from_millis(50)
                && *at < first_limited + Duration::from_millis(250)
        })
        .count();
    assert_eq!(during, 0, "calls started while the batch was paused");

    // Submitted again: nothing left to do, nothing pushed.
    let again = sink.submit(&store, "batch-1", items(n)).await;
    assert_eq!(again.already_done, n - fatal);
    assert_eq!(again.pushed, fatal, "only the failed items run again");
    for worker in workers {
        worker.shutdown_background();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_leaves_its_items_to_the_others() {
    let redis = RedisServer::start();
    let store = RedisJobStore::new(redis::Client::open(redis.url()).unwrap())
        .unwrap()
        .prefix("t2");
    let upstream = Upstream {
        latency: Duration::from_millis(100),
        retry_after: Duration::from_millis(10),
        ..Upstream::default()
    };
    let n = 120;
    let mut sink = Sink::new(&redis, "q2").await;
    sink.submit(&store, "batch-2", items(n)).await;
    let lease = Duration::from_millis(1500);
    let victim = start_worker(&redis, "q2", &store, &upstream, "victim", lease);
    // Let the victim take items, then kill it while calls are in flight.
    let started = Instant::now();
    loop {
        let progress = store.progress("batch-2").await.unwrap().unwrap();
        if progress.in_flight > 0 && progress.done > 5 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{progress:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.shutdown_background();
    let orphaned = store.progress("batch-2").await.unwrap().unwrap();
    assert!(orphaned.in_flight > 0, "{orphaned:?}");

    let others: Vec<_> = ["b", "c"]
        .iter()
        .map(|name| start_worker(&redis, "q2", &store, &upstream, name, lease))
        .collect();
    let progress = wait_finished(&store, "batch-2", Duration::from_secs(60)).await;
    let fatal = (0..n).filter(|i| plan(*i) == Plan::Fatal).count();
    assert_eq!((progress.done, progress.failed), (n - fatal, fatal));
    let successes = upstream.successes();
    assert_eq!(successes.len(), n - fatal);
    // The victim's calls in flight were cut before they answered (the mock
    // counts a success when it answers): each item answered exactly once.
    assert!(successes.values().all(|&s| s == 1), "{successes:?}");
    for worker in others {
        worker.shutdown_background();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_9000_jobs_does_not_stop_the_workers() {
    let redis = RedisServer::start();
    let store = RedisJobStore::new(redis::Client::open(redis.url()).unwrap())
        .unwrap()
        .prefix("t3");
    let n = 9000;
    // Submitted with no worker running: apalis-redis 1.0.0 would leave all of
    // them in its scheduled set, and its workers' first fetch would move them
    // in one Lua `unpack` past the 8,000 limit and stop.
    let mut sink = Sink::new(&redis, "q3").await;
    assert_eq!(sink.submit(&store, "batch-3", items(n)).await.pushed, n);
    let mut conn = sink.conn.clone();
    let scheduled: usize = redis::cmd("ZCARD")
        .arg(sink.config.scheduled_jobs_set())
        .query_async(&mut conn)
        .await
        .unwrap();
    let active: usize = redis::cmd("LLEN")
        .arg(sink.config.active_jobs_list())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (scheduled, active),
        (0, n),
        "moved to the active list in chunks"
    );

    let upstream = Upstream::default();
    let workers: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            start_worker(
                &redis,
                "q3",
                &store,
                &upstream,
                name,
                Duration::from_secs(5),
            )
        })
        .collect();
    let progress = wait_finished(&store, "batch-3", Duration::from_secs(120)).await;
    let fatal = (0..n).filter(|i| plan(*i) == Plan::Fatal).count();
    assert_eq!((progress.done, progress.failed), (n - fatal, fatal));
    assert!(upstream.successes().values().all(|&s| s == 1));

    // The finished jobs are pruned (once apalis has acknowledged them all), a
    // thousand at a time, with their data.
    let finished = |conn: redis::aio::ConnectionManager| {
        let config = sink.config.clone();
        async move {
            let mut conn = conn;
            let (done, dead): (usize, usize) = redis::pipe()
                .cmd("SCARD")
                .arg(config.done_jobs_set())
                .cmd("SCARD")
                .arg(config.dead_jobs_set())
                .query_async(&mut conn)
                .await
                .unwrap();
            done + dead
        }
    };
    let started = Instant::now();
    while finished(conn.clone()).await < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not all acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hour = Duration::from_secs(3600);
    assert_eq!(
        jobs::prune_redis_queue(&mut conn, &sink.config, hour)
            .await
            .unwrap(),
        0,
        "nothing finished an hour ago"
    );
    let data_len = |mut conn: redis::aio::ConnectionManager, key: String| async move {
        redis::cmd("HLEN")
            .arg(key)
            .query_async::<usize>(&mut conn)
            .await
            .unwrap()
    };
    assert!(data_len(conn.clone(), sink.config.job_data_hash()).await >= n);
    let pruned = jobs::prune_redis_queue(&mut conn, &sink.config, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pruned, n);
    assert_eq!(finished(conn.clone()).await, 0);
    assert_eq!(data_len(conn.clone(), sink.config.job_data_hash()).await, 0);
    let metas: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", sink.config.job_meta_hash()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(metas.is_empty(), "{} metadata keys left", metas.len());
    assert_eq!(
        jobs::prune_redis_queue(&mut conn, &sink.config, Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    for worker in workers {
        worker.shutdown_background();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_runs_to_its_end_when_apalis_drops_its_future() {
    // An apalis 1.0.0 worker stopped by a queue error drops the futures of the
    // jobs in flight: the item's call goes on, and its success is recorded.
    let store = Arc::new(jobs::MemoryJobStore::new());
    store.open("b", &["k".to_owned()]).await.unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Notify::new());
    let (in_call, release) = (started.clone(), gate.clone());
    let llm = service_fn(move |prompt: String| {
        let (in_call, release) = (in_call.clone(), release.clone());
        async move {
            in_call.notify_one();
            release.notified().await;
            Ok::<_, BoxError>(format!("answer to {prompt}"))
        }
    });
    let mut worker = BatchWorker::builder_shared(store.clone())
        .classifier(ErrorOnlyClassifier)
        .build(llm)
        .unwrap();
    let task = TaskBuilder::new(ItemJob {
        batch_id: "b".to_owned(),
        key: "k".to_owned(),
        request: "k".to_owned(),
    })
    .build();
    let delivery = tower::Service::call(&mut worker, task);
    // Polled once by apalis, say: the call is under way.
    let mut delivery = Box::pin(delivery);
    assert!(futures_util::poll!(delivery.as_mut()).is_pending());
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the call started");
    drop(delivery);
    gate.notify_one();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let progress = store.progress("b").await.unwrap().unwrap();
        if progress.done == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not recorded: {progress:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
