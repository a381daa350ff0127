//! Anthropic upstreams end to end: the mock in Anthropic mode (the Messages API)
//! behind an upstream of `kind = "anthropic"`, in front of an OpenAI secondary;
//! clients see the OpenAI format either way.

use std::sync::Once;
use std::time::Duration;

use crate::common::*;
use llm_proxy::mock::{MockFormat, MockOptions, MockUpstream};
use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_llm_resilience::classify::FailureKind;
use tower_llm_resilience::client::{
    AnthropicClient, ChatDelta, ChatRequest, FinishReason, Message, Usage,
};

/// The variable the Anthropic upstream's `api_key_env` names.
const KEY_ENV: &str = "LLM_PROXY_TEST_ANTHROPIC_KEY";
const KEY: &str = "sk-ant-test-0123456789";
/// The model name the Anthropic tier sends.
const CLAUDE: &str = "claude-sonnet-4-5";

fn set_key() {
    static SET: Once = Once::new();
    // Once, before any proxy of this binary reads it; every test sets the same value.
    SET.call_once(|| std::env::set_var(KEY_ENV, KEY));
}

async fn anthropic_mock(name: &str) -> MockUpstream {
    MockUpstream::start(MockOptions {
        name: name.into(),
        format: MockFormat::Anthropic,
        ..MockOptions::default()
    })
    .await
    .expect("mock upstream starts")
}

/// The shared test config (see `common::config_text`) with its primary turned
/// into an Anthropic upstream named `claude` (`timeout_secs` to answer, its key
/// from `KEY_ENV`, model `CLAUDE`) in front of the OpenAI secondary.
fn config_text(claude: &str, secondary: &str, timeout_secs: &str, db: &std::path::Path) -> String {
    crate::common::config_text(claude, secondary, db, "")
        .replace("\"primary\"", "\"claude\"")
        .replacen(
            "kind = \"openai\"",
            &format!("kind = \"anthropic\"\napi_key_env = \"{KEY_ENV}\""),
            1,
        )
        .replacen(
            "timeout_secs = 5",
            &format!("timeout_secs = {timeout_secs}"),
            1,
        )
        .replace("model = \"gpt-4o\"", &format!("model = \"{CLAUDE}\""))
}

/// `env.primary` is the Anthropic mock, `env.secondary` an OpenAI one.
async fn start_with_timeout(timeout_secs: &str) -> Env {
    set_key();
    let primary = anthropic_mock("claude").await;
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(
        &primary.base_url(),
        &secondary.base_url(),
        timeout_secs,
        &dir.path().join("escalations.db"),
    );
    let config = Config::from_toml(&text).expect("test config is valid");
    let proxy = Proxy::start(&config).expect("proxy starts");
    Env {
        primary,
        secondary,
        proxy,
        http: reqwest::Client::new(),
        dir,
        config,
    }
}

async fn start() -> Env {
    start_with_timeout("5").await
}

fn ask_stream(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// The JSON chunks of an OpenAI event stream (`[DONE]` and error events left out).
fn chunks(stream: &str) -> Vec<Value> {
    stream
        .split("\n\n")
        .filter(|event| !event.contains("event: error"))
        .flat_map(str::lines)
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("every chunk is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_completion_through_an_anthropic_primary_reads_as_openai() {
    let env = start().await;
    let response = env
        .chat(json!({
            "model": "smart",
            "max_tokens": 64,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hello"},
            ],
        }))
        .await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("application/json"));
    assert_eq!(header(&response, "x-llm-proxy-tier"), "claude");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "false");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(content(&body), "Hello from claude.");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["model"], CLAUDE);
    assert_eq!(body["id"], "msg_mock_claude_1");
    // 5 prompt tokens, one output token per word.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    );

    // What the Anthropic upstream received.
    let seen = env.primary.last_request().expect("the mock was asked");
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.model.as_deref(), Some(CLAUDE));
    assert_eq!(seen.api_key.as_deref(), Some(KEY));
    assert_eq!(seen.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(seen.max_tokens, Some(64));
    assert_eq!(seen.system.as_deref(), Some("Be brief."));
    assert_eq!(seen.roles, ["user"]);
    assert!(!seen.stream);
    assert_eq!(env.primary.requests(), 1);
    assert_eq!(env.secondary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_through_an_anthropic_primary_reads_as_openai_chunks() {
    let env = start().await;
    // Several words, some of them not ASCII: one text_delta each upstream.
    let reply = "Bonjour ! Ça va très bien, merci.";
    env.primary.set(|o| o.reply = Some(reply.into()));
    let response = env.chat(ask_stream("smart")).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&response, "x-llm-proxy-tier"), "claude");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "false");
    let body = response.text().await.unwrap();
    let (text, done, error) = sse_text(&body);
    assert_eq!(text, reply);
    assert!(done && !error, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");

    let chunks = chunks(&body);
    // A role chunk, one chunk per word, a finish chunk.
    assert_eq!(chunks.len(), 1 + reply.split(' ').count() + 1, "{body}");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        assert_eq!(chunk["model"], CLAUDE);
        // The Anthropic message's id.
        assert_eq!(chunk["id"], "msg_mock_claude_1", "{chunk}");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));

    let seen = env.primary.last_request().unwrap();
    assert!(seen.stream);
    assert_eq!(seen.model.as_deref(), Some(CLAUDE));
    assert_eq!(seen.api_key.as_deref(), Some(KEY));
    assert_eq!(env.secondary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_request_options_reach_the_anthropic_upstream() {
    let env = start().await;
    // JSON was asked for: a JSON answer, so the escalation rule lets it through.
    let answer = r#"{"team": "Dodgers"}"#;
    env.primary.set(|o| o.reply = Some(answer.into()));
    let schema = json!({"type": "object", "properties": {"team": {"type": "string"}}});
    let response = env
        .chat(json!({
            "model": "strict",
            "messages": [
                {"role": "developer", "content": "Sports only."},
                {"role": "user", "content": "Who won the 2020 world series?"},
            ],
            "stop": "END",
            "max_completion_tokens": 32,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "winner", "schema": schema, "strict": true}},
            "user": "u-1",
        }))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "claude");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), answer);
    let seen = env.primary.last_request().unwrap();
    assert_eq!(seen.stop_sequences, ["END"]);
    assert_eq!(seen.max_tokens, Some(32));
    assert_eq!(seen.roles, ["user"]);
    let system = seen.system.unwrap();
    assert!(system.starts_with("Sports only.\n\n"), "{system}");
    assert!(system.ends_with(&schema.to_string()), "{system}");
    assert_eq!(env.secondary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_or_overloaded_anthropic_primary_falls_back_to_openai() {
    type Failing = fn(&mut MockOptions);
    let cases: [(&str, Failing); 3] = [
        ("429 rate_limit_error", |o| o.rate_limit_rate = 1.0),
        ("529 overloaded_error", |o| o.overload_rate = 1.0),
        ("500 api_error", |o| o.fail_rate = 1.0),
    ];
    for (case, failing) in cases {
        let env = start().await;
        env.primary.set(failing);
        let response = env.chat(ask("smart")).await;
        assert_eq!(response.status(), 200, "{case}");
        assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary", "{case}");
        assert_eq!(header(&response, "x-llm-proxy-degraded"), "true", "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(content(&body), "Hello from secondary.", "{case}");
        assert_eq!(body["model"], "gpt-4o-mini", "{case}");

        // A stream falls back the same way: the error comes before any event.
        let response = env.chat(ask_stream("smart")).await;
        assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary", "{case}");
        let body = response.text().await.unwrap();
        let (text, done, error) = sse_text(&body);
        assert_eq!(text, "Hello from secondary.", "{case}");
        assert!(done && !error, "{case}: {body}");
        assert_eq!(env.primary.requests(), 2, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_retry_after_reaches_the_client_when_every_tier_is_rate_limited() {
    let env = start().await;
    env.primary.set(|o| {
        o.rate_limit_rate = 1.0;
        o.retry_after_secs = 9;
    });
    let response = env.chat(ask("solo")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "9");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Overloaded is not a rate limit: an upstream failure.
    env.primary.set(|o| {
        o.rate_limit_rate = 0.0;
        o.overload_rate = 1.0;
    });
    let response = env.chat(ask("solo")).await;
    assert_eq!(response.status(), 502);
    assert_eq!(env.secondary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_stream_cut_midway_ends_with_an_error_event() {
    let env = start().await;
    env.primary.set(|o| {
        o.cut_rate = 1.0;
        // message_start, content_block_start, ping, the first word.
        o.cut_after = 4;
    });
    let response = env.chat(ask_stream("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "claude");
    let body = response.text().await.unwrap();
    let (text, done, error) = sse_text(&body);
    assert_eq!(text, "Hello ");
    assert!(error, "no error event in {body}");
    assert!(!done, "a cut stream must not look complete: {body}");
    assert!(body.contains("stream_interrupted"), "{body}");
    // The secondary was not asked: the client already had part of the answer.
    assert_eq!(env.secondary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_stream_that_breaks_before_its_first_word_falls_back_cleanly() {
    // 0: before any event; 2: after message_start and content_block_start, no
    // text yet. Either way the client has been sent nothing.
    for cut_after in [0, 2] {
        let env = start().await;
        env.primary.set(|o| {
            o.cut_rate = 1.0;
            o.cut_after = cut_after;
        });
        let response = env.chat(ask_stream("smart")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "x-llm-proxy-tier"),
            "secondary",
            "cut after {cut_after}"
        );
        let body = response.text().await.unwrap();
        let (text, done, error) = sse_text(&body);
        assert_eq!(
            text, "Hello from secondary.",
            "cut after {cut_after}: {body}"
        );
        assert!(done && !error, "cut after {cut_after}: {body}");
        assert!(!body.contains("claude"), "{body}");
        assert_eq!(env.primary.requests(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_stream_without_events_falls_back_after_the_first_event_timeout() {
    // The proxy's first_event_timeout_secs (1 s) is the point: a real wait.
    let env = start().await;
    env.primary.set(|o| o.stall_rate = 1.0);
    let response = env.chat(ask_stream("smart")).await;
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    let (text, done, error) = sse_text(&response.text().await.unwrap());
    assert_eq!(text, "Hello from secondary.");
    assert!(done && !error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_primary_that_does_not_answer_in_time_falls_back() {
    // The upstream's timeout_secs (0.3 s) is the point: a real wait.
    let env = start_with_timeout("0.3").await;
    env.primary.set(|o| o.stall_rate = 1.0);
    let response = env.chat(ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(env.primary.requests(), 1);
}

/// The mock itself, through the library's client and raw HTTP: the Messages
/// API's answers, event sequence and error bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_speaks_the_messages_api() {
    let mock = anthropic_mock("claude").await;
    let client = AnthropicClient::builder()
        .base_url(format!("http://{}", mock.addr()))
        .api_key(KEY)
        .model(CLAUDE)
        .build()
        .unwrap();
    let hello = || ChatRequest::new(vec![Message::user("Say hello")]);

    let answer = client.clone().oneshot(hello()).await.unwrap();
    assert_eq!(answer.content, "Hello from claude.");
    assert_eq!(answer.model, CLAUDE);
    assert_eq!(answer.id.as_deref(), Some("msg_mock_claude_1"));
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(
        answer.usage,
        Some(Usage {
            input_tokens: 5,
            output_tokens: 3
        })
    );

    let mut stream = client.streaming().oneshot(hello()).await.unwrap();
    let mut deltas = Vec::new();
    while let Some(delta) = stream.next_delta().await {
        deltas.push(delta.unwrap());
    }
    assert_eq!(
        deltas,
        [
            ChatDelta::Text("Hello ".into()),
            ChatDelta::Text("from ".into()),
            ChatDelta::Text("claude.".into()),
            ChatDelta::Finish(FinishReason::Stop),
            ChatDelta::Usage(Usage {
                input_tokens: 5,
                output_tokens: 3
            }),
        ]
    );
    assert_eq!(stream.id(), Some("msg_mock_claude_2"));

    // The raw event sequence.
    let http = reqwest::Client::new();
    let raw = http
        .post(format!("{}/messages", mock.base_url()))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": CLAUDE, "max_tokens": 16, "stream": true,
                      "messages": [{"role": "user", "content": "Say hello"}]}))
        .send()
        .await
        .unwrap();
    assert!(header(&raw, "content-type").starts_with("text/event-stream"));
    let text = raw.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );

    // Errors, classified as the library classifies Anthropic's.
    mock.set(|o| {
        o.rate_limit_rate = 1.0;
        o.retry_after_secs = 3;
    });
    let error = client.clone().oneshot(hello()).await.unwrap_err();
    assert_eq!(
        error.kind(),
        &FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(error.error_type(), Some("rate_limit_error"));
    mock.set(|o| {
        o.rate_limit_rate = 0.0;
        o.overload_rate = 1.0;
    });
    let error = client.clone().oneshot(hello()).await.unwrap_err();
    assert_eq!(error.kind(), &FailureKind::Overloaded { retry_after: None });
    assert_eq!(error.status().map(|s| s.as_u16()), Some(529));
    assert_eq!(error.error_type(), Some("overloaded_error"));
    mock.set(|o| {
        o.overload_rate = 0.0;
        o.fail_rate = 1.0;
    });
    let error = client.clone().oneshot(hello()).await.unwrap_err();
    assert_eq!(error.kind(), &FailureKind::ServerError);
    assert_eq!(error.error_type(), Some("api_error"));

    // Requests the real API refuses.
    let no_version = http
        .post(format!("{}/messages", mock.base_url()))
        .json(&json!({"model": CLAUDE, "max_tokens": 16, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 400);
    let body: Value = no_version.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let openai_path = http
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&ask("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_path.status(), 404);
}
