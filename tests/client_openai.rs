//! `OpenAiClient` against a real HTTP server speaking the OpenAI wire format.
#![cfg(feature = "reqwest")]
mod support;

use std::time::Duration;

use support::{fixture, json_fixture, Reply, Step, Upstream};
use tower::{Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifyError, FailureKind};
use tower_llm_resilience::client::{
    ChatDelta, ChatRequest, ClientError, FinishReason, Message, OpenAiClient, ResponseFormat, Usage,
};
use tower_llm_resilience::BoxError;

const KEY: &str = "sk-test-0123456789abcdefSECRET";

fn hello() -> ChatRequest {
    ChatRequest::new(vec![
        Message::system("You are a helpful assistant."),
        Message::user("Hello!"),
    ])
}

fn with_options() -> ChatRequest {
    ChatRequest::new(vec![
        Message::system("You are a helpful assistant designed to output JSON."),
        Message::user("Who won the world series in 2020?"),
    ])
    .max_tokens(256)
    .temperature(0.2)
    .stop("\n\n")
    .response_format(ResponseFormat::JsonObject)
}

fn client(upstream: &Upstream) -> OpenAiClient {
    OpenAiClient::builder()
        .base_url(format!("{}/v1", upstream.url()))
        .api_key(KEY)
        .model("gpt-4o")
        .header("OpenAI-Organization", "org-abc123")
        .build()
        .unwrap()
}

fn stream_reply() -> Reply {
    Reply::sse(Step::events(&fixture("openai/chat_stream.sse")))
}

/// The fixture stream's events, minus the last `skip_last`, then `tail`.
fn stream_with(skip_last: usize, tail: Vec<Step>) -> Reply {
    let mut steps = Step::events(&fixture("openai/chat_stream.sse"));
    steps.truncate(steps.len() - skip_last);
    steps.extend(tail);
    Reply::sse(steps)
}

async fn error_of(reply: Reply) -> ClientError {
    let upstream = Upstream::always(reply).await;
    client(&upstream).oneshot(hello()).await.unwrap_err()
}

#[tokio::test]
async fn request_bodies_and_headers_match_the_fixtures() {
    let upstream = Upstream::start(|request, _| {
        if request.json()["stream"] == true {
            stream_reply()
        } else {
            Reply::ok_json(&fixture("openai/chat_response.json"))
        }
    })
    .await;
    let client = client(&upstream);
    client.clone().oneshot(hello()).await.unwrap();
    client.clone().oneshot(with_options()).await.unwrap();
    client.streaming().oneshot(hello()).await.unwrap();

    let requests = upstream.requests();
    assert_eq!(requests[0].json(), json_fixture("openai/chat_request.json"));
    assert_eq!(
        requests[1].json(),
        json_fixture("openai/chat_request_options.json")
    );
    assert_eq!(
        requests[2].json(),
        json_fixture("openai/chat_request_stream.json")
    );
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(first.headers["openai-organization"], "org-abc123");
    assert_eq!(requests[2].headers["accept"], "text/event-stream");
}

#[tokio::test]
async fn non_streaming_answer_is_translated() {
    let upstream = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    let answer = client(&upstream).oneshot(hello()).await.unwrap();
    assert_eq!(answer.provider, "openai");
    assert_eq!(answer.model, "gpt-4o-mini");
    assert_eq!(answer.id.as_deref(), Some("chatcmpl-123"));
    assert_eq!(
        answer.content,
        "\n\nHello there, how may I assist you today?"
    );
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(
        answer.usage,
        Some(Usage {
            input_tokens: 9,
            output_tokens: 12
        })
    );
}

#[tokio::test]
async fn streaming_answer_is_a_stream_of_deltas() {
    let upstream = Upstream::always(stream_reply()).await;
    let mut stream = client(&upstream)
        .streaming()
        .oneshot(hello())
        .await
        .unwrap();
    let mut deltas = Vec::new();
    while let Some(delta) = stream.next_delta().await {
        deltas.push(delta.unwrap());
    }
    assert_eq!(
        deltas,
        vec![
            ChatDelta::Text("Hello".into()),
            ChatDelta::Text(" there".into()),
            ChatDelta::Text("!".into()),
            ChatDelta::Finish(FinishReason::Stop),
            ChatDelta::Usage(Usage {
                input_tokens: 9,
                output_tokens: 3
            }),
        ]
    );
    assert_eq!(stream.model(), "gpt-4o-mini");
    assert_eq!(stream.id(), Some("chatcmpl-123"));
    assert!(stream.next_delta().await.is_none(), "stays ended");
}

#[tokio::test]
async fn stream_flag_on_the_plain_service_assembles_the_stream() {
    let upstream = Upstream::always(stream_reply()).await;
    let answer = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap();
    assert_eq!(answer.content, "Hello there!");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(answer.usage.map(|u| u.total_tokens()), Some(12));
    assert_eq!(
        upstream.requests()[0].json(),
        json_fixture("openai/chat_request_stream.json")
    );
}

#[tokio::test]
async fn provider_error_bodies_classify_through_the_taxonomy() {
    let rate = error_of(
        Reply::status(429, &fixture("openai/error_rate_limit.json"))
            .with_header("retry-after", "20"),
    )
    .await;
    assert_eq!(
        rate.kind(),
        &FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(20))
        }
    );
    assert_eq!(rate.retry_after(), Some(Duration::from_secs(20)));
    assert_eq!(rate.status().map(|s| s.as_u16()), Some(429));
    assert_eq!(rate.error_type(), Some("rate_limit_exceeded"));
    assert!(rate.message().starts_with("Rate limit reached"));

    let quota = error_of(Reply::status(
        429,
        &fixture("openai/error_insufficient_quota.json"),
    ))
    .await;
    assert_eq!(quota.kind(), &FailureKind::QuotaExhausted);

    let overloaded = error_of(
        Reply::status(503, &fixture("openai/error_overloaded.json"))
            .with_header("retry-after-ms", "1500"),
    )
    .await;
    assert_eq!(
        overloaded.kind(),
        &FailureKind::Overloaded {
            retry_after: Some(Duration::from_millis(1500))
        }
    );

    let context = error_of(Reply::status(
        400,
        &fixture("openai/error_context_length.json"),
    ))
    .await;
    assert_eq!(context.kind(), &FailureKind::ContextLengthExceeded);

    let auth = error_of(Reply::status(
        401,
        &fixture("openai/error_invalid_api_key.json"),
    ))
    .await;
    assert_eq!(auth.kind(), &FailureKind::Auth);

    // Boxed, as layers see it, the error still classifies.
    let boxed: BoxError = rate.into();
    assert_eq!(
        boxed.classify_error(),
        FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(20))
        }
    );
}

#[tokio::test]
async fn a_success_status_with_an_unusable_body_is_invalid() {
    for body in [
        "<html>bad gateway</html>".to_owned(),
        fixture("openai/error_overloaded.json"),
        r#"{"id":"x","choices":[]}"#.to_owned(),
    ] {
        let err = error_of(Reply::ok_json(&body)).await;
        assert_eq!(err.kind(), &FailureKind::InvalidResponse, "{body}");
    }
}

#[tokio::test]
async fn a_stream_cut_midway_is_an_error_after_the_deltas_so_far() {
    let upstream = Upstream::always(stream_with(5, vec![Step::Cut])).await;
    let mut stream = client(&upstream)
        .streaming()
        .oneshot(hello())
        .await
        .unwrap();
    assert_eq!(
        stream.next_delta().await.unwrap().unwrap(),
        ChatDelta::Text("Hello".into())
    );
    let err = stream.next_delta().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), &FailureKind::Connect, "{err}");
    assert!(stream.next_delta().await.is_none());
}

#[tokio::test]
async fn a_stream_without_done_is_an_error_not_a_short_answer() {
    // Up to the text, without the finish_reason chunk, the usage and `[DONE]`:
    // the body ends cleanly, and the answer is not whole.
    let upstream = Upstream::always(stream_with(3, vec![])).await;
    let err = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &FailureKind::InvalidResponse, "{err}");
    assert!(err.to_string().contains("[DONE]"), "{err}");
    // Not a connection failure: not retried as one.
    let policy = tower_llm_resilience::classify::FailurePolicy::DEFAULT;
    assert!(!policy.is_retryable(err.kind()));
}

#[tokio::test]
async fn a_finish_reason_completes_a_stream_that_never_sends_done() {
    // Some compatible servers end the body after the finish_reason chunk.
    for skip in [1, 2] {
        let upstream = Upstream::always(stream_with(skip, vec![])).await;
        let answer = client(&upstream)
            .oneshot(hello().stream(true))
            .await
            .unwrap();
        assert_eq!(answer.content, "Hello there!");
        assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    }
}

#[tokio::test]
async fn a_last_event_without_its_blank_line_still_counts() {
    let mut steps = Step::events(&fixture("openai/chat_stream.sse"));
    steps.pop();
    steps.push(Step::Chunk("data: [DONE]\n".into()));
    let upstream = Upstream::always(Reply::sse(steps)).await;
    let answer = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap();
    assert_eq!(answer.content, "Hello there!");
}

#[tokio::test]
async fn data_lines_without_end_are_bounded() {
    let upstream = Upstream::always(stream_with(
        5,
        vec![Step::Chunk("data: 0123456789abcdef\n".repeat(200))],
    ))
    .await;
    let bounded = OpenAiClient::builder()
        .base_url(format!("{}/v1", upstream.url()))
        .model("gpt-4o")
        .max_event_bytes(1024)
        .build()
        .unwrap();
    let err = bounded.oneshot(hello().stream(true)).await.unwrap_err();
    assert_eq!(err.kind(), &FailureKind::InvalidResponse, "{err}");
    assert!(err.to_string().contains("larger than 1024"), "{err}");
}

#[tokio::test]
async fn answers_over_the_body_limit_fail_without_being_read() {
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(64 * 1024));
    for reply in [
        Reply::ok_json(&big),
        // Announced by Content-Length: refused before reading.
        Reply::ok_json(&big).with_header("content-length", &big.len().to_string()),
    ] {
        let upstream = Upstream::always(reply).await;
        let bounded = OpenAiClient::builder()
            .base_url(format!("{}/v1", upstream.url()))
            .model("gpt-4o")
            .max_body_bytes(16 * 1024)
            .build()
            .unwrap();
        let err = bounded.oneshot(hello()).await.unwrap_err();
        assert_eq!(err.kind(), &FailureKind::InvalidResponse, "{err}");
        assert!(err.to_string().contains("16384"), "{err}");
    }
    // And a normal answer still works with the same limit.
    let upstream = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    let bounded = OpenAiClient::builder()
        .base_url(format!("{}/v1", upstream.url()))
        .model("gpt-4o")
        .max_body_bytes(16 * 1024)
        .build()
        .unwrap();
    bounded.oneshot(hello()).await.unwrap();
}

#[tokio::test]
async fn a_malformed_sse_line_is_an_error() {
    let garbage = Step::Chunk("{\"choices\": \"not an event\"}\n\n".into());
    let upstream = Upstream::always(stream_with(5, vec![garbage])).await;
    let mut stream = client(&upstream)
        .streaming()
        .oneshot(hello())
        .await
        .unwrap();
    assert_eq!(
        stream.next_delta().await.unwrap().unwrap(),
        ChatDelta::Text("Hello".into())
    );
    let err = stream.next_delta().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), &FailureKind::InvalidResponse, "{err}");

    // An event whose data is not a chunk is as broken as a bad line.
    let upstream = Upstream::always(stream_with(2, vec![Step::data("{\"choices\": 7}")])).await;
    let err = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &FailureKind::InvalidResponse, "{err}");
}

#[tokio::test]
async fn an_error_chunk_inside_the_stream_is_classified() {
    let error = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let upstream = Upstream::always(stream_with(4, vec![Step::data(error)])).await;
    let err = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &FailureKind::RateLimited { retry_after: None });
}

#[tokio::test(start_paused = true)]
async fn the_call_timeout_uses_tokio_time() {
    let upstream = Upstream::always(Reply::Stall).await;
    let slow = OpenAiClient::builder()
        .base_url(upstream.url())
        .model("m")
        .timeout(Duration::from_secs(30))
        // Longer than the call timeout: with paused time the clock may jump to the
        // next timer while the connection is made, and that must be the one tested.
        .connect_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = slow.oneshot(hello()).await.unwrap_err();
    assert_eq!(err.kind(), &FailureKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test]
async fn a_silent_stream_fails_after_the_idle_timeout() {
    let upstream = Upstream::always(stream_with(5, vec![Step::Stall])).await;
    let stalling = OpenAiClient::builder()
        .base_url(upstream.url())
        .model("m")
        .stream_idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut stream = stalling.streaming().oneshot(hello()).await.unwrap();
    assert!(stream.next_delta().await.unwrap().is_ok());
    // Pause only now: every task then waits for the stalled server, so the clock
    // jumps straight to the idle deadline, and no timer fires early during I/O.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let err = stream.next_delta().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), &FailureKind::Timeout);
    let waited = started.elapsed();
    assert!(
        // tokio's timer wheel rounds deadlines up to the next millisecond.
        waited > Duration::from_secs(9) && waited < Duration::from_millis(10_010),
        "{waited:?}"
    );
}

#[tokio::test]
async fn azure_style_base_url_and_key_header() {
    let upstream = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    let azure = OpenAiClient::builder()
        .base_url(format!(
            "{}/openai/deployments/gpt-4o/?api-version=2024-10-21",
            upstream.url()
        ))
        .azure_api_key(KEY)
        .provider_name("azure")
        .model("gpt-4o")
        .build()
        .unwrap();
    let answer = azure.oneshot(hello()).await.unwrap();
    assert_eq!(answer.provider, "azure");
    let request = &upstream.requests()[0];
    assert_eq!(
        request.path,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(request.headers["api-key"], KEY);
    assert!(request.headers.get("authorization").is_none());
}

#[tokio::test]
async fn the_api_key_is_never_in_debug_output_or_errors() {
    let builder = OpenAiClient::builder().api_key(KEY).model("gpt-4o");
    assert!(!format!("{builder:?}").contains(KEY));
    let built = builder.build().unwrap();
    assert!(!format!("{built:?}").contains(KEY));
    assert!(format!("{built:?}").contains("[REDACTED]"));

    // A server that echoes the key back in its error message.
    let echo = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {KEY}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
    );
    let err = error_of(Reply::status(401, &echo)).await;
    assert_eq!(err.kind(), &FailureKind::Auth);
    for shown in [
        err.to_string(),
        format!("{err:?}"),
        err.message().to_owned(),
    ] {
        assert!(!shown.contains(KEY), "{shown}");
    }
    assert!(err.message().contains("[REDACTED]"));
}

#[tokio::test]
async fn requests_without_a_model_fail_without_calling() {
    let upstream = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    let mut no_model = OpenAiClient::builder()
        .base_url(upstream.url())
        .build()
        .unwrap();
    let err = no_model.call(hello()).await.unwrap_err();
    assert_eq!(err.kind(), &FailureKind::BadRequest);
    assert_eq!(upstream.hits(), 0);
    // The request's own model wins over the client's default.
    client(&upstream)
        .oneshot(hello().model("gpt-4.1"))
        .await
        .unwrap();
    assert_eq!(upstream.requests()[0].json()["model"], "gpt-4.1");
}

#[test]
fn builders_reject_bad_configuration() {
    let bad = [
        OpenAiClient::builder().base_url("not a url").build().err(),
        OpenAiClient::builder().base_url("ftp://x/v1").build().err(),
        OpenAiClient::builder().api_key("line\nbreak").build().err(),
        OpenAiClient::builder()
            .header("bad header", "v")
            .build()
            .err(),
        OpenAiClient::builder()
            .timeout(Duration::ZERO)
            .build()
            .err(),
        OpenAiClient::builder().provider_name(" ").build().err(),
    ];
    for (i, err) in bad.into_iter().enumerate() {
        let err = err.unwrap_or_else(|| panic!("case {i} built"));
        assert!(!err.to_string().contains("line\nbreak"));
    }
}
