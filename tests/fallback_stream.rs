//! FallbackLayer with event streams (SSE): a tier answers once its first `data:`
//! event arrives; a stream that fails before that falls back with nothing sent to
//! the client; a stream cut after it is an explicit body error.
mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use support::client::{chat, http_tier, text, Body};
use support::{Reply, Step, Upstream};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifyError, FailureKind};
use tower_llm_resilience::fallback::{
    Fallback, FallbackLayer, FirstEvent, MarkDegraded, StreamInterrupted,
};

type Stream = Fallback<
    support::client::HttpTier,
    http::Request<bytes::Bytes>,
    http::Response<Body>,
    support::client::BoxError,
    tower_llm_resilience::classify::DefaultClassifier,
    FirstEvent,
>;

const TTFT: Duration = Duration::from_secs(5);

fn clean_stream() -> Reply {
    Reply::sse(vec![
        Step::data(r#"{"delta":"Hel"}"#),
        Step::Wait(Duration::from_millis(300)),
        Step::data(r#"{"delta":"lo"}"#),
        Step::data("[DONE]"),
    ])
}

const CLEAN: &str = "data: {\"delta\":\"Hel\"}\n\ndata: {\"delta\":\"lo\"}\n\ndata: [DONE]\n\n";

async fn streaming(primary: &Upstream, secondary: &Upstream) -> Stream {
    FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", http_tier(secondary.url()))
        .first_event_timeout(TTFT)
        .build()
        .unwrap()
        .layer(http_tier(primary.url()))
}

/// Falls back from `primary_reply`, and the client sees exactly the secondary's
/// clean stream. Returns the failure kind recorded for the primary.
async fn falls_back_from(primary_reply: Reply) -> FailureKind {
    let primary = Upstream::always(primary_reply).await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = streaming(&primary, &secondary).await;

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let degraded = response.degraded().expect("marked degraded").clone();
    assert_eq!(degraded.name(), "claude");
    assert_eq!(text(response).await.unwrap(), CLEAN);
    assert_eq!((primary.hits(), secondary.hits()), (1, 1));
    degraded.failed()[0].kind().clone()
}

#[tokio::test(start_paused = true)]
async fn stream_cut_before_first_event_falls_back() {
    let kind = falls_back_from(Reply::sse(vec![
        Step::Chunk(": warming up\n\n".into()),
        Step::Cut,
    ]))
    .await;
    assert_eq!(kind, FailureKind::Connect);
}

#[tokio::test(start_paused = true)]
async fn stream_ending_before_first_event_falls_back() {
    let kind = falls_back_from(Reply::sse(vec![Step::Chunk("event: ping\n\n".into())])).await;
    assert_eq!(kind, FailureKind::InvalidResponse);
}

#[tokio::test(start_paused = true)]
async fn stream_stalling_before_first_event_falls_back_after_the_limit() {
    let start = tokio::time::Instant::now();
    let kind = falls_back_from(Reply::sse(vec![
        Step::Chunk(": ping\n\n".into()),
        Step::Stall,
    ]))
    .await;
    assert_eq!(kind, FailureKind::Timeout);
    let waited = start.elapsed();
    assert!(
        waited >= TTFT && waited < TTFT + Duration::from_secs(1),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn stream_opening_with_an_error_event_falls_back() {
    let kind = falls_back_from(Reply::sse(vec![Step::Chunk(
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n"
            .into(),
    )]))
    .await;
    assert_eq!(kind, FailureKind::Overloaded { retry_after: None });
}

#[tokio::test(start_paused = true)]
async fn connection_dropped_before_the_head_falls_back() {
    let kind = falls_back_from(Reply::Close).await;
    assert!(
        matches!(kind, FailureKind::Connect | FailureKind::Other),
        "{kind:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_clean_primary_stream_is_passed_through_unmarked() {
    let primary = Upstream::always(clean_stream()).await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = streaming(&primary, &secondary).await;

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert!(response.degraded().is_none());
    assert_eq!(text(response).await.unwrap(), CLEAN);
    assert_eq!(secondary.hits(), 0);
}

#[tokio::test(start_paused = true)]
async fn stream_cut_after_first_event_is_an_explicit_error() {
    let primary = Upstream::always(Reply::sse(vec![
        Step::data(r#"{"delta":"Hel"}"#),
        Step::Wait(Duration::from_secs(1)),
        Step::Cut,
    ]))
    .await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = streaming(&primary, &secondary).await;

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.degraded().is_none());
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: {\"delta\":\"Hel\"}\n\n");
    let error = loop {
        match body.frame().await {
            Some(Ok(_)) => continue,
            Some(Err(error)) => break error,
            None => panic!("a cut stream must not end cleanly"),
        }
    };
    assert!(
        error.downcast_ref::<StreamInterrupted>().is_some(),
        "{error}"
    );
    assert_eq!(error.classify_error(), FailureKind::Connect);
    assert_eq!(
        secondary.hits(),
        0,
        "the client already had part of the answer"
    );
}

#[tokio::test(start_paused = true)]
async fn json_answers_are_not_held_back() {
    let primary = Upstream::always(Reply::ok_json(r#"{"answer":"primary"}"#)).await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = streaming(&primary, &secondary).await;
    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"primary"}"#);
    assert_eq!(secondary.hits(), 0);
}
