//! One ceiling on every wait a server asks for: whatever a `Retry-After`,
//! `retry-after-ms` or provider reset header says, classification carries at most
//! `max_retry_after()` (10 minutes by default), and no layer panics or waits longer.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
use tower_llm_resilience::classify::{
    classify_buffered, classify_status, max_retry_after, parse_retry_after_value, retry_after,
    Outcome, DEFAULT_MAX_RETRY_AFTER,
};
use tower_llm_resilience::partial_batch::{Batch, PartialBatchLayer};
use tower_llm_resilience::BoxError;

const HEADERS: [(&str, Option<&str>); 5] = [
    ("retry-after", None),
    ("retry-after-ms", None),
    (
        "x-ratelimit-reset-requests",
        Some("x-ratelimit-remaining-requests"),
    ),
    (
        "x-ratelimit-reset-tokens",
        Some("x-ratelimit-remaining-tokens"),
    ),
    (
        "anthropic-ratelimit-requests-reset",
        Some("anthropic-ratelimit-requests-remaining"),
    ),
];

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{1,40}(\\.[0-9]{0,12})?",
        any::<f64>().prop_map(|f| f.to_string()),
        (1970u32..=9999, 1u32..=12, 1u32..=28).prop_map(|(y, m, d)| {
            let month = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ][m as usize - 1];
            format!("Fri, {d:02} {month} {y} 23:59:59 GMT")
        }),
        (1970u32..=9999).prop_map(|y| format!("{y}-12-31T23:59:59Z")),
        "[0-9]{1,15}(h|m|s|ms)([0-9]{1,6}(m|s))?",
        "[ -~]{0,40}",
    ]
}

fn headers(name: &'static str, remaining: Option<&'static str>, value: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(value) {
        map.insert(name, value);
    }
    if let Some(remaining) = remaining {
        map.insert(remaining, HeaderValue::from_static("0"));
    }
    map
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A batch of two items whose first answer is a 429 with `map` as headers.
async fn batch_wait(map: HeaderMap) -> Duration {
    let first = Arc::new(AtomicUsize::new(0));
    let inner = service_fn(move |_: u32| {
        let map = map.clone();
        let limited = first.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            let mut response = http::Response::new(Bytes::new());
            if limited {
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                *response.headers_mut() = map;
            }
            Ok::<_, BoxError>(response)
        }
    });
    let layer = PartialBatchLayer::builder()
        .backoff(Duration::from_millis(10), Duration::from_secs(1))
        .seed(3)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let report = layer
        .layer(inner)
        .oneshot(Batch::from_pairs([("a", 1u32), ("b", 2)]))
        .await
        .unwrap();
    assert_eq!(report.ok, 2);
    start.elapsed()
}

/// How long an open circuit tells callers to wait after one such 429.
async fn circuit_wait(map: HeaderMap) -> Duration {
    let inner = service_fn(move |_: u32| {
        let mut response = http::Response::new(Bytes::new());
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        *response.headers_mut() = map.clone();
        async move { Ok::<_, BoxError>(response) }
    });
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .max_retry_after(Duration::MAX)
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    let _ = svc.ready().await.unwrap().call(1).await;
    let open = svc.ready().await.unwrap().call(2).await.unwrap_err();
    open.downcast_ref::<CircuitOpen>().unwrap().retry_after()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn no_header_value_panics_or_waits_longer_than_the_cap(
        header in 0..HEADERS.len(),
        value in header_value(),
    ) {
        let (name, remaining) = HEADERS[header];
        let map = headers(name, remaining, &value);
        let cap = max_retry_after();
        prop_assert!(retry_after(&map).is_none_or(|wait| wait <= cap));
        for status in [429u16, 503, 529] {
            let status = StatusCode::from_u16(status).unwrap();
            for outcome in [
                classify_status(status, &map),
                classify_buffered(status, &map, b"{\"error\":{\"type\":\"rate_limit_error\"}}"),
            ] {
                let Outcome::Failure(kind) = outcome else { panic!("a failure") };
                prop_assert!(kind.retry_after().is_none_or(|wait| wait <= cap), "{value:?}: {kind}");
            }
        }
        let rt = runtime();
        let waited = rt.block_on(batch_wait(map.clone()));
        prop_assert!(waited <= cap + Duration::from_secs(2), "batch waited {waited:?} for {value:?}");
        let open_for = rt.block_on(circuit_wait(map));
        // The breaker opens for its own (jittered) cooldown, or the server's capped wait.
        prop_assert!(open_for <= cap.max(Duration::from_secs(600)), "circuit {open_for:?} for {value:?}");
    }
}

#[test]
fn absurd_values_are_cut_to_the_default_ceiling() {
    assert_eq!(max_retry_after(), DEFAULT_MAX_RETRY_AFTER);
    assert_eq!(DEFAULT_MAX_RETRY_AFTER, Duration::from_secs(600));
    let now = SystemTime::now();
    for value in [
        "10000000000000000000",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "86400",
    ] {
        assert_eq!(
            parse_retry_after_value(value, now),
            Some(DEFAULT_MAX_RETRY_AFTER),
            "{value}"
        );
    }
    let resets = headers(
        "x-ratelimit-reset-requests",
        Some("x-ratelimit-remaining-requests"),
        "600000h",
    );
    assert_eq!(retry_after(&resets), Some(DEFAULT_MAX_RETRY_AFTER));
    let ms = headers("retry-after-ms", None, "99999999999999999999");
    assert_eq!(retry_after(&ms), Some(DEFAULT_MAX_RETRY_AFTER));
    // Ordinary values are untouched.
    assert_eq!(
        retry_after(&headers("retry-after", None, "20")),
        Some(Duration::from_secs(20))
    );
}
