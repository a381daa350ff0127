//! The OpenAI chat completions wire format: request body, answer, stream events.

use serde::Deserialize;
use serde_json::Value;

use crate::classify::FailureKind;
use crate::client::error::ClientError;
use crate::client::sse::SseEvent;
use crate::client::stream::{parse_event, ChatDelta, EventDecoder, StreamState};
use crate::client::tools::{check_limits, ToolCall, ToolCallDelta};
use crate::client::transport::Transport;
use crate::client::types::{ChatRequest, ChatResponse, FinishReason, Usage};

/// The JSON body for `request`, asking `model`.
pub(super) fn request_body(
    request: &ChatRequest,
    model: &str,
    stream: bool,
    stream_usage: bool,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&super::request::to_json(
        request,
        Some(model),
        stream,
        stream_usage,
    ))
}

pub(super) fn decode_response(
    transport: &Transport,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<ChatResponse, ClientError> {
    let invalid = || {
        ClientError::from_answer(transport.provider(), status, headers, body, &|s| {
            transport.redact(s)
        })
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| invalid())?;
    if value.get("error").is_some_and(|e| !e.is_null()) {
        return Err(invalid());
    }
    let wire: WireResponse = serde_json::from_value(value).map_err(|_| invalid())?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(ClientError::new(
            FailureKind::InvalidResponse,
            transport.provider(),
            "the answer has no choices",
        ));
    };
    let refused = choice.message.content.is_none() && choice.message.refusal.is_some();
    let finish_reason = if refused {
        Some(FinishReason::ContentFilter)
    } else {
        choice
            .finish_reason
            .as_deref()
            .map(FinishReason::from_openai)
    };
    let mut response = ChatResponse::new(
        transport.provider(),
        wire.model.unwrap_or_default(),
        choice.message.content.unwrap_or_default(),
    );
    response.id = wire.id;
    response.finish_reason = finish_reason;
    response.usage = wire.usage.map(Usage::from);
    response.tool_calls = choice
        .message
        .tool_calls
        .into_iter()
        .map(|call| ToolCall::new(call.id, call.function.name, call.function.arguments))
        .collect();
    check_limits(&response.tool_calls, transport.provider())?;
    Ok(response)
}

/// OpenAI's stream: `data: {chunk}` events, then `data: [DONE]`; a chunk with a
/// `finish_reason` already makes the answer whole.
pub(super) struct OpenAiEvents;

impl EventDecoder for OpenAiEvents {
    fn on_event(
        &mut self,
        event: SseEvent,
        state: &mut StreamState<'_>,
        transport: &Transport,
    ) -> Result<(), ClientError> {
        if event.data.trim() == "[DONE]" {
            state.done = true;
            return Ok(());
        }
        let value: Value = parse_event(&event.data, transport)?;
        if event.event.as_deref() == Some("error")
            || value.get("error").is_some_and(|e| !e.is_null())
        {
            return Err(ClientError::from_stream_error(
                transport.provider(),
                &event.data,
                &|s| transport.redact(s),
            ));
        }
        let chunk: WireChunk = serde_json::from_value(value).map_err(|e| {
            ClientError::new(
                FailureKind::InvalidResponse,
                transport.provider(),
                format!("a chunk is not a chat.completion.chunk: {e}"),
            )
        })?;
        if let Some(id) = chunk.id {
            *state.id = Some(id);
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            *state.model = model;
        }
        // This client never asks for more than one choice.
        if let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                state.deltas.push_back(ChatDelta::Text(text));
            }
            for call in choice.delta.tool_calls {
                let function = call.function.unwrap_or_default();
                state
                    .deltas
                    .push_back(ChatDelta::ToolCall(ToolCallDelta::new(
                        call.index,
                        call.id,
                        function.name,
                        function.arguments.unwrap_or_default(),
                    )));
            }
            if let Some(reason) = choice.finish_reason {
                let reason = FinishReason::from_openai(&reason);
                state.deltas.push_back(ChatDelta::Finish(reason));
                // Whole: some compatible servers end the body without `[DONE]`.
                state.complete = true;
            }
        }
        if let Some(usage) = chunk.usage {
            state.deltas.push_back(ChatDelta::Usage(usage.into()));
        }
        Ok(())
    }

    fn terminal_event(&self) -> &'static str {
        "data: [DONE]"
    }
}

#[derive(Deserialize)]
struct WireResponse {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireAnswer,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireAnswer {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    /// OpenAI sends a string; some compatible servers an object.
    #[serde(deserialize_with = "json_text")]
    arguments: String,
}

/// `null` as an empty list (compatible servers send `"tool_calls": null`).
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A string as it is; any other JSON value as its text.
fn json_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[derive(Deserialize)]
struct WireChunkToolCall {
    #[serde(default)]
    index: u32,
    id: Option<String>,
    function: Option<WireChunkFunction>,
}

#[derive(Default, Deserialize)]
struct WireChunkFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireChunk {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: WireDelta,
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct WireDelta {
    content: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tool_calls: Vec<WireChunkToolCall>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        }
    }
}
