//! Property: for any per-item failure script, concurrency and attempt budget, the
//! report matches a simple reference model, and the concurrency limit holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::partial_batch::{ItemOutcome, PartialBatchLayer};
use tower_llm_resilience::BoxError;

/// What one attempt of an item does.
#[derive(Clone, Copy, Debug)]
enum Act {
    Ok,
    Retryable,
    RateLimited,
    Fatal,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        3 => Just(Act::Ok),
        2 => Just(Act::Retryable),
        1 => Just(Act::RateLimited),
        1 => Just(Act::Fatal),
    ]
}

/// The reference model: per item, (succeeded, fatal, attempts).
fn model(script: &[Act], max_attempts: u32) -> (bool, bool, u32) {
    for attempt in 1..=max_attempts {
        match script.get(attempt as usize - 1).copied().unwrap_or(Act::Ok) {
            Act::Ok => return (true, false, attempt),
            Act::Fatal => return (false, true, attempt),
            Act::Retryable | Act::RateLimited if attempt == max_attempts => {
                return (false, false, attempt)
            }
            Act::Retryable | Act::RateLimited => {}
        }
    }
    unreachable!("max_attempts >= 1")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn report_matches_the_model(
        scripts in prop::collection::vec((prop::collection::vec(act(), 0..4), 0u64..50), 0..25),
        concurrency in 1usize..6,
        max_attempts in 1u32..4,
        seed in any::<u64>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let table: HashMap<String, (Vec<Act>, u64)> = scripts
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("k{i}"), s.clone()))
            .collect();
        let table = Arc::new(table);
        let attempts_seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let (in_flight, max_in_flight) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (t, seen, inf, maxf) = (table.clone(), attempts_seen.clone(), in_flight.clone(), max_in_flight.clone());
        let inner = service_fn(move |key: String| {
            let attempt = {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(key.clone()).or_default();
                *n += 1;
                *n - 1
            };
            let (script, latency) = t[&key].clone();
            let act = script.get(attempt).copied().unwrap_or(Act::Ok);
            let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
            maxf.fetch_max(now, Ordering::SeqCst);
            let inf = inf.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(latency)).await;
                inf.fetch_sub(1, Ordering::SeqCst);
                let kind = match act {
                    Act::Ok => return Ok::<_, BoxError>(key),
                    Act::Retryable => FailureKind::ServerError,
                    Act::RateLimited => FailureKind::RateLimited { retry_after: Some(Duration::from_millis(250)) },
                    Act::Fatal => FailureKind::BadRequest,
                };
                Err(ClassifiedError::new(kind, "scripted").into())
            }
        });
        let layer = PartialBatchLayer::builder()
            .concurrency(concurrency)
            .max_attempts(max_attempts)
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
            .classifier(ErrorOnlyClassifier)
            .seed(seed)
            .build()
            .unwrap();
        let names: Vec<String> = (0..scripts.len()).map(|i| format!("k{i}")).collect();
        let batch = tower_llm_resilience::partial_batch::Batch::from_pairs(names.iter().map(|k| (k.clone(), k.clone())));
        let report = runtime.block_on(async {
            let mut service = layer.layer(inner);
            service.ready().await.unwrap().call(batch).await.unwrap()
        });

        prop_assert_eq!(report.items.len(), names.len());
        let mut expected_ok = 0;
        let mut total_attempts = 0;
        for (item, key) in report.items.iter().zip(&names) {
            prop_assert_eq!(&item.key, key);
            let (ok, fatal, attempts) = model(&table[key].0, max_attempts);
            prop_assert_eq!(item.attempts, attempts, "{}", key);
            match &item.outcome {
                ItemOutcome::Success(response) => {
                    prop_assert!(ok);
                    prop_assert_eq!(response, key);
                }
                ItemOutcome::Failed(failure) => {
                    prop_assert!(!ok);
                    prop_assert_eq!(failure.fatal, fatal);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
            expected_ok += usize::from(ok);
            total_attempts += attempts as usize;
        }
        prop_assert_eq!(report.ok, expected_ok);
        prop_assert_eq!(report.failed, names.len() - expected_ok);
        prop_assert_eq!(attempts_seen.lock().unwrap().values().sum::<usize>(), total_attempts);
        prop_assert!(max_in_flight.load(Ordering::SeqCst) <= concurrency);
        prop_assert_eq!(in_flight.load(Ordering::SeqCst), 0);
    }
}
