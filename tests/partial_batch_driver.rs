//! The batch driver's timing and bookkeeping: a `Retry-After` pause ends exactly
//! when the server said, also while every retry's backoff runs longer, and an
//! item's request is handed over, not copied, on its last attempt.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::partial_batch::{Batch, PartialBatchLayer};
use tower_llm_resilience::BoxError;

const LATENCY: Duration = Duration::from_millis(10);

/// Every call, in order: the key and when it was sent.
type Calls = Arc<Mutex<Vec<(String, Instant)>>>;

/// An upstream over item keys: `failures[key]` is what the first attempts of
/// that key fail with (later attempts succeed); each call takes `LATENCY`.
fn upstream(
    failures: HashMap<&'static str, Vec<FailureKind>>,
) -> (
    impl Service<String, Response = String, Error = BoxError, Future = impl Send> + Clone,
    Calls,
) {
    let calls: Calls = Arc::default();
    let log = calls.clone();
    let failures = Arc::new(failures);
    let service = service_fn(move |key: String| {
        let attempt = {
            let mut calls = log.lock().unwrap();
            calls.push((key.clone(), Instant::now()));
            calls.iter().filter(|(k, _)| *k == key).count() - 1
        };
        let failure = failures
            .get(key.as_str())
            .and_then(|kinds| kinds.get(attempt).cloned());
        async move {
            tokio::time::sleep(LATENCY).await;
            match failure {
                Some(kind) => {
                    Err::<String, BoxError>(ClassifiedError::new(kind, "injected").into())
                }
                None => Ok(format!("done:{key}")),
            }
        }
    });
    (service, calls)
}

fn batch(keys: &[&str]) -> Batch<String> {
    Batch::from_pairs(keys.iter().map(|k| (k.to_string(), k.to_string())))
}

fn rate_limited(wait: Duration) -> FailureKind {
    FailureKind::RateLimited {
        retry_after: Some(wait),
    }
}

fn sent_at(calls: &Calls, key: &str, attempt: usize) -> Instant {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k == key)
        .nth(attempt)
        .unwrap_or_else(|| panic!("{key} attempt {attempt} was sent"))
        .1
}

/// Runs `keys` as one batch over `failures` (see `upstream`) with this backoff
/// (base and max alike) and concurrency; every item must end well. Returns when
/// each call was sent, and when the batch started.
async fn run(
    failures: HashMap<&'static str, Vec<FailureKind>>,
    backoff: Duration,
    concurrency: usize,
    keys: &[&str],
) -> (Calls, Instant) {
    let (inner, calls) = upstream(failures);
    let mut service = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .backoff(backoff, backoff)
        .concurrency(concurrency)
        .seed(3)
        .build()
        .unwrap()
        .layer(inner);
    let started = Instant::now();
    let report = service
        .ready()
        .await
        .unwrap()
        .call(batch(keys))
        .await
        .unwrap();
    assert_eq!(report.ok, keys.len());
    (calls, started)
}

#[tokio::test(start_paused = true)]
async fn dispatch_resumes_the_moment_a_pause_ends() {
    let wait = Duration::from_secs(5);
    let failures = [("a", vec![rate_limited(wait)])].into();
    let (calls, started) = run(failures, Duration::from_millis(100), 1, &["a", "b", "c"]).await;
    let pause_over = started + LATENCY + wait;
    // Nothing during the pause, the retried item the moment it ends, and the rest
    // one after another right behind it.
    assert_eq!(sent_at(&calls, "a", 1), pause_over);
    assert_eq!(sent_at(&calls, "b", 0), pause_over + LATENCY);
    assert_eq!(sent_at(&calls, "c", 0), pause_over + LATENCY * 2);
    assert_eq!(started.elapsed(), LATENCY + wait + LATENCY * 3);
}

#[tokio::test(start_paused = true)]
async fn fresh_items_go_out_when_the_pause_ends_while_backoffs_run_longer() {
    // Both first items fail: one with a 1 s Retry-After, one without. Their
    // retries wait out a backoff far longer than the pause (seeded); the item not
    // yet sent goes out as soon as the pause is over, not after those backoffs.
    let wait = Duration::from_secs(1);
    let failures = [
        ("limited", vec![rate_limited(wait)]),
        ("broken", vec![FailureKind::ServerError]),
    ]
    .into();
    let keys = ["limited", "broken", "fresh"];
    let (calls, started) = run(failures, Duration::from_secs(60), 2, &keys).await;
    let pause_over = started + LATENCY + wait;
    assert_eq!(sent_at(&calls, "fresh", 0), pause_over);
    for key in ["limited", "broken"] {
        assert!(
            sent_at(&calls, key, 1) > pause_over + LATENCY,
            "{key}: this seed gives backoffs longer than the pause"
        );
    }
}

/// A request that counts its live copies.
#[derive(Clone)]
struct Counted(Arc<()>);

#[tokio::test(start_paused = true)]
async fn the_last_attempt_takes_the_request_instead_of_copying_it() {
    let token = Arc::new(());
    // Copies alive when the upstream sees the request, per attempt: the test's
    // own, the one in the call, and the one the batch keeps for a retry.
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let log = seen.clone();
    let inner = service_fn(move |request: Counted| {
        let attempt = {
            let mut seen = log.lock().unwrap();
            seen.push(Arc::strong_count(&request.0));
            seen.len()
        };
        async move {
            if attempt < 3 {
                Err::<(), BoxError>(ClassifiedError::new(FailureKind::ServerError, "x").into())
            } else {
                Ok(())
            }
        }
    });
    let mut service = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .max_attempts(3)
        .seed(1)
        .build()
        .unwrap()
        .layer(inner);
    let report = service
        .ready()
        .await
        .unwrap()
        .call(Batch::from_pairs([("only", Counted(token.clone()))]))
        .await
        .unwrap();
    assert_eq!(report.ok, 1);
    assert_eq!(*seen.lock().unwrap(), vec![3, 3, 2]);
    assert_eq!(Arc::strong_count(&token), 1, "nothing kept after the batch");
}
