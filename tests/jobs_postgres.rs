//! The job store on a real PostgreSQL (features `apalis` and `postgres`): the
//! shared contract, two instances racing for one item, the result bound, keys
//! paged in byte order, and expired batches gone.
#![cfg(all(feature = "apalis", feature = "postgres"))]

#[path = "support/job_store_contract.rs"]
mod contract;
#[path = "support/postgres.rs"]
mod postgres_server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis::prelude::Task;
use contract::contract;
use postgres_server::TestDb;
use tower::{service_fn, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::jobs::{self, BatchWorker, Claim, ItemJob, ItemState, JobStore};
use tower_llm_resilience::partial_batch::ItemOutcome;
use tower_llm_resilience::postgres::PostgresJobStore;
use tower_llm_resilience::BoxError;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("item-{i:04}")).collect()
}

/// Opens every connection of `store`'s pool (8 in the tests), so that what
/// follows does not wait for connections to be made.
async fn warm(store: &PostgresJobStore) {
    let gate = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, gate) = (store.clone(), gate.clone());
            tokio::spawn(async move {
                gate.wait().await;
                store.progress("warm-up").await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_contract() {
    let db = TestDb::fresh();
    let store = PostgresJobStore::new(&db.migrated().await);
    contract(&store).await;
    // A second instance on its own pool sees the same batch.
    let other = PostgresJobStore::new(&db.postgres());
    let progress = other.progress("b").await.unwrap().unwrap();
    // The contract ends with one item done and two held (the failed one reopened).
    assert_eq!(
        (
            progress.total,
            progress.done,
            progress.failed,
            progress.in_flight
        ),
        (3, 1, 0, 2)
    );
    assert_eq!(other.progress("never-opened").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_for_one_item_claim_it_once() {
    let db = TestDb::fresh();
    let a = Arc::new(PostgresJobStore::new(&db.migrated().await));
    let b = Arc::new(PostgresJobStore::new(&db.postgres()));
    a.open("race", &keys(1)).await.unwrap();
    warm(&a).await;
    warm(&b).await;
    let lease = Duration::from_secs(30);
    // A transaction holds the item's row: every claim that starts now sees
    // it pending and queues on the row; when it lets go, one claim takes the
    // item and the others find it taken (and look again: held).
    let (blocker, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    blocker
        .batch_execute(
            "BEGIN; SELECT 1 FROM tower_llm_job_items WHERE batch_id = 'race' FOR UPDATE",
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                store
                    .claim("race", "item-0000", &format!("w{i}"), lease)
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Every connection of both pools (8 each) waits on the row.
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = blocker
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= 16 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{waiting} waiting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    blocker.batch_execute("COMMIT").await.unwrap();
    let mut claimed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Claim::Claimed { attempts, .. } => {
                assert_eq!(attempts, 0);
                claimed += 1;
            }
            Claim::Held(wait) => assert!(wait <= lease, "{wait:?}"),
            other => panic!("claimed or held expected, got {other:?}"),
        }
    }
    assert_eq!(claimed, 1, "exactly one claim wins");
    let page = a.items("race", None, 10).await.unwrap();
    match &page.items[0].1 {
        ItemState::Running { attempts, .. } => assert_eq!(*attempts, 1, "one call counted"),
        other => panic!("{other:?}"),
    }

    // Racing to record it: one result kept.
    let results: Vec<_> = (0..10)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                store
                    .succeed("race", "item-0000", &format!("\"{i}\""), 1)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut recorded = 0;
    for result in results {
        recorded += usize::from(result.await.unwrap());
    }
    assert_eq!(recorded, 1, "exactly one success recorded");
    let progress = b.progress("race").await.unwrap().unwrap();
    assert_eq!((progress.done, progress.in_flight), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_bound_is_recorded_as_a_failure() {
    let db = TestDb::fresh();
    let store = PostgresJobStore::new(&db.migrated().await).max_result_bytes(100);
    store.open("b", &keys(2)).await.unwrap();
    let big = format!("\"{}\"", "x".repeat(200));
    assert!(store.succeed("b", "item-0000", &big, 1).await.unwrap());
    let small = format!("\"{}\"", "x".repeat(90));
    assert!(store.succeed("b", "item-0001", &small, 1).await.unwrap());
    let page = store.items("b", None, 10).await.unwrap();
    match &page.items[0].1 {
        ItemState::Failed { failure, attempts } => {
            assert_eq!(failure.kind, FailureKind::InvalidResponse);
            assert!(failure.message.contains("100 bytes"), "{}", failure.message);
            assert_eq!(*attempts, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        page.items[1].1,
        ItemState::Done {
            response_json: small,
            attempts: 1
        }
    );
    // The failed one runs again on the next submission.
    let again = store.open("b", &keys(2)).await.unwrap();
    assert_eq!(again.to_submit, ["item-0000"]);
    assert_eq!(again.already_done, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_paged_in_byte_order_and_big_submissions_in_chunks() {
    let db = TestDb::fresh();
    let store = PostgresJobStore::new(&db.migrated().await);
    // Byte order, as Redis's ZRANGEBYLEX: upper case before lower, 'é' last.
    let odd: Vec<String> = ["b", "B", "a", "é", "A", "a b"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    let opened = store.open("odd", &odd).await.unwrap();
    assert_eq!(opened.to_submit, odd, "in the order given");
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.items("odd", after.as_deref(), 2).await.unwrap();
        seen.extend(page.items.into_iter().map(|(k, _)| k));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut sorted = odd.clone();
    sorted.sort();
    assert_eq!(seen, sorted);

    // 2,500 keys: three statements; a key given twice is submitted twice.
    let mut many = keys(2500);
    many.push("item-0000".into());
    let opened = store.open("many", &many).await.unwrap();
    assert_eq!(opened.to_submit, many);
    let progress = store.progress("many").await.unwrap().unwrap();
    assert_eq!((progress.total, progress.pending), (2500, 2500));
    let last = store.items("many", Some("item-2498"), 1000).await.unwrap();
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.next, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_batch_is_gone() {
    let db = TestDb::fresh();
    let store = PostgresJobStore::new(&db.migrated().await);
    store.open("old", &keys(3)).await.unwrap();
    assert!(matches!(
        store
            .claim("old", "item-0000", "w", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed { .. }
    ));
    assert!(store.succeed("old", "item-0000", "\"a\"", 1).await.unwrap());
    store.open("kept", &keys(1)).await.unwrap();
    // Its time passed (set in the database: no waiting).
    db.server.psql(
        &db.name,
        "UPDATE tower_llm_job_batches SET expires_at = now() - interval '1 second'
         WHERE batch_id = 'old'",
    );
    assert_eq!(store.progress("old").await.unwrap(), None);
    assert_eq!(
        store
            .claim("old", "item-0001", "w", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Unknown
    );
    assert!(store.items("old", None, 10).await.unwrap().items.is_empty());
    assert!(!store
        .renew("old", "item-0000", "w", Duration::from_secs(30), false)
        .await
        .unwrap());

    // The next submission deletes it, with its items.
    store.open("new", &keys(1)).await.unwrap();
    assert_eq!(
        db.server.psql(
            &db.name,
            "SELECT string_agg(batch_id, ',' ORDER BY batch_id) FROM tower_llm_job_batches"
        ),
        "kept,new"
    );
    assert_eq!(
        db.server.psql(
            &db.name,
            "SELECT count(*) FROM tower_llm_job_items WHERE batch_id = 'old'"
        ),
        "0"
    );
    // Opened again, it starts anew: the item done before runs again.
    let again = store.open("old", &keys(3)).await.unwrap();
    assert_eq!(again.to_submit, keys(3));
    let first = store.items("old", None, 1).await.unwrap();
    assert_eq!(first.items[0].1, ItemState::Pending { attempts: 0 });

    // A result recorded for an expired batch starts it anew too.
    db.server.psql(
        &db.name,
        "UPDATE tower_llm_job_batches SET expires_at = now() - interval '1 second'
         WHERE batch_id = 'kept'",
    );
    assert!(store.succeed("kept", "other", "\"b\"", 1).await.unwrap());
    let progress = store.progress("kept").await.unwrap().unwrap();
    assert_eq!((progress.total, progress.done), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_workers_on_two_pools_run_each_item_once_and_the_report_is_exact() {
    let db = TestDb::fresh();
    let stores = [
        PostgresJobStore::new(&db.migrated().await),
        PostgresJobStore::new(&db.postgres()),
    ];
    // Both pools connected before the clock of the leases starts (a debug
    // build's password exchange is slow enough to outlast a short lease).
    for store in &stores {
        warm(store).await;
    }
    let n = 40;
    let opened = stores[0].open("batch", &keys(n)).await.unwrap();
    assert_eq!(opened.to_submit.len(), n);

    // The upstream: every tenth item (from the 4th) a fatal 400, every tenth
    // (from the 10th) a 500 on its first call; it counts calls per item.
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let upstream = {
        let calls = calls.clone();
        service_fn(move |key: String| {
            let calls = calls.clone();
            async move {
                let call = {
                    let mut calls = calls.lock().unwrap();
                    let n = calls.entry(key.clone()).or_default();
                    *n += 1;
                    *n
                };
                let index: usize = key[5..].parse().unwrap();
                match index % 10 {
                    3 => Err(ClassifiedError::new(FailureKind::BadRequest, "bad").into()),
                    9 if call == 1 => {
                        Err(ClassifiedError::new(FailureKind::ServerError, "down").into())
                    }
                    _ => Ok::<_, BoxError>(format!("answer to {key}")),
                }
            }
        })
    };
    let workers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            BatchWorker::builder(store.clone())
                .classifier(ErrorOnlyClassifier)
                .max_attempts(3)
                .backoff(Duration::from_millis(5), Duration::from_millis(20))
                .lease(Duration::from_secs(2))
                .name(format!("w{i}"))
                .seed(7)
                .build(upstream.clone())
                .unwrap()
        })
        .collect();
    // Every job delivered to both workers at once (apalis delivers at least once).
    let mut deliveries = Vec::new();
    for key in keys(n) {
        for worker in &workers {
            let job = ItemJob {
                batch_id: "batch".into(),
                key: key.clone(),
                request: key.clone(),
            };
            deliveries.push((
                key.clone(),
                tokio::spawn(worker.clone().oneshot(Task::new(job))),
            ));
        }
    }
    let mut outcomes: HashMap<String, Vec<String>> = HashMap::new();
    for (key, delivery) in deliveries {
        let outcome = match delivery.await.unwrap() {
            // A fatal failure aborts the job (apalis does not retry it).
            Err(_) => "aborted".to_owned(),
            Ok(outcome) => format!("{outcome:?}"),
        };
        outcomes.entry(key).or_default().push(outcome);
    }
    for (i, key) in keys(n).iter().enumerate() {
        let mut seen = outcomes.remove(key).unwrap();
        seen.sort();
        // One delivery ran it; the other found it finished.
        let expected = if i % 10 == 3 {
            ["AlreadyFailed", "aborted"]
        } else {
            ["AlreadyDone", "Done"]
        };
        assert_eq!(
            seen,
            expected,
            "{key}: {:?}",
            calls.lock().unwrap().get(key)
        );
    }
    let calls = calls.lock().unwrap().clone();
    for (i, key) in keys(n).iter().enumerate() {
        let expected = if i % 10 == 9 { 2 } else { 1 };
        assert_eq!(calls[key], expected, "{key}: called once per attempt");
    }
    let fatal = (0..n).filter(|i| i % 10 == 3).count();
    let report = jobs::report::<String>(&stores[1], "batch", 1000)
        .await
        .unwrap()
        .expect("the batch is known");
    assert_eq!(
        (
            report.progress.done,
            report.progress.failed,
            report.progress.in_flight
        ),
        (n - fatal, fatal, 0)
    );
    assert_eq!(report.report.items.len(), n);
    for (i, item) in report.report.items.iter().enumerate() {
        assert_eq!(item.key, keys(n)[i]);
        match &item.outcome {
            ItemOutcome::Failed(failure) => {
                assert_eq!((i % 10, failure.kind.clone()), (3, FailureKind::BadRequest));
                assert_eq!(item.attempts, 1);
            }
            ItemOutcome::Success(answer) => {
                assert_eq!(answer, &format!("answer to {}", item.key));
                assert_eq!(item.attempts, if i % 10 == 9 { 2 } else { 1 });
            }
            other => panic!("{}: {other:?}", item.key),
        }
    }
    // Submitted again: only the failed items run again.
    let again = stores[1].open("batch", &keys(n)).await.unwrap();
    assert_eq!(again.already_done, n - fatal);
    assert_eq!(again.to_submit.len(), fatal);
}

/// A claim as far as both stores must agree (a held item's wait and a
/// running item's lease depend on each store's clock).
fn comparable_claim(claim: Claim) -> String {
    match claim {
        Claim::Claimed { attempts, .. } => format!("claimed after {attempts}"),
        Claim::Held(_) => "held".into(),
        other => format!("{other:?}"),
    }
}

fn comparable_state(state: &ItemState) -> String {
    match state {
        ItemState::Running {
            worker, attempts, ..
        } => format!("running by {worker} after {attempts}"),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_operations_answer_as_the_memory_store_does() {
    let db = TestDb::fresh();
    let postgres = PostgresJobStore::new(&db.migrated().await);
    let memory = tower_llm_resilience::jobs::MemoryJobStore::new();
    let stores: [&dyn JobStore; 2] = [&memory, &postgres];
    let mut rng = fastrand::Rng::with_seed(22);
    let all = keys(10);
    let workers = ["w1", "w2", "w3"];
    let lease = Duration::from_secs(60);
    let failure = tower_llm_resilience::partial_batch::ItemFailure {
        kind: FailureKind::ServerError,
        message: "down".into(),
        fatal: false,
    };
    for step in 0..800 {
        let key = all[rng.usize(..all.len())].as_str();
        let worker = workers[rng.usize(..workers.len())];
        // Weighted so that items go round (a success is final): open 6, claim
        // 12, renew 6, succeed 1, fail 5, release 4, read 6 in 40.
        let weights = [6, 12, 6, 1, 5, 4, 6];
        let mut draw = rng.usize(..40);
        let op = weights
            .iter()
            .position(|w| {
                let hit = draw < *w;
                draw = draw.saturating_sub(*w);
                hit
            })
            .unwrap();
        let batch = ["m", "n"][rng.usize(..2)];
        let some: Vec<String> = all.iter().filter(|_| rng.bool()).cloned().collect();
        let mut answers = Vec::new();
        for store in stores {
            let answer = match op {
                0 => {
                    let opened = store.open(batch, &some).await.unwrap();
                    format!(
                        "{:?} {} {}",
                        opened.to_submit, opened.already_done, opened.running
                    )
                }
                1 => comparable_claim(store.claim(batch, key, worker, lease).await.unwrap()),
                2 => store
                    .renew(batch, key, worker, lease, step % 2 == 0)
                    .await
                    .unwrap()
                    .to_string(),
                3 => store
                    .succeed(batch, key, &format!("\"{step}\""), step)
                    .await
                    .unwrap()
                    .to_string(),
                4 => store
                    .fail(batch, key, &failure, step)
                    .await
                    .unwrap()
                    .to_string(),
                5 => {
                    store.release(batch, key, worker).await.unwrap();
                    String::new()
                }
                _ => {
                    let page = store.items(batch, Some(key), 3).await.unwrap();
                    let items: Vec<_> = page
                        .items
                        .iter()
                        .map(|(k, s)| format!("{k}: {}", comparable_state(s)))
                        .collect();
                    format!(
                        "{items:?} {:?} {:?}",
                        page.next,
                        store.progress(batch).await.unwrap()
                    )
                }
            };
            answers.push(answer);
        }
        assert_eq!(
            answers[0], answers[1],
            "step {step}, op {op}, {batch}, {key}, {worker}"
        );
    }
}
