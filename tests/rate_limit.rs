//! The rate-limit layer: it learns limits from the upstream's headers, waits for
//! the announced reset (sending nothing meanwhile) or fails fast, and keeps
//! limits of its own. Paused time where the wait is the point; real loopback
//! upstreams where the count of upstream calls is.

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use scripted::{count, response, scripted};
use support::client::{chat, http_tier};
use support::{Reply, Upstream};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::classify::{ClassifyError, FailureKind};
use tower_llm_resilience::rate_limit::{BuildError, RateLimitExceeded, RateLimitLayer};
use tower_llm_resilience::BoxError;

fn openai_exhausted(reset: &str) -> http::Response<Bytes> {
    response(
        200,
        &[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", reset),
        ],
    )
}

fn rejection(err: &BoxError) -> Duration {
    let rejected = err
        .downcast_ref::<RateLimitExceeded>()
        .unwrap_or_else(|| panic!("a rate-limit rejection, got {err}"));
    assert_eq!(
        err.classify_error(),
        FailureKind::RateLimited {
            retry_after: Some(rejected.retry_after())
        }
    );
    rejected.retry_after()
}

#[tokio::test(start_paused = true)]
async fn waits_until_the_announced_reset_and_sends_nothing_meanwhile() {
    let (upstream, calls) = scripted(vec![openai_exhausted("20s"), response(200, &[])]);
    let layer = RateLimitLayer::builder().build().unwrap();
    let handle = layer.handle();
    let mut client = ServiceBuilder::new().layer(layer).service(upstream);
    client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(handle.exhausted().len(), 1);

    let started = Instant::now();
    let mut second = client.clone();
    let waiting = tokio::spawn(async move {
        second.ready().await.unwrap().call(chat("m")).await.unwrap();
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_secs(19)).await;
    assert_eq!(count(&calls), 1, "nothing is sent before the reset");
    let waited = waiting.await.unwrap();
    assert_eq!(waited, Duration::from_secs(20));
    assert_eq!(count(&calls), 2);
    assert_eq!(handle.waits(), 1);
    assert!(handle.exhausted().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_remaining_count_is_spent_before_the_next_answer() {
    let (upstream, calls) = scripted(vec![
        response(
            200,
            &[
                ("x-ratelimit-remaining-requests", "2"),
                ("x-ratelimit-reset-requests", "30s"),
            ],
        ),
        response(200, &[]),
    ]);
    let mut client = ServiceBuilder::new()
        .layer(RateLimitLayer::new())
        .service(upstream);
    let started = Instant::now();
    for _ in 0..3 {
        client.ready().await.unwrap().call(chat("m")).await.unwrap();
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "two requests were left");
    client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(count(&calls), 4);
}

#[tokio::test(start_paused = true)]
async fn a_429_holds_calls_for_its_retry_after() {
    let (upstream, calls) = scripted(vec![
        response(429, &[("retry-after", "5")]),
        response(200, &[]),
    ]);
    let mut client = ServiceBuilder::new()
        .layer(RateLimitLayer::new())
        .service(upstream);
    let first = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(first.status(), 429);
    let started = Instant::now();
    let second = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(count(&calls), 2);
}

#[tokio::test(start_paused = true)]
async fn a_reset_beyond_max_wait_fails_at_once() {
    let (upstream, calls) = scripted(vec![openai_exhausted("2m")]);
    let layer = RateLimitLayer::builder()
        .max_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut client = ServiceBuilder::new().layer(layer).service(upstream);
    client.ready().await.unwrap().call(chat("m")).await.unwrap();
    let started = Instant::now();
    let err = client
        .ready()
        .await
        .unwrap()
        .call(chat("m"))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(rejection(&err), Duration::from_secs(120));
    assert_eq!((count(&calls), handle.rejected()), (1, 1));
}

/// Over loopback, with a fail-fast limiter: one call whose answer is `reply`,
/// then one that must be rejected without being sent; returns its wait.
async fn fail_fast_after(reply: Reply) -> Duration {
    let upstream = Upstream::always(reply).await;
    let mut client = ServiceBuilder::new()
        .layer(RateLimitLayer::builder().fail_fast().build().unwrap())
        .service(http_tier(upstream.url()).buffered());
    client.ready().await.unwrap().call(chat("m")).await.unwrap();
    let err = client
        .ready()
        .await
        .unwrap()
        .call(chat("m"))
        .await
        .unwrap_err();
    assert_eq!(upstream.hits(), 1, "the rejected call was not sent");
    rejection(&err)
}

#[tokio::test]
async fn fail_fast_over_loopback_with_openai_token_headers() {
    let wait = fail_fast_after(
        Reply::ok_json("{}")
            .with_header("x-ratelimit-remaining-tokens", "0")
            .with_header("x-ratelimit-reset-tokens", "45s"),
    )
    .await;
    assert!(
        wait > Duration::from_secs(44) && wait <= Duration::from_secs(45),
        "{wait:?}"
    );
}

#[tokio::test]
async fn fail_fast_over_loopback_with_anthropic_headers() {
    let reset = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(30));
    let wait = fail_fast_after(
        Reply::ok_json("{}")
            .with_header("anthropic-ratelimit-requests-remaining", "0")
            .with_header("anthropic-ratelimit-requests-reset", &reset.to_string()),
    )
    .await;
    assert!(
        wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn configured_requests_per_minute() {
    let (upstream, calls) = scripted(vec![response(200, &[])]);
    let layer = RateLimitLayer::builder()
        .requests_per_minute(2)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new().layer(layer).service(upstream);
    let started = Instant::now();
    let mut sent_at = Vec::new();
    for _ in 0..5 {
        client.ready().await.unwrap().call(chat("m")).await.unwrap();
        sent_at.push(started.elapsed().as_secs());
    }
    assert_eq!(sent_at, [0, 0, 60, 60, 120]);
    assert_eq!(count(&calls), 5);
}

#[tokio::test(start_paused = true)]
async fn configured_tokens_per_minute() {
    let (upstream, _calls) = scripted(vec![response(200, &[])]);
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(100)
        .token_cost(|_: &http::Request<Bytes>| 60)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new().layer(layer).service(upstream);
    let started = Instant::now();
    let mut sent_at = Vec::new();
    for _ in 0..3 {
        client.ready().await.unwrap().call(chat("m")).await.unwrap();
        sent_at.push(started.elapsed().as_secs());
    }
    // 60 tokens, then 120 (the call that crosses goes through), then a new window.
    assert_eq!(sent_at, [0, 0, 60]);
}

#[tokio::test(start_paused = true)]
async fn services_from_one_layer_share_what_it_learned() {
    let (upstream, calls) = scripted(vec![openai_exhausted("10s"), response(200, &[])]);
    let layer = RateLimitLayer::builder().fail_fast().build().unwrap();
    let mut first = ServiceBuilder::new()
        .layer(layer.clone())
        .service(upstream.clone());
    let mut second = ServiceBuilder::new().layer(layer).service(upstream);
    first.ready().await.unwrap().call(chat("m")).await.unwrap();
    let err = second
        .ready()
        .await
        .unwrap()
        .call(chat("m"))
        .await
        .unwrap_err();
    assert_eq!(rejection(&err), Duration::from_secs(10));
    assert_eq!(count(&calls), 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    second.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(count(&calls), 2, "after the reset calls go through again");
}

#[test]
fn bad_settings_are_refused_at_build_time() {
    assert_eq!(
        RateLimitLayer::builder()
            .requests_per_minute(0)
            .build()
            .unwrap_err(),
        BuildError::ZeroLimit("requests_per_minute")
    );
    assert_eq!(
        RateLimitLayer::builder()
            .tokens_per_minute(10)
            .build()
            .unwrap_err(),
        BuildError::TokensWithoutCost
    );
}
