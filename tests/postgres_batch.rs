//! Batch idempotency records shared through a real PostgreSQL: a batch run on one
//! instance and re-run on another, bounded in total size and in time.
#![cfg(feature = "postgres")]

#[path = "support/postgres.rs"]
mod postgres_server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres_server::TestDb;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::partial_batch::{
    Batch, BatchError, BatchReport, BatchStore, PartialBatchLayer, StoredSuccess,
};
use tower_llm_resilience::postgres::PostgresBatchStore;
use tower_llm_resilience::BoxError;

/// An instance: a partial-batch layer on the shared store (its own pool), over
/// an "LLM" that cannot summarise documents longer than `max_len`, counting its
/// calls.
async fn instance(
    db: &TestDb,
    max_len: usize,
) -> (
    impl Service<Batch<String>, Response = BatchReport<String>, Error = BatchError>,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let summarise = service_fn(move |doc: String| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if doc.len() > max_len {
                Err::<String, BoxError>(
                    ClassifiedError::new(FailureKind::ContextLengthExceeded, "too long").into(),
                )
            } else {
                Ok(format!("summary of {doc}"))
            }
        }
    });
    let layer = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .store(PostgresBatchStore::new(&db.migrated().await))
        .build()
        .unwrap();
    (layer.layer(summarise), calls)
}

fn docs() -> Batch<String> {
    Batch::from_pairs([
        ("a", "short".to_string()),
        ("b", "brief".to_string()),
        ("c", "a document far too long to fit".to_string()),
    ])
    .with_id("nightly-2024-05-01")
}

fn success(text: &str) -> StoredSuccess {
    StoredSuccess {
        response_json: format!("\"{text}\""),
        attempts: 1,
    }
}

fn keys(loaded: &HashMap<String, StoredSuccess>) -> Vec<&str> {
    let mut keys: Vec<&str> = loaded.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_rerun_on_b_gets_a_successes_from_the_store() {
    let db = TestDb::fresh();
    let (mut on_a, calls_a) = instance(&db, 20).await;
    let first = on_a.ready().await.unwrap().call(docs()).await.unwrap();
    assert_eq!((first.ok, first.failed, first.cached), (2, 1, 0));
    assert_eq!(calls_a.load(Ordering::SeqCst), 3);

    // Instance B (a bigger context window) re-runs the same batch id.
    let (mut on_b, calls_b) = instance(&db, 100).await;
    let again = on_b.ready().await.unwrap().call(docs()).await.unwrap();
    assert_eq!((again.ok, again.failed, again.cached), (3, 0, 2));
    assert_eq!(calls_b.load(Ordering::SeqCst), 1, "only c is sent again");
    assert!(again.get("a").unwrap().from_store);
    assert!(!again.get("c").unwrap().from_store);
    assert_eq!(
        again.get("a").unwrap().response(),
        Some(&"summary of short".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_load_forget_and_expire() {
    let db = TestDb::fresh();
    let pg = db.migrated().await;
    let store = PostgresBatchStore::new(&pg);
    let hi = StoredSuccess {
        response_json: "\"hi\"".into(),
        attempts: 2,
    };
    store.record("b1", "k1", hi.clone()).await.unwrap();
    store.record("b1", "k2", success("first")).await.unwrap();
    // Recording a key again replaces it.
    store.record("b1", "k2", hi.clone()).await.unwrap();
    let loaded = store.load("b1").await.unwrap();
    assert_eq!(
        loaded,
        HashMap::from([("k1".into(), hi.clone()), ("k2".into(), hi.clone())])
    );
    assert!(store.load("other").await.unwrap().is_empty());
    store.forget("b1").await.unwrap();
    assert!(store.load("b1").await.unwrap().is_empty());
    assert_eq!(
        db.server
            .psql(&db.name, "SELECT count(*) FROM tower_llm_batch_items"),
        "0"
    );

    // A short-lived store: the batch is gone once its deadline passes (the
    // database's clock), and nothing of it is loaded again.
    let short = PostgresBatchStore::new(&pg).ttl(Duration::from_millis(200));
    short.record("b2", "k1", hi.clone()).await.unwrap();
    assert_eq!(keys(&short.load("b2").await.unwrap()), ["k1"]);
    // (Loading would run it again: wait on the clock alone.)
    let started = Instant::now();
    while db.server.psql(
        &db.name,
        "SELECT count(*) FROM tower_llm_batch_runs WHERE expires_at > now()",
    ) != "0"
    {
        assert!(started.elapsed() < Duration::from_secs(15), "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(short.load("b2").await.unwrap().is_empty());
    // Recording into it again starts a new run: the expired items do not return.
    short.record("b2", "k2", hi.clone()).await.unwrap();
    assert_eq!(keys(&short.load("b2").await.unwrap()), ["k2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_run_batch_goes_first_whichever_instance_records() {
    let db = TestDb::fresh();
    let a = PostgresBatchStore::new(&db.migrated().await).max_records(4);
    let b = PostgresBatchStore::new(&db.migrated().await).max_records(4);
    for key in ["k1", "k2"] {
        a.record("first", key, success(key)).await.unwrap();
        b.record("second", key, success(key)).await.unwrap();
    }
    // Loading "first" runs it again: "second" is now the least recently run.
    assert_eq!(keys(&b.load("first").await.unwrap()), ["k1", "k2"]);
    a.record("third", "k1", success("k1")).await.unwrap();
    assert!(a.load("second").await.unwrap().is_empty(), "second evicted");
    assert_eq!(keys(&b.load("first").await.unwrap()), ["k1", "k2"]);
    assert_eq!(keys(&b.load("third").await.unwrap()), ["k1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_alone_over_the_bounds_stops_growing() {
    let db = TestDb::fresh();
    let pg = db.migrated().await;
    let store = PostgresBatchStore::new(&pg).max_records(2);
    for key in ["k1", "k2", "k3"] {
        store.record("big", key, success(key)).await.unwrap();
    }
    assert_eq!(keys(&store.load("big").await.unwrap()), ["k1", "k2"]);

    // Bytes: an item larger than max_bytes is not kept; the others are.
    let small = PostgresBatchStore::new(&pg).max_bytes(64);
    small.forget("big").await.unwrap();
    small
        .record("bytes", "huge", success(&"x".repeat(100)))
        .await
        .unwrap();
    small.record("bytes", "k1", success("fits")).await.unwrap();
    assert_eq!(keys(&small.load("bytes").await.unwrap()), ["k1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_keep_within_the_bounds() {
    let db = TestDb::fresh();
    let stores = [
        PostgresBatchStore::new(&db.migrated().await).max_records(20),
        PostgresBatchStore::new(&db.migrated().await).max_records(20),
    ];
    let mut writers = Vec::new();
    for writer in 0..4 {
        let store = stores[writer % 2].clone();
        writers.push(tokio::spawn(async move {
            for item in 0..15 {
                store
                    .record(
                        &format!("batch-{writer}-{}", item / 5),
                        &format!("k{item}"),
                        success("ok"),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let held: usize = db
        .server
        .psql(&db.name, "SELECT count(*) FROM tower_llm_batch_items")
        .parse()
        .unwrap();
    assert!((1..=20).contains(&held), "{held} records held");
    // Every run row still has items (evicted batches go whole).
    assert_eq!(
        db.server.psql(
            &db.name,
            "SELECT count(*) FROM tower_llm_batch_runs r WHERE NOT EXISTS
             (SELECT 1 FROM tower_llm_batch_items i WHERE i.batch_id = r.batch_id)"
        ),
        "0"
    );
}
