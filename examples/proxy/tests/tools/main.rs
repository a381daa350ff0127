//! Tool-using conversations through the proxy: an OpenAI-compatible primary and
//! an Anthropic secondary (the mock in each format, both calling a tool), a
//! client that speaks OpenAI's format throughout, and a fallback in the middle
//! of the conversation, with tool calls and results in the history. Driven over
//! raw HTTP, and by the official OpenAI Python SDK (`sdk.rs`).
//!
//! The binary sets one environment variable of its own (the Anthropic
//! upstream's key), once, before any proxy reads it.

#[path = "../common/mod.rs"]
mod common;
mod sdk;

use std::sync::Once;

use common::*;
use llm_proxy::mock::{MockFormat, MockOptions, MockUpstream};
use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};

const KEY_ENV: &str = "LLM_PROXY_TEST_TOOLS_ANTHROPIC_KEY";
const CLAUDE: &str = "claude-sonnet-4-5";
const WEATHER_ARGUMENTS: &str = r#"{"city":"Paris","unit":"celsius"}"#;

fn set_key() {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var(KEY_ENV, "sk-ant-test-tools"));
}

async fn mock_calling(name: &str, format: MockFormat) -> MockUpstream {
    MockUpstream::start(MockOptions {
        name: name.into(),
        format,
        tool_call: Some("get_weather".into()),
        tool_arguments: WEATHER_ARGUMENTS.into(),
        ..MockOptions::default()
    })
    .await
    .expect("mock upstream starts")
}

/// `env.primary` is an OpenAI mock, `env.secondary` an Anthropic one (upstream
/// `secondary`, model `CLAUDE`); model `smart` falls back from the first to the
/// second, model `claude-only` has the Anthropic tier alone.
pub(crate) async fn start() -> Env {
    set_key();
    let primary = mock_calling("primary", MockFormat::Openai).await;
    let secondary = mock_calling("claude", MockFormat::Anthropic).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(
        &primary.base_url(),
        &secondary.base_url(),
        &dir.path().join("escalations.db"),
        "",
    )
    .replace(
        "name = \"secondary\"\nkind = \"openai\"",
        &format!("name = \"secondary\"\nkind = \"anthropic\"\napi_key_env = \"{KEY_ENV}\""),
    )
    .replace("model = \"gpt-4o-mini\"", &format!("model = \"{CLAUDE}\""))
    .replace("max_body_bytes = 4096", "max_body_bytes = 65536")
    .replace(
        "[auth]",
        &format!(
            "[[models]]\nname = \"claude-only\"\ntiers = [ {{ upstream = \"secondary\", model = \"{CLAUDE}\" }} ]\n\n[auth]"
        ),
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

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}})
}

fn question() -> Value {
    json!({"role": "user", "content": [
        {"type": "text", "text": "What's the weather in Paris? And what is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]})
}

/// The JSON chunks of an OpenAI event stream, checking it ends with `[DONE]`.
fn chunks(stream: &str) -> Vec<Value> {
    assert!(stream.ends_with("data: [DONE]\n\n"), "{stream}");
    stream
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("every chunk is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_conversation_falls_back_mid_way_to_an_anthropic_tier() {
    let env = start().await;
    // Turn 1: the OpenAI primary calls the tool.
    let mut messages = vec![
        json!({"role": "system", "content": "Use the tools."}),
        question(),
    ];
    let response = env
        .chat(json!({"model": "smart", "messages": messages, "tools": [weather_tool()]}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "primary");
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = choice["message"]["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], WEATHER_ARGUMENTS);
    let call_id = call["id"].as_str().unwrap().to_owned();

    // The client runs the tool; the primary goes down before the next turn.
    messages.push(choice["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": "{\"celsius\":21}"}));
    env.primary.set(|o| o.fail_rate = 1.0);
    let response = env
        .chat(
            json!({"model": "smart", "messages": messages, "tools": [weather_tool()],
            "tool_choice": "auto", "parallel_tool_calls": false}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from claude. (tool results: 1)"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // Claude received the whole history, in its own terms.
    let seen = env.secondary.last_request().unwrap();
    assert_eq!(seen.tools, ["get_weather"]);
    assert_eq!(seen.tool_use_ids, std::slice::from_ref(&call_id));
    assert_eq!(seen.tool_result_ids, [call_id]);
    assert_eq!(seen.images, 1);
    assert_eq!(seen.system.as_deref(), Some("Use the tools."));
    assert_eq!(seen.roles, ["user", "assistant", "user"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_tier_calls_tools_in_the_openai_format() {
    let env = start().await;
    env.primary.set(|o| o.fail_rate = 1.0);
    let ask = |stream: bool| {
        json!({"model": "smart", "stream": stream, "messages": [question()],
            "tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    };

    let response = env.chat(ask(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    let body: Value = response.json().await.unwrap();
    let message = &body["choices"][0]["message"];
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert!(message["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("toolu_"));
    let arguments: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        arguments,
        serde_json::from_str::<Value>(WEATHER_ARGUMENTS).unwrap()
    );

    let response = env.chat(ask(true)).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    let chunks = chunks(&response.text().await.unwrap());
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    // The first fragment names the call; the others carry its arguments.
    assert!(calls[0]["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls.iter().all(|c| c["index"] == 0));
    assert!(calls[1..].iter().all(|c| c.get("id").is_none()));
    let arguments: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        serde_json::from_str::<Value>(WEATHER_ARGUMENTS).unwrap()
    );
    assert!(calls.len() >= 3, "the arguments came in fragments");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_anthropic_cannot_express_is_a_400_naming_the_field() {
    let env = start().await;
    let not_an_object = json!({"model": "claude-only", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "[\"Paris\"]"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21"}]});
    let audio = json!({"model": "claude-only", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]});
    for (body, field) in [
        (
            not_an_object,
            "`messages[1].tool_calls[0].function.arguments`",
        ),
        (audio, "`messages[0].content[0].type`"),
    ] {
        let response = env.chat(body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
    assert_eq!(env.secondary.requests(), 0);
    // A request it can express still works right after.
    let response = env
        .chat(json!({"model": "claude-only", "messages": [question()]}))
        .await;
    assert_eq!(response.status(), 200);
}
