//! Tool calls, image parts and tool results through both clients, against real
//! HTTP servers speaking each wire format (fixtures from the API references).
#![cfg(feature = "reqwest")]
mod support;

use serde_json::json;
use support::{fixture, json_fixture, Reply, Step, Upstream};
use tower::ServiceExt;
use tower_llm_resilience::classify::FailureKind;
use tower_llm_resilience::client::{
    AnthropicClient, ChatDelta, ChatRequest, ContentPart, FinishReason, Message, OpenAiClient,
    Tool, ToolCall, ToolCallDelta, ToolChoice,
};

const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
const PHOTO: &str = "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg";

/// The conversation of the `*_request_tools.json` fixtures, built with the typed API.
fn weather_conversation() -> ChatRequest {
    let weather = Tool::new(
        "get_current_weather",
        json!({
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["location"]
        }),
    )
    .description("Get the current weather in a given location");
    ChatRequest::new(vec![
        Message::system("You are a helpful assistant."),
        Message::user(vec![
            ContentPart::text(
                "What's the weather like in Boston and Paris today? And what is in this image?",
            ),
            ContentPart::image_url(PHOTO),
            ContentPart::image_base64("image/png", PNG),
        ]),
        Message::assistant_tool_calls(
            "",
            vec![
                ToolCall::new(
                    "call_abc123",
                    "get_current_weather",
                    r#"{"location":"Boston, MA","unit":"fahrenheit"}"#,
                ),
                ToolCall::new(
                    "call_def456",
                    "get_current_weather",
                    r#"{"location":"Paris, France","unit":"celsius"}"#,
                ),
            ],
        ),
        Message::tool_result(
            "call_abc123",
            r#"{"temperature":72,"unit":"fahrenheit","description":"sunny"}"#,
        ),
        Message::tool_result(
            "call_def456",
            r#"{"temperature":18,"unit":"celsius","description":"cloudy"}"#,
        ),
    ])
    .tool(weather)
    .tool_choice(ToolChoice::Auto)
    .parallel_tool_calls(true)
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
        .model("claude-sonnet-4-20250514")
        .build()
        .unwrap()
}

#[test]
fn the_openai_fixture_reads_as_the_typed_conversation() {
    let mut read =
        ChatRequest::from_openai_json(&json_fixture("openai/chat_request_tools.json")).unwrap();
    assert_eq!(read.model.take().as_deref(), Some("gpt-4o"));
    assert_eq!(read, weather_conversation());
}

#[tokio::test]
async fn both_clients_send_the_tool_conversation_as_their_fixture() {
    let openai_upstream = Upstream::always(Reply::ok_json(&fixture(
        "openai/chat_response_tool_calls.json",
    )))
    .await;
    let anthropic_upstream = Upstream::always(Reply::ok_json(&fixture(
        "anthropic/messages_response_tool_use.json",
    )))
    .await;
    openai(&openai_upstream)
        .oneshot(weather_conversation())
        .await
        .unwrap();
    anthropic(&anthropic_upstream)
        .oneshot(weather_conversation())
        .await
        .unwrap();
    assert_eq!(
        openai_upstream.requests()[0].json(),
        json_fixture("openai/chat_request_tools.json")
    );
    assert_eq!(
        anthropic_upstream.requests()[0].json(),
        json_fixture("anthropic/messages_request_tools.json")
    );
}

#[tokio::test]
async fn tool_choices_and_serial_calls_reach_anthropic() {
    let upstream = Upstream::always(Reply::ok_json(&fixture(
        "anthropic/messages_response_tool_use.json",
    )))
    .await;
    let client = anthropic(&upstream);
    let base = || ChatRequest::new(vec![Message::user("hi")]).tool(Tool::new("f", json!({})));
    for request in [
        base().tool_choice(ToolChoice::Required),
        base()
            .tool_choice(ToolChoice::Tool("f".into()))
            .parallel_tool_calls(false),
        base().tool_choice(ToolChoice::None),
        base().parallel_tool_calls(false),
        base(),
    ] {
        client.clone().oneshot(request).await.unwrap();
    }
    let choices: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| r.json()["tool_choice"].clone())
        .collect();
    assert_eq!(
        choices,
        [
            json!({"type": "any"}),
            json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}),
            json!({"type": "none"}),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
            serde_json::Value::Null,
        ]
    );
}

#[tokio::test]
async fn answers_with_tool_calls_are_read_from_both_providers() {
    let upstream = Upstream::always(Reply::ok_json(&fixture(
        "openai/chat_response_tool_calls.json",
    )))
    .await;
    let answer = openai(&upstream)
        .oneshot(weather_conversation())
        .await
        .unwrap();
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(answer.content, "");
    assert_eq!(
        answer.tool_calls,
        [
            ToolCall::new(
                "call_abc123",
                "get_current_weather",
                "{\n\"location\": \"Boston, MA\"\n}"
            ),
            ToolCall::new(
                "call_def456",
                "get_current_weather",
                r#"{"location": "Paris, France", "unit": "celsius"}"#
            ),
        ]
    );

    let upstream = Upstream::always(Reply::ok_json(&fixture(
        "anthropic/messages_response_tool_use.json",
    )))
    .await;
    let answer = anthropic(&upstream)
        .oneshot(weather_conversation())
        .await
        .unwrap();
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        answer.content,
        "I'll check the current weather in San Francisco for you."
    );
    assert_eq!(answer.tool_calls.len(), 1);
    assert_eq!(answer.tool_calls[0].id, "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(
        answer.tool_calls[0].arguments_json().unwrap(),
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    // The answer goes back into the conversation as the assistant's turn.
    let turn = answer.message();
    assert_eq!(turn.tool_calls, answer.tool_calls);
}

#[tokio::test]
async fn openai_streamed_tool_calls_come_as_fragments_and_assemble() {
    let upstream = Upstream::always(Reply::sse(Step::events(&fixture(
        "openai/chat_stream_tool_calls.sse",
    ))))
    .await;
    let client = openai(&upstream);
    let mut stream = client
        .streaming()
        .oneshot(weather_conversation())
        .await
        .unwrap();
    let mut fragments = Vec::new();
    while let Some(delta) = stream.next_delta().await {
        if let ChatDelta::ToolCall(fragment) = delta.unwrap() {
            fragments.push(fragment);
        }
    }
    assert_eq!(fragments.len(), 5);
    assert_eq!(
        fragments[0],
        ToolCallDelta::new(
            0,
            Some("call_abc123".into()),
            Some("get_current_weather".into()),
            String::new()
        )
    );
    assert_eq!(
        fragments[1],
        ToolCallDelta::new(0, None, None, "{\"lo".into())
    );
    assert_eq!(fragments[3].index, 1);

    let answer = client
        .streaming()
        .oneshot(weather_conversation())
        .await
        .unwrap()
        .into_response()
        .await
        .unwrap();
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        answer.tool_calls,
        [
            ToolCall::new(
                "call_abc123",
                "get_current_weather",
                r#"{"location": "Boston, MA"}"#
            ),
            ToolCall::new(
                "call_def456",
                "get_current_weather",
                r#"{"location": "Paris, France"}"#
            ),
        ]
    );
}

#[tokio::test]
async fn anthropic_streamed_tool_use_comes_as_fragments_and_assembles() {
    let upstream = Upstream::always(Reply::sse(Step::events(&fixture(
        "anthropic/messages_stream_tool_use.sse",
    ))))
    .await;
    let client = anthropic(&upstream);
    let mut stream = client
        .streaming()
        .oneshot(weather_conversation())
        .await
        .unwrap();
    let mut text = String::new();
    let mut fragments = Vec::new();
    while let Some(delta) = stream.next_delta().await {
        match delta.unwrap() {
            ChatDelta::ToolCall(fragment) => fragments.push(fragment),
            ChatDelta::Text(more) => text.push_str(&more),
            _ => {}
        }
    }
    assert_eq!(text, "Okay, let's check the weather for San Francisco, CA:");
    assert_eq!(
        fragments[0],
        ToolCallDelta::new(
            0,
            Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6".into()),
            Some("get_weather".into()),
            String::new()
        )
    );
    // The second tool streams no input: it is `{}`.
    assert_eq!(
        fragments.last().unwrap(),
        &ToolCallDelta::new(1, None, None, "{}".into())
    );

    let answer = client
        .oneshot(weather_conversation().stream(true))
        .await
        .unwrap();
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        answer.tool_calls,
        [
            ToolCall::new(
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "get_weather",
                r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#
            ),
            ToolCall::new("toolu_01EfcRbVZXAJ2RyvyH3NuQUL", "get_time", "{}"),
        ]
    );
}

#[tokio::test]
async fn what_anthropic_cannot_express_fails_before_sending_naming_the_field() {
    let upstream = Upstream::always(Reply::ok_json(&fixture(
        "anthropic/messages_response_tool_use.json",
    )))
    .await;
    let client = anthropic(&upstream);
    let bad_arguments = ChatRequest::new(vec![
        Message::user("hi"),
        Message::assistant_tool_calls("", vec![ToolCall::new("c", "f", "[1, 2]")]),
        Message::tool_result("c", "ok"),
    ]);
    let error = client.clone().oneshot(bad_arguments).await.unwrap_err();
    assert_eq!(error.kind(), &FailureKind::BadRequest);
    assert!(
        error
            .message()
            .contains("`messages[1].tool_calls[0].function.arguments`"),
        "{error}"
    );
    let image_in_system = ChatRequest::new(vec![
        Message::system(vec![ContentPart::image_url("https://example.com/a.png")]),
        Message::user("hi"),
    ]);
    let error = client.oneshot(image_in_system).await.unwrap_err();
    assert!(error.message().contains("`messages[0].content`"), "{error}");
    assert_eq!(upstream.hits(), 0);
}

/// A stream of `calls` tool calls, each with `argument` as its arguments.
fn openai_stream_of_calls(calls: usize, argument: &str) -> Reply {
    let mut steps = Vec::new();
    for index in 0..calls {
        let chunk = json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": index, "id": format!("call_{index}"), "type": "function",
             "function": {"name": "f", "arguments": argument}}]}, "finish_reason": null}]});
        steps.push(Step::data(&chunk.to_string()));
    }
    steps.push(Step::data(
        &json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
            .to_string(),
    ));
    steps.push(Step::data("[DONE]"));
    Reply::sse(steps)
}

#[tokio::test]
async fn assembled_tool_calls_are_bounded() {
    let too_many = Upstream::always(openai_stream_of_calls(129, "{}")).await;
    let error = openai(&too_many)
        .oneshot(ChatRequest::new(vec![Message::user("hi")]).stream(true))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), &FailureKind::InvalidResponse);
    assert!(
        error.message().contains("more than 128 tool calls"),
        "{error}"
    );

    // Two calls of 600 KiB each: over the 1 MiB of arguments.
    let big = format!("\"{}\"", "x".repeat(600 * 1024));
    let too_large = Upstream::always(openai_stream_of_calls(2, &big)).await;
    let error = openai(&too_large)
        .oneshot(ChatRequest::new(vec![Message::user("hi")]).stream(true))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), &FailureKind::InvalidResponse);
    assert!(error.message().contains("exceed 1048576 bytes"), "{error}");

    // A whole (non-streamed) answer is held to the same limit.
    let calls: Vec<_> = (0..129)
        .map(|i| {
            json!({"id": format!("call_{i}"), "type": "function",
            "function": {"name": "f", "arguments": "{}"}})
        })
        .collect();
    let answer = json!({"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": null, "tool_calls": calls}}]});
    let whole = Upstream::always(Reply::ok_json(&answer.to_string())).await;
    let error = openai(&whole)
        .oneshot(ChatRequest::new(vec![Message::user("hi")]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), &FailureKind::InvalidResponse);
    assert!(
        error.message().contains("more than 128 tool calls"),
        "{error}"
    );

    // The limit is not a cap on normal answers: 128 calls are fine.
    let at_limit = Upstream::always(openai_stream_of_calls(128, "{}")).await;
    let answer = openai(&at_limit)
        .oneshot(ChatRequest::new(vec![Message::user("hi")]).stream(true))
        .await
        .unwrap();
    assert_eq!(answer.tool_calls.len(), 128);
}

#[tokio::test]
async fn an_anthropic_stream_opening_endless_tool_calls_is_cut_off() {
    let event = |name: &str, data: serde_json::Value| {
        Step::Chunk(format!("event: {name}\ndata: {data}\n\n"))
    };
    let mut steps = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {}}}),
    )];
    for index in 0..1100 {
        steps.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block":
                {"type": "tool_use", "id": format!("t{index}"), "name": "f", "input": {}}}),
        ));
    }
    let upstream = Upstream::always(Reply::sse(steps)).await;
    let mut stream = anthropic(&upstream)
        .streaming()
        .oneshot(ChatRequest::new(vec![Message::user("hi")]))
        .await
        .unwrap();
    let mut fragments = 0;
    let error = loop {
        match stream
            .next_delta()
            .await
            .expect("the stream fails, not ends")
        {
            Ok(ChatDelta::ToolCall(_)) => fragments += 1,
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    assert_eq!(fragments, 1024);
    assert_eq!(error.kind(), &FailureKind::InvalidResponse);
    assert!(
        error.message().contains("more than 1024 tool calls"),
        "{error}"
    );
}
