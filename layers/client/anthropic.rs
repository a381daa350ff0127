//! The Anthropic Messages API client.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower_service::Service;

use super::error::{ClientError, ConfigError};
use super::service::{run, ResponseFuture, StreamChat, Streaming};
use super::sse::SseEvent;
use super::stream::{parse_event, ChatDelta, ChatStream, EventDecoder, StreamState};
use super::transport::{CommonOptions, Transport};
use super::types::{ChatRequest, ChatResponse, FinishReason, ResponseFormat, Role, Usage};
use crate::classify::FailureKind;

/// The `anthropic-version` sent unless configured otherwise.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` for requests that set none (the Messages API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// A client for the Anthropic Messages API (`POST {base_url}/v1/messages`).
///
/// A `Service<ChatRequest, Response = ChatResponse, Error = ClientError>`;
/// [`streaming`](Self::streaming) gives the form that answers with a
/// [`ChatStream`]. It translates the neutral request: system messages become the
/// `system` prompt (joined by blank lines, in order), the others the `messages`;
/// `stop` becomes `stop_sequences`; a request without `max_tokens` gets the
/// builder's default. The Messages API has no JSON mode, so a
/// [`ResponseFormat::JsonObject`] or [`ResponseFormat::JsonSchema`] request adds
/// an instruction (with the schema) to the system prompt. Answers' text content
/// blocks are joined; other blocks (thinking, tool use) are skipped.
///
/// Cheap to clone; always ready.
///
/// ```
/// # fn main() -> Result<(), tower_llm_resilience::client::ConfigError> {
/// use tower_llm_resilience::client::AnthropicClient;
///
/// let claude = AnthropicClient::builder()
///     .api_key("sk-ant-...")
///     .model("claude-sonnet-4-20250514")
///     .default_max_tokens(2048)
///     .build()?;
/// assert_eq!(claude.endpoint(), "https://api.anthropic.com/v1/messages");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AnthropicClient {
    transport: Transport,
    default_max_tokens: u32,
}

impl AnthropicClient {
    /// Start configuring a client. Defaults: base URL `https://api.anthropic.com`
    /// (HTTPS needs the crate's `rustls` feature), provider name `anthropic`,
    /// `anthropic-version: 2023-06-01`, `max_tokens` 1024, a 10-minute call
    /// timeout, a 10-second connect timeout, a 5-minute stream idle timeout.
    pub fn builder() -> AnthropicClientBuilder {
        AnthropicClientBuilder {
            options: CommonOptions::new("anthropic", "https://api.anthropic.com"),
            version: DEFAULT_ANTHROPIC_VERSION.to_owned(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
        }
    }

    /// The URL requests are posted to.
    pub fn endpoint(&self) -> &str {
        self.transport.url().as_str()
    }

    /// The streaming form of this client: a `Service<ChatRequest, Response = ChatStream>`.
    pub fn streaming(&self) -> Streaming<AnthropicClient> {
        Streaming::new(self.clone())
    }

    /// Send `request` and wait for the whole answer. With `request.stream` set,
    /// the answer is streamed on the wire and assembled.
    pub fn chat(&self, request: ChatRequest) -> ResponseFuture<ChatResponse> {
        let (body, model) = match self.encode(&request, request.stream) {
            Ok(encoded) => encoded,
            Err(error) => return ResponseFuture::failed(error),
        };
        let transport = self.transport.clone();
        let call_model = model.clone();
        if request.stream {
            return run(&self.transport, &model, true, async move {
                let response = transport.post(body, true).await?;
                let decoder = Box::new(AnthropicEvents::default());
                ChatStream::from_http(response, transport, call_model, decoder)
                    .into_response()
                    .await
            });
        }
        run(&self.transport, &model, false, async move {
            let response = transport.post(body, false).await?;
            let (status, headers) = (response.status(), response.headers().clone());
            let bytes = response
                .bytes()
                .await
                .map_err(|e| transport.transport_error(e))?;
            decode_response(&transport, status, &headers, &bytes)
        })
    }

    fn encode(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<(Vec<u8>, String), ClientError> {
        let model = self.transport.model(request.model.as_deref())?;
        let mut system: Vec<String> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.clone())
            .collect();
        if let Some(instruction) = request.response_format.as_ref().and_then(json_instruction) {
            system.push(instruction);
        }
        let body = WireRequest {
            model: &model,
            max_tokens: request.max_tokens.unwrap_or(self.default_max_tokens),
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
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| {
            ClientError::new(
                FailureKind::BadRequest,
                self.transport.provider(),
                e.to_string(),
            )
        })?;
        Ok((bytes, model))
    }
}

impl fmt::Debug for AnthropicClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicClient")
            .field("transport", &self.transport)
            .field("default_max_tokens", &self.default_max_tokens)
            .finish()
    }
}

impl Service<ChatRequest> for AnthropicClient {
    type Response = ChatResponse;
    type Error = ClientError;
    type Future = ResponseFuture<ChatResponse>;

    /// Always ready: the HTTP client pools connections on its own.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        self.chat(request)
    }
}

impl StreamChat for AnthropicClient {
    fn stream_chat(&self, request: ChatRequest) -> ResponseFuture<ChatStream> {
        let (body, model) = match self.encode(&request, true) {
            Ok(encoded) => encoded,
            Err(error) => return ResponseFuture::failed(error),
        };
        let transport = self.transport.clone();
        let call_model = model.clone();
        run(&self.transport, &model, true, async move {
            let response = transport.post(body, true).await?;
            let decoder = Box::new(AnthropicEvents::default());
            Ok(ChatStream::from_http(
                response, transport, call_model, decoder,
            ))
        })
    }
}

/// Configures an [`AnthropicClient`]; [`build`](Self::build) validates.
#[derive(Debug)]
#[must_use]
pub struct AnthropicClientBuilder {
    options: CommonOptions,
    version: String,
    default_max_tokens: u32,
}

impl AnthropicClientBuilder {
    /// The API's base URL, without `/v1`; `/v1/messages` is appended to its path
    /// (only `/messages` when the path already ends in `/v1`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.options.base_url = url.into();
        self
    }

    /// The API key, sent as `x-api-key`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.options.set_api_key(key);
        self
    }

    /// The `anthropic-version` header.
    pub fn anthropic_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// A header sent with every request (`anthropic-beta`, a proxy's tag...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.headers.push((name.into(), value.into()));
        self
    }

    /// The model for requests that do not name one.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.options.model = Some(model.into());
        self
    }

    /// `max_tokens` for requests that set none.
    pub fn default_max_tokens(mut self, max_tokens: u32) -> Self {
        self.default_max_tokens = max_tokens;
        self
    }

    /// The name this client reports in answers, errors, spans and metrics.
    pub fn provider_name(mut self, name: impl Into<String>) -> Self {
        self.options.provider = name.into();
        self
    }

    /// The longest a call may take (for a stream: until its headers); `None` for no limit.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.options.timeout = timeout.into();
        self
    }

    /// The longest connecting may take (ignored with [`http_client`](Self::http_client)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// The longest silence inside a stream before it fails with
    /// [`FailureKind::Timeout`]; `None` for no limit. Anthropic sends `ping`
    /// events, so a healthy stream is never silent long.
    pub fn stream_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.options.stream_idle_timeout = timeout.into();
        self
    }

    /// Use this HTTP client (proxies, TLS settings, a shared pool).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.options.http_client = Some(client);
        self
    }

    /// Validate and build the client.
    pub fn build(mut self) -> Result<AnthropicClient, ConfigError> {
        if self.default_max_tokens == 0 {
            return Err(ConfigError::new("the default max_tokens is zero"));
        }
        // First, so that a header of the same name given by the user wins.
        self.options
            .headers
            .insert(0, ("anthropic-version".to_owned(), self.version));
        let endpoint = |base: &str| {
            if base.ends_with("/v1") {
                format!("{base}/messages")
            } else {
                format!("{base}/v1/messages")
            }
        };
        let header = http::HeaderName::from_static("x-api-key");
        Ok(AnthropicClient {
            transport: self.options.build(&endpoint, header, "")?,
            default_max_tokens: self.default_max_tokens,
        })
    }
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

fn decode_response(
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
struct AnthropicEvents {
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
