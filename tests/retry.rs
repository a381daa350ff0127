//! The retry layer: which failures are retried, how long it waits, and what bounds
//! it (attempts, deadline, budget), against real loopback upstreams where the
//! count of upstream calls is the point and paused time where a wait is.

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use scripted::{count, response, scripted};
use support::client::{chat, http_tier};
use support::{Reply, Step, Upstream};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::retry::{BuildError, RetryLayer};

/// A layer that retries at once when the server says `retry-after: 0`.
fn quick_retry(attempts: u32) -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(attempts)
        .without_budget()
        .seed(1)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_fatal_400_is_not_retried() {
    let upstream = Upstream::always(Reply::status(
        400,
        r#"{"error":{"type":"invalid_request_error"}}"#,
    ))
    .await;
    let mut client = ServiceBuilder::new()
        .layer(quick_retry(5))
        .service(http_tier(upstream.url()).buffered());
    let response = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(upstream.hits(), 1, "a caller bug is sent once");
}

#[tokio::test]
async fn a_429_is_retried_until_it_succeeds() {
    let limited = Reply::status(429, r#"{"error":{"code":"rate_limit_exceeded"}}"#)
        .with_header("retry-after", "0");
    let upstream = Upstream::sequence(vec![
        limited.clone(),
        limited,
        Reply::ok_json(r#"{"ok":true}"#),
    ])
    .await;
    let layer = quick_retry(5);
    let handle = layer.handle();
    let mut client = ServiceBuilder::new()
        .layer(layer)
        .service(http_tier(upstream.url()).buffered());
    let response = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 3);
    assert_eq!((handle.requests(), handle.retries()), (1, 2));
    let bodies: Vec<_> = upstream.requests().iter().map(|r| r.json()).collect();
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "every attempt sends the same request"
    );
}

#[tokio::test]
async fn attempts_are_bounded_and_the_last_answer_is_returned() {
    let upstream = Upstream::always(Reply::status(503, "{}").with_header("retry-after", "0")).await;
    let mut client = ServiceBuilder::new()
        .layer(quick_retry(4))
        .service(http_tier(upstream.url()).buffered());
    let response = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(upstream.hits(), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let (upstream, calls) = scripted(vec![
        response(429, &[("retry-after", "7")]),
        response(200, &[]),
    ]);
    let mut client = ServiceBuilder::new()
        .layer(quick_retry(3))
        .service(upstream);
    let started = Instant::now();
    let answer = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(count(&calls), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_is_cut_to_the_cap() {
    let (upstream, calls) = scripted(vec![
        response(503, &[("retry-after", "300")]),
        response(200, &[]),
    ]);
    let layer = RetryLayer::builder()
        .max_retry_after(Duration::from_secs(5))
        .without_budget()
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new().layer(layer).service(upstream);
    let started = Instant::now();
    let answer = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(count(&calls), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn without_retry_after_the_backoff_is_jittered_and_seeded() {
    let run = |seed| async move {
        let (upstream, calls) = scripted(vec![response(500, &[])]);
        let layer = RetryLayer::builder()
            .max_attempts(4)
            .base_backoff(Duration::from_secs(1))
            .max_backoff(Duration::from_secs(3))
            .without_budget()
            .seed(seed)
            .build()
            .unwrap();
        let mut client = ServiceBuilder::new().layer(layer).service(upstream);
        let started = Instant::now();
        let answer = client.ready().await.unwrap().call(chat("m")).await.unwrap();
        assert_eq!(answer.status(), 500);
        assert_eq!(count(&calls), 4);
        started.elapsed()
    };
    let (a, again, b) = (run(1).await, run(1).await, run(2).await);
    // Ceilings 1 s, 2 s, 3 s (capped): the total is at most 6 s.
    assert!(a <= Duration::from_secs(6), "{a:?}");
    assert_eq!(a, again, "the same seed gives the same waits");
    assert_ne!(a, b, "another seed gives other waits");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_retrying() {
    let (upstream, calls) = scripted(vec![response(503, &[("retry-after", "10")])]);
    let layer = RetryLayer::builder()
        .max_attempts(10)
        .deadline(Duration::from_secs(25))
        .without_budget()
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new().layer(layer).service(upstream);
    let started = Instant::now();
    let answer = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(answer.status(), 503);
    // Attempts at 0 s, 10 s, 20 s; a fourth would start at 30 s, past 25 s.
    assert_eq!(count(&calls), 3);
    assert_eq!(started.elapsed(), Duration::from_secs(20));
}

/// Sends `requests` requests at once through `layer` to an upstream
/// that always answers 503; returns the calls the upstream saw.
async fn outage_calls(layer: RetryLayer, requests: usize) -> usize {
    let upstream = Upstream::always(Reply::status(503, "{}").with_header("retry-after", "0")).await;
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(http_tier(upstream.url()).buffered());
    // Concurrent, as clients are during an outage (and loopback round trips
    // overlap instead of adding up).
    let answers =
        futures_util::future::join_all((0..requests).map(|_| client.clone().oneshot(chat("m"))))
            .await;
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 503);
    }
    upstream.hits()
}

#[tokio::test]
async fn the_budget_caps_upstream_calls_during_a_total_outage() {
    let unbudgeted = outage_calls(quick_retry(3), 100).await;
    assert_eq!(
        unbudgeted, 300,
        "without a budget every request is tried 3 times"
    );

    let budgeted = RetryLayer::builder()
        .max_attempts(3)
        .budget(Duration::from_secs(60), 0, 0.2)
        .seed(1)
        .build()
        .unwrap();
    let handle = budgeted.handle();
    let calls = outage_calls(budgeted, 100).await;
    assert!(
        (100..=120).contains(&calls),
        "at most 20% more calls than requests, got {calls}"
    );
    assert!(calls > 100, "the budget still allows some retries");
    assert_eq!(handle.requests(), 100);
    assert_eq!(handle.retries() as usize, calls - 100);
    assert!(handle.budget_exhausted() >= 80);
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_event_is_not_retried() {
    let upstream = Upstream::always(Reply::sse(vec![
        Step::data(r#"{"choices":[{"delta":{"content":"Hel"}}]}"#),
        Step::Cut,
    ]))
    .await;
    let mut client = ServiceBuilder::new()
        .layer(quick_retry(3))
        .service(http_tier(upstream.url()));
    let response = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: "), "the first event arrives");
    let rest = body.collect().await;
    assert!(rest.is_err(), "the cut reaches the caller as an error");
    assert_eq!(upstream.hits(), 1, "a started stream is never sent again");
}

#[tokio::test]
async fn a_stream_refused_before_its_head_is_retried() {
    let upstream = Upstream::sequence(vec![
        Reply::status(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
        )
        .with_header("retry-after", "0"),
        Reply::sse(vec![Step::data("[DONE]")]),
    ])
    .await;
    let mut client = ServiceBuilder::new()
        .layer(quick_retry(3))
        .service(http_tier(upstream.url()));
    let response = client.ready().await.unwrap().call(chat("m")).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = support::client::text(response).await.unwrap();
    assert_eq!(text, "data: [DONE]\n\n");
    assert_eq!(upstream.hits(), 2);
}

#[test]
fn bad_settings_are_refused_at_build_time() {
    let err = |b: tower_llm_resilience::retry::Builder| b.build().unwrap_err();
    assert_eq!(
        err(RetryLayer::builder().max_attempts(0)),
        BuildError::ZeroAttempts
    );
    assert_eq!(
        err(RetryLayer::builder().base_backoff(Duration::ZERO)),
        BuildError::ZeroDuration("base_backoff")
    );
    assert!(matches!(
        err(RetryLayer::builder()
            .base_backoff(Duration::from_secs(5))
            .max_backoff(Duration::from_secs(1))),
        BuildError::MaxBackoffBelowBase { .. }
    ));
    assert_eq!(
        err(RetryLayer::builder().budget(Duration::from_millis(10), 1, 0.2)),
        BuildError::BudgetWindow(Duration::from_millis(10))
    );
    assert!(matches!(
        err(RetryLayer::builder().budget(Duration::from_secs(10), 1, f32::NAN)),
        BuildError::BudgetRatio(_)
    ));
    assert_eq!(
        err(RetryLayer::builder().budget(Duration::from_secs(10), u32::MAX, 0.2)),
        BuildError::BudgetFloor(u32::MAX)
    );
    let message = err(RetryLayer::builder().max_attempts(0)).to_string();
    assert!(message.contains("max_attempts"), "{message}");
}
