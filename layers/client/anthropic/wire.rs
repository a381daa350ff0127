//! The Anthropic Messages wire format: request body, answer, stream events.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::error::ClientError;
use crate::client::sse::SseEvent;
use crate::client::stream::{parse_event, ChatDelta, EventDecoder, StreamState};
use crate::client::transport::Transport;
use crate::client::types::{ChatRequest, ChatResponse, FinishReason, ResponseFormat, Role, Usage};

/// The JSON body for `request`, asking `model`: system messages become the
/// `system` prompt, with the JSON instruction when a JSON format was asked for.
pub(super) fn request_body(
    request: &ChatRequest,
    model: &str,
    max_tokens: u32,
    stream: bool,
) -> serde_json::Result<Vec<u8>> {
    let mut system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let instruction = request.response_format.as_ref().and_then(json_instruction);
    system.extend(instruction.as_deref());
    serde_json::to_vec(&WireRequest {
        model,
        max_tokens,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: request
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| WireMessage {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect(),
        temperature: request.temperature,
        stop_sequences: &request.stop,
        stream,
    })
}

fn json_instruction(format: &ResponseFormat) -> Option<String> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(
            "Respond with a single JSON object and nothing else: no prose, no code fences."
                .to_owned(),
        ),
        ResponseFormat::JsonSchema { schema, .. } => Some(format!(
            "Respond with a single JSON object that conforms to this JSON Schema, and \
             nothing else: no prose, no code fences.\n{schema}"
        )),
    }
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
    if value.get("type").and_then(Value::as_str) == Some("error") || value.get("error").is_some() {
        return Err(invalid());
    }
    let wire: WireResponse = serde_json::from_value(value).map_err(|_| invalid())?;
    let mut response = ChatResponse::new(
        transport.provider(),
        wire.model.unwrap_or_default(),
        text_of(&wire.content),
    );
    response.id = wire.id;
    response.finish_reason = wire
        .stop_reason
        .as_deref()
        .map(FinishReason::from_anthropic);
    response.usage = wire.usage.map(|u| Usage {
        input_tokens: u.input_tokens.unwrap_or(0),
        output_tokens: u.output_tokens.unwrap_or(0),
    });
    Ok(response)
}

fn text_of(blocks: &[WireBlock]) -> String {
    blocks
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect()
}

/// Anthropic's stream: `message_start`, content block events, `message_delta`,
/// `message_stop`; `ping` and unknown events are skipped, `error` fails the stream.
#[derive(Default)]
pub(super) struct AnthropicEvents {
    input_tokens: u32,
}

impl EventDecoder for AnthropicEvents {
    fn on_event(
        &mut self,
        event: SseEvent,
        state: &mut StreamState<'_>,
        transport: &Transport,
    ) -> Result<(), ClientError> {
        let wire: WireEvent = parse_event(&event.data, transport)?;
        let kind = wire
            .kind
            .as_deref()
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                let message = wire.message.unwrap_or_default();
                if let Some(id) = message.id {
                    *state.id = Some(id);
                }
                if let Some(model) = message.model.filter(|m| !m.is_empty()) {
                    *state.model = model;
                }
                self.input_tokens = message.usage.and_then(|u| u.input_tokens).unwrap_or(0);
            }
            "content_block_start" => {
                let block = wire.content_block.unwrap_or_default();
                if let Some(text) = block.text.filter(|t| block.kind == "text" && !t.is_empty()) {
                    state.deltas.push_back(ChatDelta::Text(text));
                }
            }
            "content_block_delta" => {
                let delta = wire.delta.unwrap_or_default();
                if delta.kind.as_deref() == Some("text_delta") {
                    if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                        state.deltas.push_back(ChatDelta::Text(text));
                    }
                }
            }
            "message_delta" => {
                if let Some(reason) = wire.delta.and_then(|d| d.stop_reason) {
                    let reason = FinishReason::from_anthropic(&reason);
                    state.deltas.push_back(ChatDelta::Finish(reason));
                }
                if let Some(usage) = wire.usage {
                    if let Some(input) = usage.input_tokens {
                        self.input_tokens = input;
                    }
                    state.deltas.push_back(ChatDelta::Usage(Usage {
                        input_tokens: self.input_tokens,
                        output_tokens: usage.output_tokens.unwrap_or(0),
                    }));
                }
            }
            "message_stop" => state.done = true,
            "error" => {
                return Err(ClientError::from_stream_error(
                    transport.provider(),
                    &event.data,
                    &|s| transport.redact(s),
                ))
            }
            // ping, content_block_stop, and event types added after this client.
            _ => {}
        }
        Ok(())
    }

    fn terminal_event(&self) -> &'static str {
        "message_stop"
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct WireResponse {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    content: Vec<WireBlock>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Default, Deserialize)]
struct WireBlock {
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<String>,
}

#[derive(Default, Deserialize)]
struct WireUsage {
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<WireStartMessage>,
    content_block: Option<WireBlock>,
    delta: Option<WireEventDelta>,
    usage: Option<WireUsage>,
}

#[derive(Default, Deserialize)]
struct WireStartMessage {
    id: Option<String>,
    model: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Default, Deserialize)]
struct WireEventDelta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    stop_reason: Option<String>,
}
