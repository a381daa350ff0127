//! PartialBatchLayer at its edges: the deadline bounds a store that never answers,
//! durations that would overflow are refused or cut, and a server's absurd wait
//! never panics nor pauses the batch longer than the Retry-After ceiling.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};
use tower_llm_resilience::classify::{
    max_retry_after, ClassifiedError, ErrorOnlyClassifier, FailureKind,
};
use tower_llm_resilience::partial_batch::{
    Batch, BatchStore, ConfigError, InMemoryBatchStore, ItemOutcome, PartialBatchLayer,
    StoreFuture, StoredSuccess, MAX_DURATION,
};
use tower_llm_resilience::BoxError;

/// A store whose `load` and/or `record` never complete.
#[derive(Debug, Default)]
struct StuckStore {
    stuck_load: bool,
    stuck_record: bool,
    inner: InMemoryBatchStore,
}

impl BatchStore for StuckStore {
    fn load<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>> {
        if self.stuck_load {
            return Box::pin(std::future::pending());
        }
        self.inner.load(batch_id)
    }

    fn record<'a>(
        &'a self,
        batch_id: &'a str,
        key: &'a str,
        success: StoredSuccess,
    ) -> StoreFuture<'a, ()> {
        if self.stuck_record {
            return Box::pin(std::future::pending());
        }
        self.inner.record(batch_id, key, success)
    }

    fn forget<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, ()> {
        self.inner.forget(batch_id)
    }
}

fn counting_echo() -> (
    impl tower::Service<String, Response = String, Error = BoxError, Future = impl Send>
        + Clone
        + Send
        + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = service_fn(move |key: String| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BoxError>(format!("done:{key}"))
        }
    });
    (service, calls)
}

fn batch(n: usize) -> Batch<String> {
    Batch::from_pairs((0..n).map(|i| (format!("k{i}"), format!("k{i}")))).with_id("b1")
}

#[tokio::test(start_paused = true)]
async fn a_store_that_never_records_cannot_keep_the_batch_past_its_deadline() {
    let store = StuckStore {
        stuck_record: true,
        ..Default::default()
    };
    let layer = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .deadline(Duration::from_secs(5))
        .store(store)
        .build()
        .unwrap();
    let (inner, calls) = counting_echo();
    let start = Instant::now();
    let report = layer.layer(inner).oneshot(batch(4)).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "ended at the deadline"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(report.ok, 4, "the answers are kept");
    assert_eq!(report.unrecorded, 4, "and reported as not recorded");
}

#[tokio::test(start_paused = true)]
async fn a_store_that_never_loads_cannot_keep_the_batch_past_its_deadline() {
    let store = StuckStore {
        stuck_load: true,
        ..Default::default()
    };
    let layer = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .deadline(Duration::from_secs(5))
        .store(store)
        .build()
        .unwrap();
    let (inner, calls) = counting_echo();
    let start = Instant::now();
    let report = layer.layer(inner).oneshot(batch(3)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing sent without the store"
    );
    assert_eq!(report.items.len(), 3);
    assert!(report
        .items
        .iter()
        .all(|item| matches!(item.outcome, ItemOutcome::NotAttempted)));
    assert_eq!(report.failed, 3);
}

#[test]
fn durations_that_would_overflow_are_refused_at_build_time() {
    let err = |b: tower_llm_resilience::partial_batch::PartialBatchLayerBuilder| {
        b.build().map(drop).unwrap_err()
    };
    assert_eq!(
        err(PartialBatchLayer::builder().deadline(Duration::MAX)),
        ConfigError::TooLong {
            setting: "deadline",
            value: Duration::MAX
        }
    );
    let e = err(PartialBatchLayer::builder().backoff(Duration::from_secs(1), Duration::MAX));
    assert!(matches!(
        e,
        ConfigError::TooLong {
            setting: "max_backoff",
            ..
        }
    ));
    assert!(e.to_string().contains("maximum"), "{e}");
    PartialBatchLayer::builder()
        .deadline(MAX_DURATION)
        .build()
        .expect("the maximum itself is fine");
}

#[tokio::test(start_paused = true)]
async fn a_per_batch_deadline_of_duration_max_does_not_panic() {
    let layer = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let (inner, _) = counting_echo();
    let report = layer
        .layer(inner)
        .oneshot(batch(2).with_deadline(Duration::MAX))
        .await
        .unwrap();
    assert_eq!(report.ok, 2);
}

#[tokio::test(start_paused = true)]
async fn an_absurd_wait_from_a_custom_classifier_is_capped() {
    // The first attempt of every item says "retry after u64::MAX seconds".
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let inner = service_fn(move |key: String| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                let kind = FailureKind::RateLimited {
                    retry_after: Some(Duration::MAX),
                };
                Err::<String, BoxError>(ClassifiedError::new(kind, "slow down").into())
            } else {
                Ok(key)
            }
        }
    });
    let layer = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .max_attempts(2)
        .seed(7)
        .build()
        .unwrap();
    let start = Instant::now();
    let report = layer.layer(inner).oneshot(batch(3)).await.unwrap();
    assert_eq!(report.ok, 3);
    let waited = start.elapsed();
    assert!(
        waited >= max_retry_after(),
        "paused for the ceiling: {waited:?}"
    );
    assert!(
        waited < max_retry_after() + Duration::from_secs(31),
        "resumed promptly after the ceiling: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_resumes_promptly_after_a_retry_after_pause() {
    let start = Instant::now();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    let inner = service_fn(move |key: String| {
        let first = {
            let mut log = seen.lock().unwrap();
            log.push((key.clone(), start.elapsed()));
            log.len() == 1
        };
        async move {
            if first {
                let kind = FailureKind::RateLimited {
                    retry_after: Some(Duration::from_secs(2)),
                };
                return Err::<String, BoxError>(ClassifiedError::new(kind, "slow down").into());
            }
            Ok(key)
        }
    });
    let layer = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .concurrency(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(10))
        .seed(1)
        .build()
        .unwrap();
    let report = layer.layer(inner).oneshot(batch(3)).await.unwrap();
    assert_eq!(report.ok, 3);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0].1, Duration::ZERO);
    // Nothing is sent during the pause, and sending resumes right at its end.
    for (key, at) in &log[1..] {
        assert!(
            *at >= Duration::from_secs(2) && *at <= Duration::from_millis(2_010),
            "{key} sent at {at:?}"
        );
    }
    assert!(start.elapsed() <= Duration::from_millis(2_010));
}
