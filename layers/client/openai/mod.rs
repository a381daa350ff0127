//! The OpenAI-compatible chat completions client.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use self::wire::{decode_response, request_body, OpenAiEvents};
use super::error::{ClientError, ConfigError};
use super::service::{run, ResponseFuture, StreamChat, Streaming};
use super::stream::ChatStream;
use super::transport::{CommonOptions, Transport};
use super::types::{ChatRequest, ChatResponse};
use crate::classify::FailureKind;

pub(crate) mod request;
mod wire;

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
        let headers = request.headers.clone();
        if request.stream {
            return run(&self.transport, &request, &model, true, async move {
                let response = transport.post(body, true, headers).await?;
                let decoder = Box::new(OpenAiEvents);
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
        let bytes = request_body(request, &model, stream, self.stream_usage).map_err(|e| {
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
        let headers = request.headers.clone();
        run(&self.transport, &request, &model, true, async move {
            let response = transport.post(body, true, headers).await?;
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

/// The OpenAI event decoder, for the stream's unit tests.
#[cfg(test)]
pub(crate) fn test_decoder() -> impl super::stream::EventDecoder {
    OpenAiEvents
}
