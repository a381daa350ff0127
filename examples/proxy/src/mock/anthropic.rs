//! The mock's Anthropic mode (`--format anthropic`): the Messages API.
//!
//! `POST .../messages` (with the base URL `http://ADDR/v1`, the path an
//! Anthropic client posts to is `/v1/messages`) answers, like the real API:
//!
//! - a `message` object, or, with `"stream": true`, the event stream
//!   `message_start`, `content_block_start`, `ping`, one `content_block_delta`
//!   (`text_delta`) per word, `content_block_stop`, `message_delta` (with the
//!   `stop_reason` and the output tokens), `message_stop`. `cut_after` counts
//!   these events: 4 cuts the stream right after the first word;
//! - errors as `{"type": "error", "error": {"type", "message"}}`: 429
//!   `rate_limit_error` with `retry-after`, 500 `api_error`, 529
//!   `overloaded_error`, 400 `invalid_request_error` for a request without the
//!   `anthropic-version` header or without `model`, `max_tokens` or `messages`,
//!   404 `not_found_error`.
//!
//! The failure draws are the OpenAI mode's. The last request's model, headers and
//! shape are kept for tests ([`MockUpstream::last_request`](super::MockUpstream::last_request)).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    draw, event_stream, full, reply, tools, Draw, MockBody, MockOptions, SeenRequest, State,
};

/// Anthropic's overloaded status.
const OVERLOADED: u16 = 529;
/// The prompt's tokens, as the mock counts them.
const INPUT_TOKENS: u32 = 5;

/// A `message`, written without building a JSON tree.
#[derive(Serialize)]
struct Answer<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [TextBlock<'a>; 1],
    stop_reason: &'static str,
    stop_sequence: Option<&'static str>,
    usage: AnswerUsage,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct AnswerUsage {
    input_tokens: u32,
    output_tokens: u32,
}

/// What the mock reads of a Messages request.
#[derive(Deserialize)]
struct MessagesBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    messages: Option<Vec<MessageIn>>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    tools: Vec<Value>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: Value,
}

/// An error answer in Anthropic's format.
fn error(status: StatusCode, kind: &str, message: &str) -> http::Response<MockBody> {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    full(status, "application/json", body.to_string())
}

/// The `system` prompt: a string, or text blocks.
fn system_text(system: &Value) -> String {
    match system {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n\n"),
        other => other.to_string(),
    }
}

pub(super) async fn handle(
    state: &State,
    options: Arc<MockOptions>,
    request: http::Request<Incoming>,
) -> http::Response<MockBody> {
    let path = request.uri().path().to_owned();
    if request.method() == Method::GET && path.ends_with("/models") {
        let body = json!({
            "data": [{"type": "model", "id": "mock", "display_name": "Mock",
                      "created_at": "2025-01-01T00:00:00Z"}],
            "has_more": false, "first_id": "mock", "last_id": "mock",
        });
        return full(StatusCode::OK, "application/json", body.to_string());
    }
    if request.method() != Method::POST || !path.ends_with("/messages") {
        return error(StatusCode::NOT_FOUND, "not_found_error", "Not found");
    }
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut seen = SeenRequest {
        path,
        api_key: header("x-api-key"),
        anthropic_version: header("anthropic-version"),
        ..SeenRequest::default()
    };
    // As the OpenAI mock: at most `MAX_REQUEST_BYTES` of a request is read.
    let body = http_body_util::Limited::new(request.into_body(), super::MAX_REQUEST_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes());
    if body.is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unreadable or too large body",
        );
    }
    let parsed = body
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<MessagesBody>(b).ok());
    if let Some(body) = &parsed {
        seen.model.clone_from(&body.model);
        seen.max_tokens = body.max_tokens;
        seen.system = body.system.as_ref().map(system_text);
        seen.roles = body
            .messages
            .iter()
            .flatten()
            .map(|m| m.role.clone())
            .collect();
        seen.stop_sequences.clone_from(&body.stop_sequences);
        seen.stream = body.stream;
        seen.tools = tools::anthropic_offered(&body.tools)
            .map(str::to_owned)
            .collect();
        let blocks = |kind| {
            body.messages
                .iter()
                .flatten()
                .flat_map(move |m| tools::anthropic_blocks(&m.content, kind))
        };
        let ids = |kind, key| {
            blocks(kind)
                .filter_map(|b: &Value| b.get(key).and_then(Value::as_str).map(str::to_owned))
                .collect()
        };
        seen.tool_use_ids = ids("tool_use", "id");
        seen.tool_result_ids = ids("tool_result", "tool_use_id");
        seen.images = blocks("image").count();
    }
    let has_version = seen.anthropic_version.is_some();
    *state.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
    let invalid = |message: &str| error(StatusCode::BAD_REQUEST, "invalid_request_error", message);
    let Some(body) = parsed else {
        return invalid("The request body is not valid JSON (mock)");
    };
    if !has_version {
        return invalid("anthropic-version: header is required");
    }
    let (Some(model), Some(_), Some(_)) = (&body.model, body.max_tokens, &body.messages) else {
        return invalid("model, max_tokens and messages: Field required");
    };
    let draw = draw(state, &options, body.stream);
    match draw {
        Draw::RateLimited => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit (mock)",
            );
            response.headers_mut().insert(
                RETRY_AFTER,
                http::HeaderValue::from(options.retry_after_secs),
            );
            return response;
        }
        Draw::Fail => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "Internal server error (mock)",
            )
        }
        Draw::Overloaded => {
            let status = StatusCode::from_u16(OVERLOADED).expect("529 is a valid status");
            return error(status, "overloaded_error", "Overloaded (mock)");
        }
        Draw::Stall if !body.stream => std::future::pending().await,
        _ => {}
    }
    let latency = Duration::from_millis(options.latency_ms);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let id = format!("msg_mock_{}_{n}", options.name);
    let last = body.messages.iter().flatten().next_back();
    let results = last.filter(|m| m.role == "user").map_or(0, |m| {
        tools::anthropic_blocks(&m.content, "tool_result").count()
    });
    let plan = tools::Plan::new(&options, tools::anthropic_offered(&body.tools), results);
    if let tools::Plan::Call { name, arguments } = &plan {
        if !body.stream {
            let answer = tools::anthropic_answer(&id, model, name, arguments);
            return full(StatusCode::OK, "application/json", answer);
        }
        let events = tools::anthropic_events(&id, model, name, arguments);
        return event_stream(events, &draw, latency, options.cut_after);
    }
    let base = reply(&options);
    let reply = plan.text(&base);
    let output_tokens = u32::try_from(reply.split_inclusive(' ').count()).unwrap_or(u32::MAX);
    if !body.stream {
        let answer = Answer {
            id: &id,
            kind: "message",
            role: "assistant",
            model,
            content: [TextBlock {
                kind: "text",
                text: &reply,
            }],
            stop_reason: "end_turn",
            stop_sequence: None,
            usage: AnswerUsage {
                input_tokens: INPUT_TOKENS,
                output_tokens,
            },
        };
        let body = serde_json::to_string(&answer).unwrap_or_default();
        return full(StatusCode::OK, "application/json", body);
    }
    event_stream(
        stream_events(&id, model, &reply, output_tokens),
        &draw,
        latency,
        options.cut_after,
    )
}

/// The Messages API's event stream for one text answer, one delta per word.
fn stream_events(id: &str, model: &str, reply: &str, output_tokens: u32) -> Vec<Bytes> {
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for word in reply.split_inclusive(' ') {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": word}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}
