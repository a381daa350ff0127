//! Anthropic upstreams: an OpenAI request read as a provider-neutral
//! [`ChatRequest`], the library's [`AnthropicClient`] to call it, and its answers
//! and streams written back in the OpenAI format.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::CONTENT_TYPE;
use http_body::Frame;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_llm_resilience::classify::{ClassifiedError, FailureKind};
use tower_llm_resilience::client::{
    AnthropicClient, ChatDelta, ChatRequest, ChatResponse, ChatStream, FinishReason, ToolCall,
    ToolCallDelta,
};
use tower_llm_resilience::BoxError;

use super::service::Inner;
use crate::body::{unix_now, ProxyBody};

pub(super) async fn call_anthropic(
    inner: Arc<Inner>,
    client: AnthropicClient,
    body: Bytes,
    stream: bool,
) -> Result<http::Response<ProxyBody>, BoxError> {
    let mut request = anthropic_request(&body).map_err(|e| {
        ClassifiedError::new(
            FailureKind::BadRequest,
            format!(
                "the request cannot be translated for Anthropic upstream {}: {e}",
                inner.name
            ),
        )
    })?;
    // This tier's trace continues at the upstream, as on OpenAI-compatible ones.
    crate::telemetry::inject(&mut request.headers);
    if !stream {
        let answer = client.oneshot(request.stream(false)).await?;
        let body = serde_json::to_vec(&openai_completion(&answer))?;
        return Ok(http::Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(ProxyBody::from(body))?);
    }
    let deltas = client.streaming().oneshot(request.stream(true)).await?;
    // Nothing is sent before the upstream's first delta: a stream that breaks or
    // stays silent before it fails its tier (the fallback's first-event rule) and
    // the next tier answers. By then `message_start` has given the id and model.
    let events =
        futures_util::stream::unfold(Some((deltas, None::<OpenAiChunks>)), |state| async move {
            let (mut deltas, mut chunks) = state?;
            loop {
                let (delta, finish) = match deltas.next_delta().await {
                    Some(Ok(ChatDelta::Text(text))) => (serde_json::json!({"content": text}), None),
                    Some(Ok(ChatDelta::ToolCall(fragment))) => (tool_call_delta(&fragment), None),
                    Some(Ok(ChatDelta::Finish(reason))) => {
                        (serde_json::json!({}), Some(openai_finish(reason)))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Some((Err(BoxError::from(e)), None)),
                    None => {
                        let mut out = Vec::new();
                        if chunks.is_none() {
                            OpenAiChunks::new(&deltas).start(&mut out);
                        }
                        out.extend_from_slice(b"data: [DONE]\n\n");
                        return Some((Ok(Bytes::from(out)), None));
                    }
                };
                let mut out = Vec::new();
                let writer = chunks.get_or_insert_with(|| {
                    let writer = OpenAiChunks::new(&deltas);
                    writer.start(&mut out);
                    writer
                });
                writer.write(&mut out, delta, finish);
                return Some((Ok(Bytes::from(out)), Some((deltas, chunks))));
            }
        })
        .map(|item| item.map(Frame::data));
    let body = inner
        .closing
        .guard(http_body_util::StreamBody::new(events).boxed_unsync())
        .boxed_unsync();
    Ok(http::Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .body(ProxyBody::Stream(body))?)
}

/// Writes an Anthropic stream's deltas as OpenAI `chat.completion.chunk` events.
struct OpenAiChunks {
    id: String,
    model: String,
    created: u64,
}

impl OpenAiChunks {
    /// For `stream`, whose `message_start` (id, model) has arrived if it was sent.
    fn new(stream: &ChatStream) -> Self {
        Self {
            id: stream
                .id()
                .map_or_else(|| "chatcmpl-anthropic".to_owned(), str::to_owned),
            model: stream.model().to_owned(),
            created: unix_now(),
        }
    }

    /// The first chunk: the assistant's role.
    fn start(&self, out: &mut Vec<u8>) {
        let role = serde_json::json!({"role": "assistant", "content": ""});
        self.write(out, role, None);
    }

    fn write(&self, out: &mut Vec<u8>, delta: serde_json::Value, finish: Option<&str>) {
        let event = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        out.extend_from_slice(format!("data: {event}\n\n").as_bytes());
    }
}

/// A tool call fragment as an OpenAI `delta`: `id`, `type` and the function's
/// `name` on a call's first fragment, pieces of `arguments` after.
fn tool_call_delta(fragment: &ToolCallDelta) -> serde_json::Value {
    let mut call = serde_json::json!({
        "index": fragment.index,
        "function": {"arguments": fragment.arguments},
    });
    if let Some(id) = &fragment.id {
        call["id"] = id.as_str().into();
        call["type"] = "function".into();
    }
    if let Some(name) = &fragment.name {
        call["function"]["name"] = name.as_str().into();
    }
    serde_json::json!({"tool_calls": [call]})
}

/// Whole tool calls as OpenAI's `message.tool_calls`.
fn tool_calls(calls: &[ToolCall]) -> serde_json::Value {
    calls
        .iter()
        .map(|call| {
            serde_json::json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })
        })
        .collect()
}

/// An OpenAI `finish_reason` for a provider-neutral one.
fn openai_finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        _ => "stop",
    }
}

/// The provider-neutral request for an OpenAI chat completion body, checked to
/// be expressible in the Messages API: the library's translation
/// ([`ChatRequest::from_openai_json`]), so tools, tool calls and results, image
/// parts, `developer` messages and `response_format` travel; what cannot is an
/// error naming the field.
fn anthropic_request(body: &[u8]) -> Result<ChatRequest, String> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let request = ChatRequest::from_openai_json(&json).map_err(|e| e.to_string())?;
    // The client translates again when it sends; checking here gives the
    // client a 400 that names the field before any upstream is called.
    request.to_anthropic_json(1).map_err(|e| e.to_string())?;
    Ok(request)
}

/// A provider-neutral answer as an OpenAI `chat.completion`.
pub(crate) fn openai_completion(answer: &ChatResponse) -> serde_json::Value {
    let finish = answer.finish_reason.map_or("stop", openai_finish);
    let usage = answer.usage.map(|u| {
        serde_json::json!({
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.total_tokens(),
        })
    });
    let mut message = serde_json::json!({"role": "assistant", "content": answer.content});
    if !answer.tool_calls.is_empty() {
        if answer.content.is_empty() {
            message["content"] = serde_json::Value::Null;
        }
        message["tool_calls"] = tool_calls(&answer.tool_calls);
    }
    serde_json::json!({
        "id": answer.id.clone().unwrap_or_else(|| "chatcmpl-anthropic".into()),
        "object": "chat.completion",
        "created": unix_now(),
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish,
        }],
        "usage": usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_llm_resilience::client::{ResponseFormat, Role};

    #[test]
    fn openai_requests_read_for_anthropic() {
        let body = serde_json::json!({
            "model": "claude-sonnet",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "system", "content": "Sports only."},
                {"role": "user", "content": "Who won?"},
                {"role": "assistant", "content": "Who won what?"},
                {"role": "user", "content": "The 2020 world series."},
            ],
            "max_tokens": 100,
            "max_completion_tokens": 50,
            "temperature": 0.5,
            "stop": "END",
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "winner", "schema": {"type": "object"}, "strict": true}},
            "stream": true, "n": 1, "user": "u-1", "stream_options": {"include_usage": true},
        });
        let request = anthropic_request(body.to_string().as_bytes()).unwrap();
        let roles: Vec<_> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::System,
                Role::User,
                Role::Assistant,
                Role::User
            ]
        );
        assert_eq!(request.model.as_deref(), Some("claude-sonnet"));
        assert_eq!(request.max_tokens, Some(50));
        assert_eq!(request.temperature, Some(0.5));
        assert_eq!(request.stop, ["END"]);
        assert_eq!(
            request.response_format,
            Some(ResponseFormat::JsonSchema {
                name: "winner".into(),
                schema: serde_json::json!({"type": "object"}),
                strict: true,
            })
        );
        // `stream` is the caller's to set.
        assert!(!request.stream);

        let plain = serde_json::json!({"model": "m", "stop": ["a", "b"], "max_tokens": 9,
            "response_format": {"type": "json_object"}, "temperature": null,
            "messages": [{"role": "user", "content": "hi"}]});
        let request = anthropic_request(plain.to_string().as_bytes()).unwrap();
        assert_eq!(request.stop, ["a", "b"]);
        assert_eq!(request.max_tokens, Some(9));
        assert_eq!(request.temperature, None);
        assert_eq!(request.response_format, Some(ResponseFormat::JsonObject));

        // Tools, tool calls, tool results and image parts are translated.
        let agent = serde_json::json!({"model": "m", "tools": [{"type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1",
                    "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}]});
        let request = anthropic_request(agent.to_string().as_bytes()).unwrap();
        assert_eq!(request.messages[1].tool_calls[0].name, "f");
        assert_eq!(request.tools.len(), 1);

        // What an Anthropic upstream cannot be asked is refused, naming the field.
        for (refused, field) in [
            (
                serde_json::json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "`messages[0].tool_call_id`",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "user",
                    "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                "`messages[0].content[0].type`",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "assistant",
                    "content": null, "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "`messages[0].tool_calls[0].function.arguments`",
            ),
            (serde_json::json!({"model": "m"}), "`messages`"),
        ] {
            let error = anthropic_request(refused.to_string().as_bytes()).unwrap_err();
            assert!(error.contains(field), "{error}");
        }
    }

    #[test]
    fn anthropic_answers_read_as_openai() {
        let answer = ChatResponse::new("anthropic", "claude-sonnet", "Bonjour");
        let json = openai_completion(&answer);
        assert_eq!(json["choices"][0]["message"]["content"], "Bonjour");
        assert_eq!(json["choices"][0]["finish_reason"], "stop");
        assert_eq!(json["model"], "claude-sonnet");

        let mut calling = ChatResponse::new("anthropic", "claude-sonnet", "");
        calling.finish_reason = Some(FinishReason::ToolCalls);
        calling.tool_calls = vec![ToolCall::new("toolu_1", "f", "{\"a\":1}")];
        let json = openai_completion(&calling);
        let message = &json["choices"][0]["message"];
        assert_eq!(message["content"], serde_json::Value::Null);
        assert_eq!(message["tool_calls"][0]["id"], "toolu_1");
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(json["choices"][0]["finish_reason"], "tool_calls");
    }
}
