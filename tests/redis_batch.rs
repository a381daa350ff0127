//! Batch idempotency records shared through a real redis-server.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_server::RedisServer;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::partial_batch::{
    Batch, BatchError, BatchReport, BatchStore, PartialBatchLayer, StoredSuccess,
};
use tower_llm_resilience::redis::RedisBatchStore;
use tower_llm_resilience::BoxError;

/// An instance: a partial-batch layer on the shared store, over an "LLM" that
/// cannot summarise documents longer than `max_len`, counting its calls.
fn instance(
    redis: &RedisServer,
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
        .store(RedisBatchStore::new(redis.client()).unwrap())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_rerun_on_b_gets_a_successes_from_the_store() {
    let redis = RedisServer::start();
    let (mut on_a, calls_a) = instance(&redis, 20);
    let first = on_a.ready().await.unwrap().call(docs()).await.unwrap();
    assert_eq!((first.ok, first.failed, first.cached), (2, 1, 0));
    assert_eq!(calls_a.load(Ordering::SeqCst), 3);

    // Instance B (a bigger context window) re-runs the same batch id.
    let (mut on_b, calls_b) = instance(&redis, 100);
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
    let redis = RedisServer::start();
    let store = RedisBatchStore::new(redis.client())
        .unwrap()
        .ttl(Duration::from_secs(600));
    let success = StoredSuccess {
        response_json: "\"hi\"".into(),
        attempts: 2,
    };
    store.record("b1", "k1", success.clone()).await.unwrap();
    store.record("b1", "k2", success.clone()).await.unwrap();
    let loaded = store.load("b1").await.unwrap();
    assert_eq!(
        loaded,
        HashMap::from([
            ("k1".into(), success.clone()),
            ("k2".into(), success.clone())
        ])
    );
    assert!(store.load("other").await.unwrap().is_empty());
    assert!(store.is_connected());

    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("tower-llm:batch:b1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 500_000 && ttl <= 600_000, "{ttl}");

    store.forget("b1").await.unwrap();
    assert!(store.load("b1").await.unwrap().is_empty());
}
