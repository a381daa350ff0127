//! The mock's tool calls, in both formats.
//!
//! With `--tool-call NAME`, a request that offers the tool `NAME` and does not
//! end with tool results is answered with one call of it (arguments
//! `--tool-arguments`, `{}` by default; streamed as the providers do: the
//! call's id and name first, then its arguments in two fragments). A request
//! that ends with tool results is answered with text: the reply, then
//! ` (tool results: N)`, N the number of results, so a test sees that they
//! arrived.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::MockOptions;

/// What the mock does for one request.
pub(super) enum Plan {
    /// Call this tool with these arguments.
    Call { name: String, arguments: String },
    /// Answer with text; `results` tool results ended the request.
    Text { results: usize },
}

impl Plan {
    /// The plan for a request that offers `offered` tools and ends with `results`
    /// tool results.
    pub(super) fn new<'a>(
        options: &MockOptions,
        mut offered: impl Iterator<Item = &'a str>,
        results: usize,
    ) -> Self {
        match &options.tool_call {
            Some(name) if results == 0 && offered.any(|tool| tool == name) => Plan::Call {
                name: name.clone(),
                arguments: options.tool_arguments.clone(),
            },
            _ => Plan::Text { results },
        }
    }

    /// The text answer for `reply` (a call has none: `reply` as it is).
    pub(super) fn text<'a>(&self, reply: &'a str) -> Cow<'a, str> {
        match self {
            Plan::Text { results } if *results > 0 => {
                Cow::Owned(format!("{reply} (tool results: {results})"))
            }
            _ => Cow::Borrowed(reply),
        }
    }
}

/// The two halves of the arguments, streamed as two fragments.
fn halves(arguments: &str) -> (&str, &str) {
    let mut middle = arguments.len() / 2;
    while !arguments.is_char_boundary(middle) {
        middle -= 1;
    }
    arguments.split_at(middle)
}

/// What the mock reads of an OpenAI request to plan tool calls (only when
/// `--tool-call` is set: the plain mode's hot path parses no messages).
#[derive(Deserialize)]
pub(super) struct OpenAiTools {
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(default)]
    messages: Vec<Value>,
}

impl OpenAiTools {
    pub(super) fn plan(&self, options: &MockOptions) -> Plan {
        let offered = self
            .tools
            .iter()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str));
        let results = self
            .messages
            .iter()
            .rev()
            .take_while(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
            .count();
        Plan::new(options, offered, results)
    }
}

/// A `chat.completion` calling `name`.
pub(super) fn openai_answer(id: &str, model: &str, name: &str, arguments: &str) -> String {
    json!({
        "id": id, "object": "chat.completion", "created": crate::body::unix_now(), "model": model,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"id": format!("call_{id}"), "type": "function",
                            "function": {"name": name, "arguments": arguments}}],
        }}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    })
    .to_string()
}

/// The `chat.completion.chunk`s of an answer calling `name`.
pub(super) fn openai_events(id: &str, model: &str, name: &str, arguments: &str) -> Vec<Bytes> {
    let created = crate::body::unix_now();
    let chunk = |delta: Value, finish: Option<&str>| {
        let event = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {event}\n\n"))
    };
    let (first, second) = halves(arguments);
    let fragment = |arguments: &str| json!({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]});
    vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": format!("call_{id}"), "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
            None,
        ),
        chunk(fragment(first), None),
        chunk(fragment(second), None),
        chunk(json!({}), Some("tool_calls")),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ]
}

/// A tool's name in an Anthropic request's `tools`.
pub(super) fn anthropic_offered(tools: &[Value]) -> impl Iterator<Item = &str> {
    tools
        .iter()
        .filter_map(|t| t.get("name").and_then(Value::as_str))
}

/// The `tool_result` blocks of an Anthropic message's content.
pub(super) fn anthropic_blocks<'a>(
    content: &'a Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a Value> + 'a {
    content
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |b| b.get("type").and_then(Value::as_str) == Some(kind))
}

/// An Anthropic `message` calling `name`.
pub(super) fn anthropic_answer(id: &str, model: &str, name: &str, arguments: &str) -> String {
    let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": input}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 5, "output_tokens": 5},
    })
    .to_string()
}

/// The Messages API's event stream of an answer calling `name`.
pub(super) fn anthropic_events(id: &str, model: &str, name: &str, arguments: &str) -> Vec<Bytes> {
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let (first, second) = halves(arguments);
    let fragment = |partial: &str| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": partial}}),
        )
    };
    vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 5, "output_tokens": 1},
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": {}}}),
        ),
        fragment(first),
        fragment(second),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"output_tokens": 5}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]
}
