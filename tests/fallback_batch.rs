//! A PartialBatchLayer over a FallbackLayer over a real upstream that fails with
//! 500s: the fallback's "all tiers failed" error classifies as its tiers'
//! failure, so the batch retries it up to `max_attempts`.
mod support;

use std::time::Duration;

use support::client::{chat, http_tier};
use support::{Reply, Upstream};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::FailureKind;
use tower_llm_resilience::fallback::FallbackLayer;
use tower_llm_resilience::partial_batch::{Batch, PartialBatchLayer};
use tower_llm_resilience::BoxError;

type Req = http::Request<bytes::Bytes>;
type Res = http::Response<bytes::Bytes>;

/// One real tier, plus a placeholder that always fails with an error nobody
/// knows (as a single-tier chain needs somewhere to fall back to).
fn single_tier_chain(
    upstream: &Upstream,
) -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone {
    let placeholder = service_fn(|_: Req| async { Err::<Res, BoxError>("no further tier".into()) });
    FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("(none)", placeholder)
        .build()
        .unwrap()
        .layer(http_tier(upstream.url()).buffered())
}

fn batch() -> Batch<Req> {
    Batch::from_pairs([("a", chat("gpt-4o")), ("b", chat("gpt-4o"))])
}

#[tokio::test(start_paused = true)]
async fn a_batch_retries_a_chain_whose_only_tier_failed_with_a_500() {
    // Two 500s, then answers.
    let upstream = Upstream::start(|_, index| {
        if index < 2 {
            Reply::status(500, r#"{"error":{"message":"boom","type":"server_error"}}"#)
        } else {
            Reply::ok_json(r#"{"ok":true}"#)
        }
    })
    .await;
    let layer = PartialBatchLayer::builder()
        .concurrency(1)
        .max_attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .seed(7)
        .build()
        .unwrap();
    let mut batches = layer.layer(single_tier_chain(&upstream));
    let one = Batch::from_pairs([("a", chat("gpt-4o"))]);
    let report = batches.ready().await.unwrap().call(one).await.unwrap();

    assert!(
        report.all_ok(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    let item = report.get("a").unwrap();
    assert_eq!(item.attempts, 3, "two 500s, then the answer");
    assert_eq!(item.response().unwrap().body().as_ref(), br#"{"ok":true}"#);
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_always_fails_is_tried_max_attempts_times() {
    let upstream = Upstream::always(Reply::status(500, "{}")).await;
    let layer = PartialBatchLayer::builder()
        .concurrency(2)
        .max_attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .seed(7)
        .build()
        .unwrap();
    let mut batches = layer.layer(single_tier_chain(&upstream));
    let report = batches.ready().await.unwrap().call(batch()).await.unwrap();

    for key in ["a", "b"] {
        let item = report.get(key).unwrap();
        assert_eq!(item.attempts, 3);
        let failure = item.failure().unwrap();
        assert_eq!(failure.kind, FailureKind::ServerError);
    }
    assert_eq!(upstream.hits(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_chain_that_is_out_of_quota_everywhere_is_not_retried() {
    let quota = r#"{"error":{"message":"out of quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    let upstream = Upstream::always(Reply::status(429, quota)).await;
    let layer = PartialBatchLayer::builder()
        .concurrency(1)
        .max_attempts(3)
        .seed(7)
        .build()
        .unwrap();
    // A classifier that reads the body sees the quota; the placeholder's error
    // is unknown: nothing retryable anywhere.
    let chain = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate(
            "(none)",
            service_fn(|_: Req| async { Err::<Res, BoxError>("no further tier".into()) }),
        )
        .classifier(tower_llm_resilience::classify::JsonBodyClassifier)
        .build()
        .unwrap()
        .layer(http_tier(upstream.url()).buffered());
    let mut batches = layer.layer(chain);
    let report = batches.ready().await.unwrap().call(batch()).await.unwrap();
    let item = report.get("a").unwrap();
    assert_eq!(item.attempts, 1);
    assert!(item.failure().unwrap().fatal);
    assert_eq!(upstream.hits(), 2);
}
