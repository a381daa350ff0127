//! Round trip of tool conversations between the wire formats:
//! OpenAI JSON -> neutral -> Anthropic JSON -> neutral keeps every tool call,
//! argument, tool result and content part.
#![cfg(feature = "reqwest")]

use proptest::prelude::*;
use serde_json::{json, Value};
use tower_llm_resilience::client::{ChatRequest, Content, ContentPart, Role, ToolChoice};

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ,.?!{}\"\\\\é😀]{0,24}"
}

/// A JSON object of tool arguments.
fn arguments() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        text().prop_map(Value::from),
        Just(Value::Null),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map("[a-z_]{1,8}", value, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn image() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z]{1,10}".prop_map(|p| json!({"type": "image_url",
            "image_url": {"url": format!("https://example.com/{p}.png")}})),
        ("(png|jpeg|gif|webp)", "[A-Za-z0-9+/]{4,16}={0,2}").prop_map(|(kind, data)| {
            json!({"type": "image_url",
                "image_url": {"url": format!("data:image/{kind};base64,{data}")}})
        }),
    ]
}

fn user_content() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        image(),
    ];
    prop_oneof![
        text().prop_map(Value::from),
        prop::collection::vec(part, 1..4).prop_map(Value::from),
    ]
}

fn tool_result_content() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::from),
        prop::collection::vec(
            text().prop_map(|t| json!({"type": "text", "text": t})),
            1..3
        )
        .prop_map(Value::from),
    ]
}

/// One exchange: a user turn, then maybe an assistant turn calling tools
/// (with their results) or answering in text.
fn exchange(turn: usize) -> impl Strategy<Value = Vec<Value>> {
    let calls = prop::collection::vec(
        (
            "[a-z_]{1,12}",
            arguments(),
            tool_result_content(),
            any::<bool>(),
        ),
        0..4,
    );
    (user_content(), text(), calls).prop_map(move |(user, said, calls)| {
        let mut messages = vec![json!({"role": "user", "content": user})];
        if calls.is_empty() {
            messages.push(json!({"role": "assistant", "content": said}));
            return messages;
        }
        let wire_calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (name, args, _, compact))| {
                let arguments = if *compact {
                    args.to_string()
                } else {
                    serde_json::to_string_pretty(args).unwrap()
                };
                json!({"id": format!("call_{turn}_{i}"), "type": "function",
                    "function": {"name": name, "arguments": arguments}})
            })
            .collect();
        let content = if said.is_empty() {
            Value::Null
        } else {
            said.into()
        };
        messages.push(json!({"role": "assistant", "content": content, "tool_calls": wire_calls}));
        for (i, (_, _, result, _)) in calls.iter().enumerate() {
            messages.push(
                json!({"role": "tool", "tool_call_id": format!("call_{turn}_{i}"),
                "content": result}),
            );
        }
        messages
    })
}

fn openai_body() -> impl Strategy<Value = Value> {
    let exchanges = (1..4usize).prop_flat_map(|n| {
        (0..n)
            .map(exchange)
            .collect::<Vec<_>>()
            .prop_map(|turns| turns.into_iter().flatten().collect::<Vec<_>>())
    });
    let tools = prop::collection::vec(("[a-z_]{1,12}", text()), 0..3);
    let choice = prop_oneof![
        Just(Value::Null),
        Just(json!("auto")),
        Just(json!("none")),
        Just(json!("required")),
        Just(json!({"type": "function", "function": {"name": "lookup"}})),
    ];
    (
        prop::option::of(text()),
        exchanges,
        tools,
        choice,
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(system, mut messages, tools, choice, parallel)| {
            if let Some(system) = system {
                messages.insert(0, json!({"role": "system", "content": system}));
            }
            let tools: Vec<Value> = tools
                .into_iter()
                .map(|(name, description)| {
                    json!({"type": "function", "function": {"name": name,
                        "description": description,
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}})
                })
                .collect();
            let mut body = json!({"model": "m", "messages": messages, "tools": tools,
                "tool_choice": choice, "max_tokens": 100});
            if let Some(parallel) = parallel {
                body["parallel_tool_calls"] = parallel.into();
            }
            body
        })
}

/// What the round trip may change, normalised away: arguments compare as JSON
/// values (Anthropic carries objects, not text); `parallel_tool_calls: true`
/// is Anthropic's default, so it comes back unset; and it means nothing when
/// no tool may be called (no tools, or `tool_choice: none`), where Anthropic
/// has no place for it.
fn normalised(mut request: ChatRequest) -> ChatRequest {
    for message in &mut request.messages {
        for call in &mut message.tool_calls {
            call.arguments = call.arguments_json().unwrap().to_string();
        }
    }
    if request.parallel_tool_calls == Some(true) {
        request.parallel_tool_calls = None;
    }
    if request.tools.is_empty() || request.tool_choice == Some(ToolChoice::None) {
        request.parallel_tool_calls = None;
    }
    if request.parallel_tool_calls == Some(false) && request.tool_choice.is_none() {
        request.tool_choice = Some(ToolChoice::Auto);
    }
    request.model = None;
    request
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(21), ..ProptestConfig::default() })]

    #[test]
    fn openai_to_anthropic_and_back_keeps_the_conversation(body in openai_body()) {
        let neutral = ChatRequest::from_openai_json(&body).unwrap();
        let anthropic = neutral.to_anthropic_json(1024).unwrap();
        let back = ChatRequest::from_anthropic_json(&anthropic).unwrap();
        // Tool messages travel as tool_result blocks of a user turn.
        for message in anthropic["messages"].as_array().unwrap() {
            prop_assert!(message["role"] == "user" || message["role"] == "assistant");
        }
        prop_assert_eq!(normalised(back.clone()), normalised(neutral.clone()));

        // Every tool call and its arguments survive, in order.
        let calls = |r: &ChatRequest| -> Vec<(String, String, Value)> {
            r.messages.iter().flat_map(|m| m.tool_calls.iter())
                .map(|c| (c.id.clone(), c.name.clone(), c.arguments_json().unwrap()))
                .collect()
        };
        prop_assert_eq!(calls(&back), calls(&neutral));
        // Every image part too.
        let images = |r: &ChatRequest| -> usize {
            r.messages.iter().map(|m| match &m.content {
                Content::Parts(parts) => parts.iter().filter(|p| matches!(p, ContentPart::Image { .. })).count(),
                Content::Text(_) => 0,
            }).sum()
        };
        prop_assert_eq!(images(&back), images(&neutral));
        let tools = back.messages.iter().filter(|m| m.role == Role::Tool).count();
        prop_assert_eq!(tools, neutral.messages.iter().filter(|m| m.role == Role::Tool).count());

        // And back to OpenAI: the same conversation as the client sent.
        let again = ChatRequest::from_openai_json(&back.to_openai_json()).unwrap();
        prop_assert_eq!(normalised(again), normalised(neutral));
    }
}
