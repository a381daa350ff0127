//! Hedging at its edges: a hedge only adds chances. A hedged tier's failure that
//! is not fallen back from never cancels a healthy primary, and a hung primary
//! plus a failed hedge reaches the final responder instead of pending for ever.
mod support;

use std::time::Duration;

use bytes::Bytes;
use support::client::{chat, http_tier, text, Body};
use support::{Reply, Upstream};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_llm_resilience::classify::FailureKind;
use tower_llm_resilience::fallback::{FallbackLayer, MarkDegraded};

const HEDGE: Duration = Duration::from_secs(1);

fn template(_request: http::Request<Bytes>) -> http::Response<Body> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(Bytes::from_static(b"{\"answer\":\"template\"}"))
        .map_err(|never| match never {})
        .boxed();
    http::Response::new(body)
}

#[tokio::test(start_paused = true)]
async fn a_hedge_failing_with_a_caller_error_waits_for_the_primary() {
    // A smaller-context model answers "context too long" (400), or a 404: neither
    // is fallen back from, and neither may drop the primary.
    for hedge_status in [400, 404] {
        let slow = Reply::after(
            Duration::from_secs(3),
            Reply::ok_json(r#"{"answer":"primary"}"#),
        );
        let primary = Upstream::always(slow).await;
        let body = r#"{"error":{"message":"maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        let secondary = Upstream::always(Reply::status(hedge_status, body)).await;
        let layer = FallbackLayer::builder()
            .alternate("small", http_tier(secondary.url()))
            .final_responder("template", template)
            .hedge_after(HEDGE)
            .build()
            .unwrap();
        let start = Instant::now();
        let response = layer
            .layer(http_tier(primary.url()))
            .oneshot(chat("gpt-4o"))
            .await
            .unwrap();
        assert_eq!(secondary.hits(), 1, "the hedge was sent");
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert!(response.degraded().is_none(), "status {hedge_status}");
        assert_eq!(text(response).await.unwrap(), r#"{"answer":"primary"}"#);
    }
}

#[tokio::test(start_paused = true)]
async fn the_hedges_own_error_ends_the_call_once_the_primary_fails_too() {
    // Without the hedge: primary 503, then the alternate's 400 ends the call.
    let failing = Reply::after(Duration::from_secs(2), Reply::status(503, "{}"));
    let primary = Upstream::always(failing).await;
    let secondary = Upstream::always(Reply::status(400, r#"{"error":"bad"}"#)).await;
    let layer = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("small", http_tier(secondary.url()))
        .hedge_after(HEDGE)
        .build()
        .unwrap();
    let response = layer
        .layer(http_tier(primary.url()))
        .oneshot(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let degraded = response.degraded().expect("answered by the hedged tier");
    assert_eq!(degraded.name(), "small");
    assert!(degraded.hedged());
    assert_eq!((primary.hits(), secondary.hits()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_hung_primary_and_a_failed_hedge_reach_the_final_responder() {
    for hedge_status in [503, 500] {
        let primary = Upstream::always(Reply::Stall).await;
        let secondary = Upstream::always(Reply::status(hedge_status, "{}")).await;
        let layer = FallbackLayer::builder()
            .primary_name("gpt")
            .alternate("claude", http_tier(secondary.url()))
            .final_responder("template", template)
            .hedge_after(HEDGE)
            .build()
            .unwrap();
        let start = Instant::now();
        let call = layer
            .layer(http_tier(primary.url()))
            .oneshot(chat("gpt-4o"));
        let response = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .unwrap_or_else(|_| panic!("pending for ever (hedge status {hedge_status})"))
            .unwrap();
        // One hedge delay to start the alternate, one more before the template.
        assert!(start.elapsed() >= 2 * HEDGE && start.elapsed() < 3 * HEDGE);
        let degraded = response.degraded().expect("the template answered").clone();
        assert_eq!(degraded.name(), "template");
        assert!(degraded.hedged());
        assert_eq!(degraded.failed()[0].name(), "claude");
        let expected = if hedge_status == 503 {
            FailureKind::Overloaded { retry_after: None }
        } else {
            FailureKind::ServerError
        };
        assert_eq!(degraded.failed()[0].kind(), &expected);
        assert_eq!(text(response).await.unwrap(), r#"{"answer":"template"}"#);
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_final_responder_a_failed_hedge_still_waits_for_the_primary() {
    let slow = Reply::after(
        Duration::from_secs(5),
        Reply::ok_json(r#"{"answer":"primary"}"#),
    );
    let primary = Upstream::always(slow).await;
    let secondary = Upstream::always(Reply::status(503, "{}")).await;
    let layer = FallbackLayer::builder()
        .alternate("claude", http_tier(secondary.url()))
        .hedge_after(HEDGE)
        .build()
        .unwrap();
    let response = layer
        .layer(http_tier(primary.url()))
        .oneshot(chat("gpt-4o"))
        .await
        .unwrap();
    assert!(response.degraded().is_none());
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"primary"}"#);
}
