//! `AnthropicClient` against a real HTTP server speaking the Messages API.
#![cfg(feature = "reqwest")]
mod support;

use std::time::Duration;

use support::{fixture, json_fixture, Reply, Step, Upstream};
use tower::ServiceExt;
use tower_llm_resilience::classify::{ClassifyError, FailureKind};
use tower_llm_resilience::client::{
    AnthropicClient, ChatDelta, ChatRequest, ClientError, FinishReason, Message, ResponseFormat,
    Usage,
};
use tower_llm_resilience::BoxError;

const KEY: &str = "sk-ant-api03-test-SECRET-0123456789";

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

fn client(upstream: &Upstream) -> AnthropicClient {
    AnthropicClient::builder()
        .base_url(upstream.url())
        .api_key(KEY)
        .model("claude-sonnet-4-20250514")
        .header("anthropic-beta", "output-128k-2025-02-19")
        .build()
        .unwrap()
}

fn stream_reply() -> Reply {
    Reply::sse(Step::events(&fixture("anthropic/messages_stream.sse")))
}

/// The fixture stream's events, minus the last `skip_last`, then `tail`.
fn stream_with(skip_last: usize, tail: Vec<Step>) -> Reply {
    let mut steps = Step::events(&fixture("anthropic/messages_stream.sse"));
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
            Reply::ok_json(&fixture("anthropic/messages_response.json"))
        }
    })
    .await;
    let client = client(&upstream);
    client.clone().oneshot(hello()).await.unwrap();
    client.clone().oneshot(with_options()).await.unwrap();
    client.streaming().oneshot(hello()).await.unwrap();

    let requests = upstream.requests();
    assert_eq!(
        requests[0].json(),
        json_fixture("anthropic/messages_request.json")
    );
    assert_eq!(
        requests[1].json(),
        json_fixture("anthropic/messages_request_options.json")
    );
    assert_eq!(
        requests[2].json(),
        json_fixture("anthropic/messages_request_stream.json")
    );
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/messages");
    assert_eq!(first.headers["x-api-key"], KEY);
    assert_eq!(first.headers["anthropic-version"], "2023-06-01");
    assert_eq!(first.headers["anthropic-beta"], "output-128k-2025-02-19");
    assert_eq!(first.headers["content-type"], "application/json");
    assert!(first.headers.get("authorization").is_none());
}

#[tokio::test]
async fn the_same_neutral_request_fits_both_providers() {
    // Several system messages join into one system prompt; a JSON schema request
    // becomes an instruction carrying the schema.
    let upstream =
        Upstream::always(Reply::ok_json(&fixture("anthropic/messages_response.json"))).await;
    let schema = serde_json::json!({"type": "object", "properties": {"team": {"type": "string"}}});
    let request = ChatRequest::new(vec![
        Message::system("Be brief."),
        Message::user("Who won?"),
        Message::assistant("Who won what?"),
        Message::system("Sports only."),
        Message::user("The 2020 world series."),
    ])
    .response_format(ResponseFormat::JsonSchema {
        name: "winner".into(),
        schema: schema.clone(),
        strict: true,
    });
    client(&upstream).oneshot(request).await.unwrap();
    let sent = upstream.requests()[0].json();
    let system = sent["system"].as_str().unwrap();
    assert!(system.starts_with("Be brief.\n\nSports only.\n\nRespond with a single JSON object"));
    assert!(system.ends_with(&schema.to_string()));
    let roles: Vec<_> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(sent["max_tokens"], 1024);
}

#[tokio::test]
async fn non_streaming_answer_is_translated() {
    let upstream =
        Upstream::always(Reply::ok_json(&fixture("anthropic/messages_response.json"))).await;
    let answer = client(&upstream).oneshot(hello()).await.unwrap();
    assert_eq!(answer.provider, "anthropic");
    assert_eq!(answer.model, "claude-sonnet-4-20250514");
    assert_eq!(answer.id.as_deref(), Some("msg_013Zva2CMHLNnXjNJJKqJ2EF"));
    assert_eq!(answer.content, "Hi! My name is Claude.");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(
        answer.usage,
        Some(Usage {
            input_tokens: 2095,
            output_tokens: 503
        })
    );
}

#[tokio::test]
async fn content_blocks_other_than_text_are_skipped() {
    let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
        "content":[{"type":"thinking","thinking":"hmm","signature":"x"},{"type":"text","text":"Hello"},
        {"type":"text","text":", world"}],"stop_reason":"max_tokens","stop_sequence":null,
        "usage":{"input_tokens":3,"output_tokens":4}}"#;
    let upstream = Upstream::always(Reply::ok_json(body)).await;
    let answer = client(&upstream).oneshot(hello()).await.unwrap();
    assert_eq!(answer.content, "Hello, world");
    assert_eq!(answer.finish_reason, Some(FinishReason::Length));
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
            ChatDelta::Text("!".into()),
            ChatDelta::Finish(FinishReason::Stop),
            ChatDelta::Usage(Usage {
                input_tokens: 25,
                output_tokens: 15
            }),
        ]
    );
    assert_eq!(stream.id(), Some("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"));
    assert_eq!(stream.model(), "claude-sonnet-4-20250514");

    let assembled = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap();
    assert_eq!(assembled.content, "Hello!");
    assert_eq!(assembled.usage.map(|u| u.total_tokens()), Some(40));
}

#[tokio::test]
async fn provider_error_bodies_classify_through_the_taxonomy() {
    let rate = error_of(
        Reply::status(429, &fixture("anthropic/error_rate_limit.json"))
            .with_header("retry-after", "17"),
    )
    .await;
    assert_eq!(
        rate.kind(),
        &FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(17))
        }
    );
    assert_eq!(rate.error_type(), Some("rate_limit_error"));

    let overloaded = error_of(Reply::status(
        529,
        &fixture("anthropic/error_overloaded.json"),
    ))
    .await;
    assert_eq!(
        overloaded.kind(),
        &FailureKind::Overloaded { retry_after: None }
    );
    assert_eq!(overloaded.status().map(|s| s.as_u16()), Some(529));

    let too_long = error_of(Reply::status(
        400,
        &fixture("anthropic/error_prompt_too_long.json"),
    ))
    .await;
    assert_eq!(too_long.kind(), &FailureKind::ContextLengthExceeded);

    let auth = error_of(Reply::status(
        401,
        &fixture("anthropic/error_authentication.json"),
    ))
    .await;
    assert_eq!(auth.kind(), &FailureKind::Auth);
    assert_eq!(
        auth.to_string(),
        "anthropic: auth: HTTP 401 authentication_error: invalid x-api-key"
    );

    let boxed: BoxError = overloaded.into();
    assert_eq!(
        boxed.classify_error(),
        FailureKind::Overloaded { retry_after: None }
    );
}

#[tokio::test]
async fn an_error_event_mid_stream_is_classified() {
    let upstream = Upstream::always(Reply::sse(Step::events(&fixture(
        "anthropic/stream_error_overloaded.sse",
    ))))
    .await;
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
    assert_eq!(err.kind(), &FailureKind::Overloaded { retry_after: None });
    assert_eq!(err.error_type(), Some("overloaded_error"));
    assert!(stream.next_delta().await.is_none());
}

#[tokio::test]
async fn a_stream_cut_midway_is_an_error() {
    let upstream = Upstream::always(stream_with(4, vec![Step::Cut])).await;
    let err = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &FailureKind::Connect, "{err}");
}

#[tokio::test]
async fn a_stream_without_message_stop_is_an_error() {
    let upstream = Upstream::always(stream_with(1, vec![])).await;
    let mut stream = client(&upstream)
        .streaming()
        .oneshot(hello())
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next_delta().await {
        items.push(item);
    }
    // Every delta arrives, and then the error instead of a silent end.
    assert_eq!(items.len(), 5);
    assert!(items[..4].iter().all(Result::is_ok));
    let err = items[4].as_ref().unwrap_err();
    assert_eq!(err.kind(), &FailureKind::InvalidResponse);
    assert!(err.to_string().contains("message_stop"), "{err}");
}

#[tokio::test]
async fn a_malformed_sse_line_is_an_error() {
    let broken = Step::Chunk(
        "event: content_block_delta\ndata {\"type\": \"content_block_delta\"}\n\n".into(),
    );
    let upstream = Upstream::always(stream_with(4, vec![broken])).await;
    let err = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &FailureKind::InvalidResponse, "{err}");

    let not_json = Step::Chunk("event: content_block_delta\ndata: {\"type\": \n\n".into());
    let upstream = Upstream::always(stream_with(4, vec![not_json])).await;
    let err = client(&upstream)
        .oneshot(hello().stream(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &FailureKind::InvalidResponse, "{err}");
}

#[tokio::test]
async fn the_api_key_is_never_in_debug_output_or_errors() {
    let builder = AnthropicClient::builder().api_key(KEY);
    assert!(!format!("{builder:?}").contains(KEY));
    let built = builder.model("m").build().unwrap();
    assert!(!format!("{built:?}").contains(KEY));

    let echo = format!(
        r#"{{"type":"error","error":{{"type":"authentication_error","message":"invalid x-api-key: {KEY}"}}}}"#
    );
    let err = error_of(Reply::status(401, &echo)).await;
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(KEY), "{shown}");
    }
}

#[test]
fn base_urls_with_or_without_v1() {
    let plain = AnthropicClient::builder()
        .base_url("http://127.0.0.1:9/")
        .build()
        .unwrap();
    assert_eq!(plain.endpoint(), "http://127.0.0.1:9/v1/messages");
    let with_v1 = AnthropicClient::builder()
        .base_url("http://127.0.0.1:9/proxy/v1")
        .build()
        .unwrap();
    assert_eq!(with_v1.endpoint(), "http://127.0.0.1:9/proxy/v1/messages");
    assert!(AnthropicClient::builder()
        .default_max_tokens(0)
        .build()
        .is_err());
}

/// A call's own headers (`ChatRequest::header`) go with that call only, buffered
/// or streamed, and never into the body; one of the client's own names is
/// replaced for that call.
#[tokio::test]
async fn a_requests_own_headers_go_with_that_call_only() {
    use http::{HeaderName, HeaderValue};
    let upstream = Upstream::start(|request, _| {
        if request.json()["stream"] == true {
            stream_reply()
        } else {
            Reply::ok_json(&fixture("anthropic/messages_response.json"))
        }
    })
    .await;
    let client = client(&upstream);
    let traced = |request: ChatRequest| {
        request
            .header(
                HeaderName::from_static("traceparent"),
                HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            )
            .header(
                HeaderName::from_static("anthropic-beta"),
                HeaderValue::from_static("this-call-only"),
            )
    };
    client.clone().oneshot(traced(hello())).await.unwrap();
    client.streaming().oneshot(traced(hello())).await.unwrap();
    client.clone().oneshot(hello()).await.unwrap();

    let requests = upstream.requests();
    for traced in &requests[..2] {
        assert_eq!(
            traced.headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(traced.headers["anthropic-beta"], "this-call-only");
        assert!(!String::from_utf8_lossy(&traced.body).contains("traceparent"));
    }
    assert!(requests[2].headers.get("traceparent").is_none());
    assert_eq!(
        requests[2].headers["anthropic-beta"],
        "output-128k-2025-02-19"
    );
}
