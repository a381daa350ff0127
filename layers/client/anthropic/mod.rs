//! The Anthropic Messages API client.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use self::wire::{decode_response, request_body, AnthropicEvents};
use super::error::{ClientError, ConfigError};
use super::service::{run, ResponseFuture, StreamChat, Streaming};
use super::stream::ChatStream;
use super::transport::{CommonOptions, Transport};
use super::types::{ChatRequest, ChatResponse};
use crate::classify::FailureKind;

pub(crate) mod request;
mod wire;

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
/// [`JsonObject`](super::ResponseFormat::JsonObject) or
/// [`JsonSchema`](super::ResponseFormat::JsonSchema) request adds an instruction
/// (with the schema) to the system prompt. Tools become `tools` with an
/// `input_schema`, tool choices Anthropic's (`required` is `any`,
/// `parallel_tool_calls: false` is `disable_parallel_tool_use`), assistant tool
/// calls `tool_use` blocks, tool messages `tool_result` blocks of one user turn,
/// image parts `image` blocks. A request the Messages API cannot express (tool
/// call arguments that are not a JSON object, an image in a system or assistant
/// message) fails before sending with [`FailureKind::BadRequest`] naming the
/// field. Answers' text content blocks are joined, `tool_use` blocks become
/// [`ToolCall`](super::ToolCall)s; other blocks (thinking) are skipped.
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
        let headers = request.headers.clone();
        if request.stream {
            return run(&self.transport, &request, &model, true, async move {
                let response = transport.post(body, true, headers).await?;
                let decoder = Box::new(AnthropicEvents::default());
                ChatStream::from_http(response, transport, call_model, decoder)
                    .into_response()
                    .await
            });
        }
        run(&self.transport, &request, &model, false, async move {
            let response = transport.post(body, false, headers).await?;
            let (status, headers) = (response.status(), response.headers().clone());
            let bytes = transport.read_answer(response).await?;
            decode_response(&transport, status, &headers, &bytes)
        })
    }

    fn encode(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<(Vec<u8>, String), ClientError> {
        let model = self.transport.model(request.model.as_deref())?;
        let max_tokens = request.max_tokens.unwrap_or(self.default_max_tokens);
        let bytes = request_body(request, &model, max_tokens, stream).map_err(|e| {
            ClientError::new(
                FailureKind::BadRequest,
                self.transport.provider(),
                format!("the request cannot be expressed in the Messages API: {e}"),
            )
            .with_source(e)
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
        let headers = request.headers.clone();
        run(&self.transport, &request, &model, true, async move {
            let response = transport.post(body, true, headers).await?;
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

    /// The largest answer body read whole (default 16 MiB). A larger answer fails
    /// the call with [`FailureKind::InvalidResponse`] as soon as the limit is
    /// passed (or announced), without reading the rest.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.options.max_body_bytes = limit;
        self
    }

    /// The largest event of a streamed answer, with the line being read (default
    /// 1 MiB). A larger one fails the stream with
    /// [`FailureKind::InvalidResponse`].
    pub fn max_event_bytes(mut self, limit: usize) -> Self {
        self.options.max_event_bytes = limit;
        self
    }

    /// Put the prompt and the answer's text into the call's `gen_ai.chat`
    /// span, as the events `gen_ai.content.prompt` (field `gen_ai.prompt`: the
    /// request's messages as JSON) and `gen_ai.content.completion` (field
    /// `gen_ai.completion`). Off by default: prompts and answers often hold
    /// personal data, and spans travel to tracing backends.
    pub fn trace_content(mut self, on: bool) -> Self {
        self.options.trace_content = on;
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
