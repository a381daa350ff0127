//! The Anthropic Messages wire format: request body, answer, stream events.

use serde::Deserialize;
use serde_json::Value;

use crate::classify::FailureKind;
use crate::client::error::ClientError;
use crate::client::fields::TranslateError;
use crate::client::sse::SseEvent;
use crate::client::stream::{parse_event, ChatDelta, EventDecoder, StreamState};
use crate::client::tools::{check_limits, ToolCall, ToolCallDelta};
use crate::client::transport::Transport;
use crate::client::types::{ChatRequest, ChatResponse, FinishReason, Usage};

/// The JSON body for `request`, asking `model`.
pub(super) fn request_body(
    request: &ChatRequest,
    model: &str,
    max_tokens: u32,
    stream: bool,
) -> Result<Vec<u8>, TranslateError> {
    let body = super::request::to_json(request, Some(model), max_tokens, stream)?;
    serde_json::to_vec(&body).map_err(|e| TranslateError::new("", e.to_string()))
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
    response.tool_calls = wire
        .content
        .into_iter()
        .filter(|b| b.kind == "tool_use")
        .map(|b| {
            let input = b.input.unwrap_or_else(|| Value::Object(Default::default()));
            ToolCall::new(
                b.id.unwrap_or_default(),
                b.name.unwrap_or_default(),
                input.to_string(),
            )
        })
        .collect();
    check_limits(&response.tool_calls, transport.provider())?;
    Ok(response)
}

fn text_of(blocks: &[WireBlock]) -> String {
    blocks
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect()
}

/// The most `tool_use` blocks a stream may open: the decoder keeps one entry
/// per block (an assembler usually stops the stream far earlier).
const MAX_STREAM_TOOL_CALLS: usize = 1024;

/// Anthropic's stream: `message_start`, content block events, `message_delta`,
/// `message_stop`; `ping` and unknown events are skipped, `error` fails the stream.
#[derive(Default)]
pub(super) struct AnthropicEvents {
    input_tokens: u32,
    /// The content block index of each tool call begun, in order (the call's
    /// index is its position), and whether any argument fragment came for it.
    tool_blocks: Vec<(u64, bool)>,
}

impl AnthropicEvents {
    fn tool_of_block(&mut self, block: Option<u64>) -> Option<(u32, &mut bool)> {
        let block = block?;
        let position = self.tool_blocks.iter().position(|(b, _)| *b == block)?;
        let index = u32::try_from(position).ok()?;
        Some((index, &mut self.tool_blocks[position].1))
    }
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
                if block.kind == "tool_use" {
                    if self.tool_blocks.len() >= MAX_STREAM_TOOL_CALLS {
                        return Err(ClientError::new(
                            FailureKind::InvalidResponse,
                            transport.provider(),
                            format!("the stream has more than {MAX_STREAM_TOOL_CALLS} tool calls"),
                        ));
                    }
                    let index = u32::try_from(self.tool_blocks.len()).unwrap_or(u32::MAX);
                    // The input is `{}` here and comes as `input_json_delta`s;
                    // a server that sends it whole here is read too.
                    let input = block
                        .input
                        .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                        .map(|i| i.to_string());
                    self.tool_blocks
                        .push((wire.index.unwrap_or(u64::MAX), input.is_some()));
                    state
                        .deltas
                        .push_back(ChatDelta::ToolCall(ToolCallDelta::new(
                            index,
                            block.id,
                            block.name,
                            input.unwrap_or_default(),
                        )));
                } else if let Some(text) =
                    block.text.filter(|t| block.kind == "text" && !t.is_empty())
                {
                    state.deltas.push_back(ChatDelta::Text(text));
                }
            }
            "content_block_delta" => {
                let delta = wire.delta.unwrap_or_default();
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                            state.deltas.push_back(ChatDelta::Text(text));
                        }
                    }
                    Some("input_json_delta") => {
                        let fragment = delta.partial_json.unwrap_or_default();
                        let Some((index, seen)) = self.tool_of_block(wire.index) else {
                            return Err(ClientError::new(
                                FailureKind::InvalidResponse,
                                transport.provider(),
                                "an input_json_delta for a block that is not a tool_use",
                            ));
                        };
                        *seen |= !fragment.is_empty();
                        state
                            .deltas
                            .push_back(ChatDelta::ToolCall(ToolCallDelta::new(
                                index, None, None, fragment,
                            )));
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                // A tool called without arguments streams no fragment: `{}`.
                if let Some((index, seen)) = self.tool_of_block(wire.index) {
                    if !*seen {
                        *seen = true;
                        state
                            .deltas
                            .push_back(ChatDelta::ToolCall(ToolCallDelta::new(
                                index,
                                None,
                                None,
                                "{}".to_owned(),
                            )));
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
            // ping, and event types added after this client.
            _ => {}
        }
        Ok(())
    }

    fn terminal_event(&self) -> &'static str {
        "message_stop"
    }
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
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
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
    index: Option<u64>,
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
    partial_json: Option<String>,
    stop_reason: Option<String>,
}
