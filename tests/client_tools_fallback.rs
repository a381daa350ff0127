//! A tool-using conversation across providers, against real servers speaking
//! each wire format: the OpenAI primary calls a tool, goes down, and the
//! Anthropic tier answers the tool result with the whole history translated;
//! a tool call that fails its schema goes to the next tier or to a human, as
//! the user chooses.
//!
//! Real time throughout, like `client_fallback_chain.rs`: nothing here is about
//! a timer, and paused time lets reqwest's loopback I/O race the clock.
#![cfg(feature = "reqwest")]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{fixture, Reply, Upstream};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_llm_resilience::classify::FailureKind;
use tower_llm_resilience::client::{
    AnthropicClient, ChatAdapter, ChatRequest, ChatResponse, FinishReason, Message, OpenAiClient,
    Tool, ToolCall, ToolCallCheck,
};
use tower_llm_resilience::escalation::{EscalationLayer, Handle, TimeoutDefault};
use tower_llm_resilience::fallback::{FallbackLayer, MarkDegraded, Tier};

const CLAUDE: &str = "claude-sonnet-4-20250514";

fn weather() -> Tool {
    Tool::new(
        "get_current_weather",
        json!({"type": "object", "required": ["location"], "properties": {
            "location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}),
    )
    .description("Get the current weather in a given location")
}

fn openai(upstream: &Upstream) -> OpenAiClient {
    OpenAiClient::builder()
        .base_url(format!("{}/v1", upstream.url()))
        .api_key("sk-test")
        .model("gpt-4o")
        .build()
        .unwrap()
}

fn anthropic(upstream: &Upstream) -> AnthropicClient {
    AnthropicClient::builder()
        .base_url(upstream.url())
        .api_key("sk-ant-test")
        .model(CLAUDE)
        .build()
        .unwrap()
}

/// An Anthropic answer in text.
fn claude_says(text: &str) -> Reply {
    Reply::ok_json(
        &json!({"id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 5}})
        .to_string(),
    )
}

/// An OpenAI answer calling the weather tool with `arguments`.
fn gpt_calls(arguments: &str) -> Reply {
    Reply::ok_json(
        &json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get_current_weather", "arguments": arguments}}]}}]})
        .to_string(),
    )
}

#[tokio::test]
async fn an_openai_conversation_with_tool_calls_continues_on_anthropic() {
    let gpt = Upstream::sequence(vec![
        Reply::ok_json(&fixture("openai/chat_response_tool_calls.json")),
        Reply::status(503, &fixture("openai/error_overloaded.json")),
    ])
    .await;
    let claude = Upstream::always(claude_says("Boston is 72°F and sunny; Paris 18°C.")).await;
    let fallback = FallbackLayer::builder()
        .primary_name("openai")
        .tier(
            Tier::new("anthropic", anthropic(&claude))
                .map_request(|r: ChatRequest| r.model(CLAUDE)),
        )
        .build()
        .unwrap();
    let agent = ServiceBuilder::new().layer(fallback).service(openai(&gpt));

    let mut history = vec![Message::user(vec![
        tower_llm_resilience::client::ContentPart::text("Weather in Boston and Paris?"),
        tower_llm_resilience::client::ContentPart::image_base64("image/png", "iVBORw0KGgo="),
    ])];
    let ask = |history: &[Message]| ChatRequest::new(history.to_vec()).tool(weather());
    let first = agent.clone().oneshot(ask(&history)).await.unwrap();
    assert_eq!(first.provider, "openai");
    assert_eq!(first.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(first.tool_calls.len(), 2);
    history.push(first.message());
    for (call, result) in first.tool_calls.iter().zip(["72F sunny", "18C cloudy"]) {
        history.push(Message::tool_result(&call.id, result));
    }

    let second = agent.oneshot(ask(&history)).await.unwrap();
    assert_eq!(second.provider, "anthropic");
    assert_eq!(second.content, "Boston is 72°F and sunny; Paris 18°C.");
    let degraded = second.degraded().expect("the secondary answered");
    assert_eq!(
        degraded.failed()[0].kind(),
        &FailureKind::Overloaded { retry_after: None }
    );

    // Claude received the conversation in its own terms: the calls as tool_use
    // blocks with their inputs, both results in one user turn, the image.
    let sent = claude.requests()[0].json();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0]["content"][1]["source"]["type"], "base64");
    let uses = messages[1]["content"].as_array().unwrap();
    assert_eq!(uses[0]["type"], "tool_use");
    assert_eq!(uses[0]["id"], "call_abc123");
    assert_eq!(uses[0]["input"], json!({"location": "Boston, MA"}));
    assert_eq!(
        uses[1]["input"],
        json!({"location": "Paris, France", "unit": "celsius"})
    );
    let results = messages[2]["content"].as_array().unwrap();
    assert_eq!(messages[2]["role"], "user");
    assert_eq!(
        results
            .iter()
            .map(|r| r["tool_use_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["call_abc123", "call_def456"]
    );
    assert_eq!(results[1]["content"], "18C cloudy");
    assert_eq!(
        sent["tools"][0]["input_schema"]["required"],
        json!(["location"])
    );
}

#[tokio::test]
async fn a_tool_call_that_fails_its_schema_is_asked_of_the_next_tier() {
    let gpt = Upstream::always(gpt_calls(r#"{"city": "Paris"}"#)).await;
    let claude = Upstream::always(Reply::ok_json(&fixture(
        "anthropic/messages_response_tool_use.json",
    )))
    .await;
    // Claude's fixture calls `get_weather`: offer both.
    let tools = [
        weather(),
        Tool::new(
            "get_weather",
            json!({"type": "object", "required": ["location"]}),
        ),
    ];
    let check = ToolCallCheck::new(tools.clone());
    let fallback = FallbackLayer::builder()
        .primary_name("openai")
        .tier(Tier::new("anthropic", anthropic(&claude)))
        .classifier(check.classifier())
        .build()
        .unwrap();
    let agent = fallback.layer(openai(&gpt));
    let mut request = ChatRequest::new(vec![Message::user("Weather in SF?")]);
    request.tools = tools.to_vec();
    let answer = agent.oneshot(request).await.unwrap();
    assert_eq!(answer.provider, "anthropic");
    assert_eq!(answer.tool_calls[0].name, "get_weather");
    let degraded = answer.degraded().unwrap();
    assert_eq!(degraded.failed()[0].kind(), &FailureKind::InvalidResponse);
    assert_eq!(gpt.hits(), 1);

    // A valid call is the primary's answer, as usual.
    let good = Upstream::always(gpt_calls(r#"{"location": "Paris"}"#)).await;
    let fallback = FallbackLayer::builder()
        .primary_name("openai")
        .tier(Tier::new("anthropic", anthropic(&claude)))
        .classifier(check.classifier())
        .build()
        .unwrap();
    let answer = fallback
        .layer(openai(&good))
        .oneshot(ChatRequest::new(vec![Message::user("Weather?")]).tool(weather()))
        .await
        .unwrap();
    assert_eq!(answer.provider, "openai");
    assert!(answer.degraded().is_none());
}

/// The first pending escalation, once there is one (bounded).
async fn first_pending(handle: &Handle) -> tower_llm_resilience::escalation::EscalationRecord {
    for _ in 0..1000 {
        if let Some(record) = handle.list_pending().await.unwrap().into_iter().next() {
            return record;
        }
        // The notifier trait cannot be implemented outside the crate (its
        // future's error type is private), so poll, as the proxy's tests do.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no escalation became pending");
}

#[tokio::test]
async fn a_tool_call_that_fails_its_schema_can_go_to_a_human_instead() {
    let gpt = Upstream::always(gpt_calls(r#"{"location": 7, "secret": "do not log"}"#)).await;
    let review = EscalationLayer::builder(ToolCallCheck::new([weather()]))
        .adapter(ChatAdapter)
        .wait(Duration::from_secs(600), TimeoutDefault::Reject)
        .build()
        .unwrap();
    let handle = review.handle();
    let agent = review.layer(openai(&gpt));
    let call = tokio::spawn(
        agent.oneshot(ChatRequest::new(vec![Message::user("Weather in Paris?")]).tool(weather())),
    );

    let record = first_pending(&handle).await;
    // The reason names the tool and the field, never the arguments.
    assert_eq!(
        record.reason,
        "tool call `get_current_weather`: `location` must be string"
    );
    let shown: Value = record.result.clone().expect("the answer under review");
    assert_eq!(
        shown["tool_calls"][0]["arguments"],
        r#"{"location": 7, "secret": "do not log"}"#
    );
    assert_eq!(record.request["tools"], json!(["get_current_weather"]));

    // The human corrects the call; the agent gets it as the answer.
    let corrected = json!({"content": "", "finish_reason": "tool_calls", "tool_calls": [
        {"id": "call_1", "name": "get_current_weather", "arguments": "{\"location\":\"Paris\"}"}]});
    handle.answer(&record.id, "alice", corrected).await.unwrap();
    let answer: ChatResponse = call.await.unwrap().unwrap();
    assert_eq!(answer.provider, "human");
    assert_eq!(
        answer.tool_calls,
        [ToolCall::new(
            "call_1",
            "get_current_weather",
            r#"{"location":"Paris"}"#
        )]
    );
}
