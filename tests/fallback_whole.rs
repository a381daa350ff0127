//! FallbackLayer with `FirstEvent`: every answer whole or clearly broken, over
//! real loopback servers. Streams are complete only after their terminal event,
//! however their body ends; non-stream answers are read whole (bounded) and fall
//! back when cut short.
mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use support::client::{chat, http_tier, text, Body};
use support::raw::{Raw, RawUpstream};
use support::{Reply, Step, Upstream};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifyError, FailureKind, FailurePolicy};
use tower_llm_resilience::fallback::{
    Fallback, FallbackLayer, FirstEvent, MarkDegraded, SseBody, StreamInterrupted, TerminalEvent,
};

type Tiers = Fallback<
    support::client::HttpTier,
    http::Request<bytes::Bytes>,
    http::Response<Body>,
    support::client::BoxError,
    tower_llm_resilience::classify::DefaultClassifier,
    FirstEvent,
>;

const TTFT: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(30);

const CLEAN: &str = "data: {\"delta\":\"Hel\"}\n\ndata: {\"delta\":\"lo\"}\n\ndata: [DONE]\n\n";

fn clean_stream() -> Reply {
    Reply::sse(vec![
        Step::data(r#"{"delta":"Hel"}"#),
        Step::data(r#"{"delta":"lo"}"#),
        Step::data("[DONE]"),
    ])
}

fn settings() -> FirstEvent {
    FirstEvent::new(TTFT).idle_timeout(Some(IDLE))
}

fn tiers(primary: &str, secondary: &str, settle: FirstEvent) -> Tiers {
    FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", http_tier(secondary))
        .settle_with(settle)
        .build()
        .unwrap()
        .layer(http_tier(primary))
}

async fn call(service: &mut Tiers) -> http::Response<SseBody<Body>> {
    service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap()
}

/// Everything the body yields before its error, and the error.
async fn read_until_error(response: http::Response<SseBody<Body>>) -> (String, StreamInterrupted) {
    let mut body = response.into_body();
    let mut seen = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => seen.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(error)) => {
                let interrupted = *error
                    .downcast::<StreamInterrupted>()
                    .expect("a StreamInterrupted error");
                return (String::from_utf8(seen).unwrap(), interrupted);
            }
            None => panic!(
                "an incomplete stream must not end cleanly; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// Calls a primary that misbehaves, expects the secondary's clean answer with the
/// primary's failure kind.
async fn falls_back(primary: &str, settle: FirstEvent) -> FailureKind {
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = tiers(primary, &secondary.url(), settle);
    let response = call(&mut service).await;
    let degraded = response.degraded().expect("degraded").clone();
    assert_eq!(degraded.name(), "claude");
    assert_eq!(text(response).await.unwrap(), CLEAN);
    degraded.failed()[0].kind().clone()
}

#[tokio::test]
async fn a_stream_closed_cleanly_after_two_events_is_interrupted() {
    // Chunked body, properly terminated, but no terminal event.
    let primary = Upstream::always(Reply::sse(vec![
        Step::data(r#"{"choices":[{"delta":{"content":"Hel"},"finish_reason":null}]}"#),
        Step::data(r#"{"choices":[{"delta":{"content":"lo"},"finish_reason":null}]}"#),
    ]))
    .await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = tiers(&primary.url(), &secondary.url(), settings());
    let response = call(&mut service).await;
    assert!(response.degraded().is_none());
    let (seen, error) = read_until_error(response).await;
    assert!(seen.contains("Hel") && seen.contains("lo"), "{seen}");
    assert_eq!(error.kind(), FailureKind::InvalidResponse);
    assert!(error.to_string().contains("terminal event"), "{error}");
    assert!(!FailurePolicy::DEFAULT.is_retryable(&error.kind()));
    assert_eq!(secondary.hits(), 0, "the client already had part of it");
}

#[tokio::test]
async fn a_close_delimited_stream_without_its_terminal_event_is_interrupted() {
    let primary = RawUpstream::start(vec![
        Raw::sse_head(),
        Raw::text("data: {\"type\":\"message_start\"}\n\n"),
        Raw::text("event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}\n\n"),
    ])
    .await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = tiers(&primary.url(), &secondary.url(), settings());
    let (_, error) = read_until_error(call(&mut service).await).await;
    assert_eq!(error.kind(), FailureKind::InvalidResponse);
}

#[tokio::test]
async fn a_close_delimited_stream_ending_before_any_event_falls_back() {
    let primary = RawUpstream::start(vec![Raw::sse_head(), Raw::text(": hello\n\n")]).await;
    let kind = falls_back(&primary.url(), settings()).await;
    assert_eq!(kind, FailureKind::InvalidResponse);
}

#[tokio::test]
async fn complete_streams_end_cleanly_by_any_built_in_rule() {
    let finish_without_done =
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
         data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    let anthropic = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    // The official SDKs' transcripts end without the last blank line.
    let no_last_blank_line = "data: {\"choices\":[]}\n\ndata: [DONE]\n";
    let cr_only = "data: {\"a\":1}\r\rdata: [DONE]\r\r";
    let bom = "\u{feff}data: {\"a\":1}\n\ndata: [DONE]\n\n";
    for stream in [
        finish_without_done,
        anthropic,
        no_last_blank_line,
        cr_only,
        bom,
    ] {
        let primary = RawUpstream::start(vec![Raw::sse_head(), Raw::text(stream)]).await;
        let secondary = Upstream::always(clean_stream()).await;
        let mut service = tiers(&primary.url(), &secondary.url(), settings());
        let response = call(&mut service).await;
        assert!(response.degraded().is_none(), "{stream:?}");
        assert!(response.body().is_event_stream());
        assert_eq!(text(response).await.unwrap(), stream);
        assert_eq!(secondary.hits(), 0);
    }
}

#[tokio::test]
async fn a_cr_only_stream_settles_on_its_first_event_while_the_rest_is_pending() {
    let primary = RawUpstream::start(vec![
        Raw::sse_head(),
        Raw::text("data: {\"a\":1}\r\r"),
        Raw::Hold,
    ])
    .await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = tiers(&primary.url(), &secondary.url(), settings());
    let response = tokio::time::timeout(Duration::from_secs(60), call(&mut service))
        .await
        .expect("settles without waiting for a line feed");
    assert!(response.degraded().is_none());
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: {\"a\":1}\r\r");
}

#[tokio::test]
async fn a_custom_terminal_rule_replaces_the_built_in_ones() {
    let primary = Upstream::always(clean_stream()).await;
    let secondary = Upstream::always(clean_stream()).await;
    let rule = TerminalEvent::custom(|name, _| name == b"end");
    let mut service = tiers(
        &primary.url(),
        &secondary.url(),
        settings().terminal_event(rule),
    );
    let (seen, error) = read_until_error(call(&mut service).await).await;
    assert_eq!(seen, CLEAN, "[DONE] means nothing to this rule");
    assert_eq!(error.kind(), FailureKind::InvalidResponse);
}

#[tokio::test(start_paused = true)]
async fn silence_after_the_stream_opened_is_a_timeout() {
    let primary = Upstream::always(Reply::sse(vec![
        Step::data(r#"{"delta":"Hel"}"#),
        Step::Wait(Duration::from_secs(20)),
        Step::Chunk(": still here\n\n".into()),
        Step::Stall,
    ]))
    .await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = tiers(&primary.url(), &secondary.url(), settings());
    let response = call(&mut service).await;
    let start = tokio::time::Instant::now();
    let (seen, error) = read_until_error(response).await;
    assert!(seen.ends_with(": still here\n\n"), "{seen}");
    assert_eq!(error.kind(), FailureKind::Timeout);
    assert!(error.to_string().contains("silent"), "{error}");
    // The comment at 20 s reset the idle clock: 20 s + 30 s.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(50) && waited < Duration::from_secs(51),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn silence_after_the_terminal_event_just_ends_the_stream() {
    let primary = Upstream::always(Reply::sse(vec![
        Step::data(r#"{"delta":"Hel"}"#),
        Step::data("[DONE]"),
        Step::Stall,
    ]))
    .await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = tiers(&primary.url(), &secondary.url(), settings());
    let body = text(call(&mut service).await).await.unwrap();
    assert_eq!(body, "data: {\"delta\":\"Hel\"}\n\ndata: [DONE]\n\n");
}

#[tokio::test]
async fn data_lines_that_never_end_an_event_are_bounded() {
    let endless = "data: 0123456789abcdef\n".repeat(512);
    // After the first event: an error, and the stream stops.
    let primary = Upstream::always(Reply::sse(vec![
        Step::data(r#"{"delta":"Hel"}"#),
        Step::Chunk(endless.clone()),
        Step::Stall,
    ]))
    .await;
    let secondary = Upstream::always(clean_stream()).await;
    let bounded = settings().max_event_bytes(4096);
    let mut service = tiers(&primary.url(), &secondary.url(), bounded);
    let (_, error) = read_until_error(call(&mut service).await).await;
    assert_eq!(error.kind(), FailureKind::InvalidResponse);
    assert!(error.to_string().contains("4096"), "{error}");

    // Before it: the tier fails and the next one answers.
    let primary = Upstream::always(Reply::sse(vec![Step::Chunk(endless), Step::Stall])).await;
    let kind = falls_back(&primary.url(), bounded).await;
    assert_eq!(kind, FailureKind::InvalidResponse);
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_falls_back() {
    let primary = RawUpstream::start(vec![
        Raw::head(
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", "100"),
            ],
        ),
        Raw::text(r#"{"choices":[{"message":"#),
    ])
    .await;
    let kind = falls_back(&primary.url(), settings()).await;
    assert_eq!(kind, FailureKind::InvalidResponse);
}

#[tokio::test]
async fn close_delimited_json_that_does_not_parse_falls_back() {
    let primary = RawUpstream::start(vec![
        Raw::head(200, &[("content-type", "application/json; charset=utf-8")]),
        Raw::text(r#"{"choices":[{"message":{"content":"Hel"#),
    ])
    .await;
    let kind = falls_back(&primary.url(), settings()).await;
    assert_eq!(kind, FailureKind::InvalidResponse);
}

#[tokio::test]
async fn whole_json_answers_are_buffered_and_passed_on() {
    let answer = r#"{"choices":[{"message":{"content":"Hello"}}]}"#;
    let primary = RawUpstream::start(vec![
        Raw::head(200, &[("content-type", "application/json")]),
        Raw::text(answer),
    ])
    .await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = tiers(&primary.url(), &secondary.url(), settings());
    let response = call(&mut service).await;
    assert!(response.degraded().is_none());
    let bytes = response.into_body().into_buffered().unwrap();
    assert_eq!(bytes, answer);
    assert_eq!(secondary.hits(), 0);
}

#[tokio::test]
async fn answers_over_the_limit_fall_back_and_normal_ones_still_work() {
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(256 * 1024));
    let bounded = settings().max_answer_bytes(64 * 1024);
    // Streamed without a length: found while reading.
    let chunked = Upstream::always(Reply::ok_json(&big)).await;
    assert_eq!(
        falls_back(&chunked.url(), bounded).await,
        FailureKind::InvalidResponse
    );
    // Announced: refused before reading.
    let announced = Upstream::always(
        Reply::ok_json(&big).with_header("content-length", &big.len().to_string()),
    )
    .await;
    assert_eq!(
        falls_back(&announced.url(), bounded).await,
        FailureKind::InvalidResponse
    );
    // A normal answer through the same settings.
    let normal = Upstream::always(Reply::ok_json(r#"{"ok":true}"#)).await;
    let secondary = Upstream::always(clean_stream()).await;
    let mut service = tiers(&normal.url(), &secondary.url(), bounded);
    let response = call(&mut service).await;
    assert!(response.degraded().is_none());
    assert_eq!(text(response).await.unwrap(), r#"{"ok":true}"#);
}

#[tokio::test]
async fn an_error_kind_of_the_cut_answer_is_classified() {
    let error: tower_llm_resilience::BoxError =
        Box::new(tower_llm_resilience::fallback::IncompleteAnswer::Short {
            announced: 10,
            received: 3,
        });
    assert_eq!(error.classify_error(), FailureKind::InvalidResponse);
    assert_eq!(
        error.to_string(),
        "the answer ended after 3 of its 10 announced bytes"
    );
}
