//! Anthropic upstreams: an OpenAI request read as a provider-neutral
//! [`ChatRequest`], the library's [`AnthropicClient`] to call it, and its answers
//! and streams written back in the OpenAI format.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::CONTENT_TYPE;
use http_body::Frame;
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::ServiceExt;
use tower_llm_resilience::classify::{ClassifiedError, FailureKind};
use tower_llm_resilience::client::{
    AnthropicClient, ChatDelta, ChatRequest, ChatResponse, ChatStream, FinishReason, Message,
    ResponseFormat, Role,
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
    let request = anthropic_request(&body).map_err(|e| {
        ClassifiedError::new(
            FailureKind::BadRequest,
            format!(
                "the request cannot be translated for Anthropic upstream {}: {e}",
                inner.name
            ),
        )
    })?;
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

/// An OpenAI `finish_reason` for a provider-neutral one.
fn openai_finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        _ => "stop",
    }
}

/// An OpenAI chat completion request, read in OpenAI's shape as far as an
/// Anthropic upstream can be asked it: string message contents; `stop` a string
/// or a list; `developer` messages are system messages; `max_completion_tokens`
/// wins over `max_tokens`; `response_format` as OpenAI nests it. Other members
/// (`n`, `user`, `stream_options`...) are ignored.
#[derive(Deserialize)]
struct OpenAiRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<OpenAiMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    stop: Option<OpenAiStop>,
    #[serde(default)]
    response_format: Option<OpenAiFormat>,
}

#[derive(Deserialize)]
struct OpenAiMessage {
    role: OpenAiRole,
    content: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum OpenAiRole {
    System,
    Developer,
    User,
    Assistant,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiStop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OpenAiFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: OpenAiSchema },
}

#[derive(Deserialize)]
struct OpenAiSchema {
    name: String,
    #[serde(default)]
    schema: Option<serde_json::Value>,
    #[serde(default)]
    strict: Option<bool>,
}

/// The provider-neutral request for an OpenAI chat completion body.
fn anthropic_request(body: &[u8]) -> serde_json::Result<ChatRequest> {
    let openai: OpenAiRequest = serde_json::from_slice(body)?;
    let messages = openai
        .messages
        .into_iter()
        .map(|m| {
            let role = match m.role {
                OpenAiRole::System | OpenAiRole::Developer => Role::System,
                OpenAiRole::User => Role::User,
                OpenAiRole::Assistant => Role::Assistant,
            };
            Message::new(role, m.content)
        })
        .collect();
    let mut request = ChatRequest::new(messages);
    if let Some(model) = openai.model {
        request = request.model(model);
    }
    if let Some(max) = openai.max_completion_tokens.or(openai.max_tokens) {
        request = request.max_tokens(max);
    }
    if let Some(temperature) = openai.temperature {
        request = request.temperature(temperature);
    }
    let stop = match openai.stop {
        None => Vec::new(),
        Some(OpenAiStop::One(sequence)) => vec![sequence],
        Some(OpenAiStop::Many(sequences)) => sequences,
    };
    for sequence in stop {
        request = request.stop(sequence);
    }
    let format = match openai.response_format {
        None | Some(OpenAiFormat::Text) => None,
        Some(OpenAiFormat::JsonObject) => Some(ResponseFormat::JsonObject),
        Some(OpenAiFormat::JsonSchema { json_schema }) => Some(ResponseFormat::JsonSchema {
            name: json_schema.name,
            schema: json_schema
                .schema
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            strict: json_schema.strict.unwrap_or(false),
        }),
    };
    if let Some(format) = format {
        request = request.response_format(format);
    }
    Ok(request)
}

/// A provider-neutral answer as an OpenAI `chat.completion`.
pub(crate) fn openai_completion(answer: &ChatResponse) -> serde_json::Value {
    let finish = answer
        .finish_reason
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .map(|r| if r == "other" { "stop".to_owned() } else { r });
    let usage = answer.usage.map(|u| {
        serde_json::json!({
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.total_tokens(),
        })
    });
    serde_json::json!({
        "id": answer.id.clone().unwrap_or_else(|| "chatcmpl-anthropic".into()),
        "object": "chat.completion",
        "created": unix_now(),
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer.content},
            "finish_reason": finish.unwrap_or_else(|| "stop".into()),
        }],
        "usage": usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

        // What an Anthropic upstream cannot be asked is still refused.
        for refused in [
            serde_json::json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            serde_json::json!({"model": "m", "messages": [{"role": "user",
                "content": [{"type": "text", "text": "hi"}]}]}),
            serde_json::json!({"model": "m"}),
        ] {
            assert!(anthropic_request(refused.to_string().as_bytes()).is_err());
        }
    }

    #[test]
    fn anthropic_answers_read_as_openai() {
        let answer = ChatResponse::new("anthropic", "claude-sonnet", "Bonjour");
        let json = openai_completion(&answer);
        assert_eq!(json["choices"][0]["message"]["content"], "Bonjour");
        assert_eq!(json["choices"][0]["finish_reason"], "stop");
        assert_eq!(json["model"], "claude-sonnet");
    }
}
