//! PartialBatchLayer throughput: `cargo bench --bench partial_batch`.
//!
//! 1. Overhead: 10,000 items through a zero-latency inner service, time per item
//!    (target: at most 2 µs).
//! 2. Scheduling: 10,000 items, concurrency 64, an inner service of 10 ms latency
//!    whose first attempt fails (retryably) for 5% of items: wall time against the
//!    ideal `(items + retries) / concurrency × latency` (target: within 15%).
//!
//! Without `--bench` (as under `cargo test --all-targets`) it runs a small smoke
//! version and checks the reports only.

use std::time::{Duration, Instant};

use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::partial_batch::{Batch, PartialBatchLayer};
use tower_llm_resilience::BoxError;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let items = if full { 10_000 } else { 200 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(overhead(items, if full { 20 } else { 1 }));
    runtime.block_on(scheduling(items, if full { 3 } else { 1 }));
}

fn batch(items: usize) -> Batch<u32> {
    Batch::from_pairs((0..items as u32).map(|i| (format!("item-{i}"), i)))
}

async fn overhead(items: usize, rounds: usize) {
    let layer = PartialBatchLayer::builder()
        .concurrency(64)
        .classifier(ErrorOnlyClassifier)
        .seed(1)
        .build()
        .unwrap();
    let inner = service_fn(|i: u32| std::future::ready(Ok::<_, BoxError>(i)));
    let mut service = layer.layer(inner);
    let mut per_item = Vec::new();
    for _ in 0..rounds {
        let batch = batch(items);
        let started = Instant::now();
        let report = service.ready().await.unwrap().call(batch).await.unwrap();
        per_item.push(started.elapsed() / items as u32);
        assert_eq!(report.ok, items);
    }
    per_item.sort();
    println!(
        "overhead: {items} items, zero-latency inner: {:?} per item (median of {rounds}; min {:?}, max {:?}; target <= 2µs)",
        per_item[per_item.len() / 2],
        per_item[0],
        per_item[per_item.len() - 1],
    );
}

async fn scheduling(items: usize, rounds: usize) {
    const CONCURRENCY: usize = 64;
    const LATENCY: Duration = Duration::from_millis(10);
    let baseline = baseline(items + items / 20, CONCURRENCY, LATENCY).await;
    for round in 0..rounds {
        let layer = PartialBatchLayer::builder()
            .concurrency(CONCURRENCY)
            .max_attempts(3)
            .backoff(Duration::from_millis(1), Duration::from_millis(20))
            .classifier(ErrorOnlyClassifier)
            .seed(round as u64)
            .build()
            .unwrap();
        let failing = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let seen = failing.clone();
        let inner = service_fn(move |i: u32| {
            // 5% of items fail their first attempt.
            let fail = i % 20 == 3 && seen.lock().unwrap().insert(i);
            async move {
                tokio::time::sleep(LATENCY).await;
                if fail {
                    Err::<u32, BoxError>(
                        ClassifiedError::new(FailureKind::ServerError, "flaky").into(),
                    )
                } else {
                    Ok(i)
                }
            }
        });
        let mut service = layer.layer(inner);
        let started = Instant::now();
        let report = service
            .ready()
            .await
            .unwrap()
            .call(batch(items))
            .await
            .unwrap();
        let wall = started.elapsed();
        assert_eq!(report.ok, items);
        let calls: u32 = report.items.iter().map(|i| i.attempts).sum();
        let ideal = LATENCY * calls.div_ceil(CONCURRENCY as u32);
        println!(
            "scheduling: {items} items ({} retries), concurrency {CONCURRENCY}, 10 ms latency: {wall:?} vs ideal {ideal:?} ({:+.1}%; target within 15%); vs bare FuturesUnordered of the same calls {baseline:?} ({:+.1}%)",
            calls as usize - items,
            (wall.as_secs_f64() / ideal.as_secs_f64() - 1.0) * 100.0,
            (wall.as_secs_f64() / baseline.as_secs_f64() - 1.0) * 100.0,
        );
    }
}

/// The same number of sleeps, 64 at a time, with no layer at all: what tokio's
/// timer (1 ms resolution, rounding up) makes of the ideal.
async fn baseline(calls: usize, concurrency: usize, latency: Duration) -> Duration {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..calls {
        if in_flight.len() == concurrency {
            in_flight.next().await;
        }
        in_flight.push(tokio::time::sleep(latency));
    }
    while in_flight.next().await.is_some() {}
    started.elapsed()
}
