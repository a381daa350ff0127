//! Human review of chat calls: an escalation [`Adapter`] for the neutral types,
//! and tool call checks as an escalation policy.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::check::ToolCallCheck;
use super::types::{ChatRequest, ChatResponse};
use crate::escalation::{Adapter, EscalationPolicy, ResumeToken, Verdict};
use crate::BoxError;

/// The most messages of a request a snapshot keeps (the last ones).
const SNAPSHOT_MESSAGES: usize = 20;
/// The most characters of one text (a message, tool call arguments) a snapshot keeps.
const SNAPSHOT_TEXT_CHARS: usize = 4096;
/// The most tool calls of an answer a snapshot keeps.
const SNAPSHOT_TOOL_CALLS: usize = 16;

/// The escalation [`Adapter`] for [`ChatRequest`] and [`ChatResponse`]: an
/// [`EscalationLayer`](crate::escalation::EscalationLayer) around a chat client
/// (or a fallback chain of them), in wait mode.
///
/// - Snapshots, shown to the reviewer: the request's model, tool names and last
///   20 messages (role, text, tool calls, tool call id), the answer's provider,
///   model, text and tool calls; each text cut at 4,096 characters, at most 16
///   tool calls. Requests carry no credentials.
/// - Token: a `ChatRequest` carries none, so use
///   [`Mode::Wait`](crate::escalation::Mode::Wait) (`.wait(..)` on the builder): a
///   detached call could never be resumed.
/// - Answer: a JSON string is the answer's text; an object is read as a
///   `ChatResponse` (`provider`, `model`, `content`, optionally `tool_calls`...),
///   missing `provider` and `model` being `human`.
/// - Fingerprint: a SHA-256 of the request's JSON.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChatAdapter;

fn cut(text: &str) -> String {
    match text.char_indices().nth(SNAPSHOT_TEXT_CHARS) {
        Some((end, _)) => format!("{}[cut]", &text[..end]),
        None => text.to_owned(),
    }
}

fn calls_snapshot(calls: &[super::ToolCall]) -> Value {
    calls
        .iter()
        .take(SNAPSHOT_TOOL_CALLS)
        .map(|c| json!({"id": cut(&c.id), "name": cut(&c.name), "arguments": cut(&c.arguments)}))
        .collect()
}

impl Adapter<ChatRequest, ChatResponse> for ChatAdapter {
    fn snapshot_request(&self, request: &ChatRequest) -> Value {
        let skip = request.messages.len().saturating_sub(SNAPSHOT_MESSAGES);
        let messages: Vec<Value> = request.messages[skip..]
            .iter()
            .map(|m| {
                json!({
                    "role": m.role.as_str(),
                    "text": cut(&m.content.text()),
                    "tool_calls": calls_snapshot(&m.tool_calls),
                    "tool_call_id": m.tool_call_id.as_deref().map(cut),
                })
            })
            .collect();
        json!({
            "model": request.model.as_deref().map(cut),
            "tools": request.tools.iter().take(SNAPSHOT_TOOL_CALLS * 4).map(|t| cut(&t.name)).collect::<Vec<_>>(),
            "messages_left_out": skip,
            "messages": messages,
        })
    }

    fn snapshot_response(&self, response: &ChatResponse) -> Value {
        json!({
            "provider": cut(&response.provider),
            "model": cut(&response.model),
            "content": cut(&response.content),
            "finish_reason": response.finish_reason,
            "tool_calls": calls_snapshot(&response.tool_calls),
        })
    }

    fn take_resume_token(&self, _request: &mut ChatRequest) -> Option<ResumeToken> {
        None
    }

    fn answer(&self, payload: Value) -> Result<ChatResponse, BoxError> {
        match payload {
            Value::String(text) => Ok(ChatResponse::new("human", "human", text)),
            Value::Object(mut fields) => {
                for key in ["provider", "model"] {
                    fields.entry(key).or_insert_with(|| "human".into());
                }
                fields.entry("content").or_insert_with(|| "".into());
                Ok(serde_json::from_value(Value::Object(fields))?)
            }
            _ => Err("a human's answer must be a string or a chat response object".into()),
        }
    }

    fn fingerprint_request(&self, request: &ChatRequest) -> Option<String> {
        let bytes = serde_json::to_vec(request).ok()?;
        let digest = Sha256::digest(&bytes);
        Some(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Review: an answer whose tool call fails the check (arguments not JSON, an
/// unknown tool, arguments not matching the tool's schema) goes to a human; the
/// reason names the tool and the field, never the arguments.
impl<Req> EscalationPolicy<Req, ChatResponse> for ToolCallCheck {
    fn check_response(&self, response: &ChatResponse) -> Verdict {
        match self.check_response(response) {
            Ok(()) => Verdict::Proceed,
            Err(problem) => Verdict::escalate(problem.to_string()),
        }
    }
}
