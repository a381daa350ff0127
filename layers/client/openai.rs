//! The OpenAI-compatible chat completions client.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower_service::Service;

use super::error::{ClientError, ConfigError};
use super::service::{run, ResponseFuture, StreamChat, Streaming};
use super::sse::SseEvent;
use super::stream::{parse_event, ChatDelta, ChatStream, EventDecoder, StreamState};
use super::transport::{CommonOptions, Transport};
use super::types::{ChatRequest, ChatResponse, FinishReason, ResponseFormat, Usage};
use crate::classify::FailureKind;

/// A client for OpenAI-compatible chat completions (`POST {base_url}/chat/completions`):
/// OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server, LiteLLM and others.
///
/// A `Service<ChatRequest, Response = ChatResponse, Error = ClientError>`;
/// [`streaming`](Self::streaming) gives the form that answers with a
/// [`ChatStream`]. Cheap to clone: clones share the configuration and the HTTP
/// connection pool. Always ready.
///
/// ```
/// # fn main() -> Result<(), tower_llm_resilience::client::ConfigError> {
/// use std::time::Duration;
/// use tower_llm_resilience::client::OpenAiClient;
///
/// let openai = OpenAiClient::builder()
///     .api_key("sk-...")
///     .model("gpt-4o-mini")
///     .timeout(Duration::from_secs(60))
///     .build()?;
///
/// // vLLM, Ollama or llama.cpp: the server's base URL, usually ending in /v1.
/// let local = OpenAiClient::builder()
///     .base_url("http://127.0.0.1:11434/v1")
///     .provider_name("ollama")
///     .model("llama3.2")
///     .build()?;
///
/// // Azure OpenAI: the deployment's URL with its api-version; the key goes in `api-key`.
/// let azure = OpenAiClient::builder()
///     .base_url("https://my-resource.openai.azure.com/openai/deployments/gpt-4o?api-version=2024-10-21")
///     .azure_api_key("...")
///     .provider_name("azure")
///     .model("gpt-4o")
///     .build()?;
/// assert!(!format!("{openai:?}{local:?}{azure:?}").contains("sk-..."));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OpenAiClient {
    transport: Transport,
    stream_usage: bool,
}

impl OpenAiClient {
    /// Start configuring a client. Defaults: base URL `https://api.openai.com/v1`
    /// (HTTPS needs the crate's `rustls` feature), provider name `openai`, a
    /// 10-minute call timeout, a 10-second connect timeout, a 5-minute stream idle
    /// timeout, usage reported in streams.
    pub fn builder() -> OpenAiClientBuilder {
        OpenAiClientBuilder {
            options: CommonOptions::new("openai", "https://api.openai.com/v1"),
            azure_key: false,
            stream_usage: true,
        }
    }

    /// The URL requests are posted to.
    pub fn endpoint(&self) -> &str {
        self.transport.url().as_str()
    }

    /// The streaming form of this client: a `Service<ChatRequest, Response = ChatStream>`.
    pub fn streaming(&self) -> Streaming<OpenAiClient> {
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
                let decoder = Box::new(OpenAiEvents);
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
        let body = WireRequest {
            model: &model,
            messages: request
                .messages
                .iter()
                .map(|m| WireMessage {
                    role: m.role.as_str(),
                    content: &m.content,
                })
                .collect(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            stop: &request.stop,
            response_format: request.response_format.as_ref().map(response_format),
            stream,
            stream_options: (stream && self.stream_usage).then_some(StreamOptions {
                include_usage: true,
            }),
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

impl fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("transport", &self.transport)
            .field("stream_usage", &self.stream_usage)
            .finish()
    }
}

impl Service<ChatRequest> for OpenAiClient {
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

impl StreamChat for OpenAiClient {
    fn stream_chat(&self, request: ChatRequest) -> ResponseFuture<ChatStream> {
        let (body, model) = match self.encode(&request, true) {
            Ok(encoded) => encoded,
            Err(error) => return ResponseFuture::failed(error),
        };
        let transport = self.transport.clone();
        let call_model = model.clone();
        run(&self.transport, &model, true, async move {
            let response = transport.post(body, true).await?;
            let decoder = Box::new(OpenAiEvents);
            Ok(ChatStream::from_http(
                response, transport, call_model, decoder,
            ))
        })
    }
}

/// Configures an [`OpenAiClient`]; [`build`](Self::build) validates.
#[derive(Debug)]
#[must_use]
pub struct OpenAiClientBuilder {
    options: CommonOptions,
    azure_key: bool,
    stream_usage: bool,
}

impl OpenAiClientBuilder {
    /// The API's base URL; `/chat/completions` is appended to its path, and its
    /// query (Azure's `api-version`) is kept.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.options.base_url = url.into();
        self
    }

    /// The API key, sent as `Authorization: Bearer KEY`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.options.set_api_key(key);
        self.azure_key = false;
        self
    }

    /// An Azure OpenAI key, sent as `api-key: KEY`.
    pub fn azure_api_key(mut self, key: impl Into<String>) -> Self {
        self.options.set_api_key(key);
        self.azure_key = true;
        self
    }

    /// A header sent with every request (`OpenAI-Organization`, a proxy's tag...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.headers.push((name.into(), value.into()));
        self
    }

    /// The model for requests that do not name one.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.options.model = Some(model.into());
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
    /// [`FailureKind::Timeout`]; `None` for no limit.
    pub fn stream_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.options.stream_idle_timeout = timeout.into();
        self
    }

    /// Ask for token usage at the end of streams (`stream_options.include_usage`);
    /// on by default, turn it off for servers that reject the option.
    pub fn stream_usage(mut self, include: bool) -> Self {
        self.stream_usage = include;
        self
    }

    /// Use this HTTP client (proxies, TLS settings, a shared pool).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.options.http_client = Some(client);
        self
    }

    /// Validate and build the client.
    pub fn build(self) -> Result<OpenAiClient, ConfigError> {
        let (header, prefix) = if self.azure_key {
            (http::HeaderName::from_static("api-key"), "")
        } else {
            (http::header::AUTHORIZATION, "Bearer ")
        };
        let endpoint = |base: &str| format!("{base}/chat/completions");
        Ok(OpenAiClient {
            transport: self.options.build(&endpoint, header, prefix)?,
            stream_usage: self.stream_usage,
        })
    }
}

fn response_format(format: &ResponseFormat) -> Value {
    match format {
        ResponseFormat::Text => json!({ "type": "text" }),
        ResponseFormat::JsonObject => json!({ "type": "json_object" }),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => json!({
            "type": "json_schema",
            "json_schema": { "name": name, "schema": schema, "strict": strict },
        }),
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
    Ok(response)
}

/// OpenAI's stream: `data: {chunk}` events, then `data: [DONE]`.
struct OpenAiEvents;

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
            if let Some(reason) = choice.finish_reason {
                let reason = FinishReason::from_openai(&reason);
                state.deltas.push_back(ChatDelta::Finish(reason));
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

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
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
