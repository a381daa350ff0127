//! One provider as a tower service: `http::Request<Bytes>` (an OpenAI chat
//! completion request) in, `http::Response<ProxyBody>` (in the OpenAI format) out.
//!
//! OpenAI-compatible upstreams get the request as it is (the model already set by
//! the tier): over a plain hyper client for `http://` base URLs (self-hosted
//! models, the mock; the proxy's hot path), over reqwest with rustls for
//! `https://`. Anthropic upstreams go through the library's [`AnthropicClient`],
//! and their answers and streams are translated back to the OpenAI format.
//! Failure responses (429, 5xx...) are returned as responses, with their status
//! and rate-limit headers, for the layers' classifier to judge.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use tower::{Service, ServiceExt};
use tower_llm_resilience::classify::{classify_dyn_error, ClassifiedError, FailureKind};
use tower_llm_resilience::client::{
    AnthropicClient, ChatDelta, ChatRequest, ChatResponse, ChatStream, FinishReason, Message,
    ResponseFormat, Role,
};
use tower_llm_resilience::fallback::DEFAULT_MAX_EVENT_BYTES;
use tower_llm_resilience::BoxError;

use crate::body::{unix_now, Closing, IdleTimeout, MaxBytes, ProxyBody};
use crate::config::{secs, ConfigError, UpstreamConfig, UpstreamKind};
use crate::pipeline::RequestMeta;

/// A provider, cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    endpoint: http::Uri,
    key: Option<HeaderValue>,
    transport: Transport,
    timeout: Duration,
    idle: Duration,
    /// `limits.max_upstream_body_bytes`.
    max_body: usize,
    /// Ends its streams when the proxy closes.
    closing: Closing,
    anthropic: Option<AnthropicClient>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.inner.name)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Build the service of one `[[upstreams]]` entry, sharing `clients`' pools.
    /// An answer over `max_body` bytes (a buffered one, or a whole stream) fails
    /// the tier as an invalid response.
    /// Its streams end with an error once `closing` is closed.
    pub fn new(
        config: &UpstreamConfig,
        clients: &HttpClients,
        max_body: usize,
        closing: &Closing,
    ) -> Result<Self, ConfigError> {
        let http = clients.reqwest.clone();
        let timeout = secs("timeout_secs", config.timeout_secs)?;
        let idle = secs("stream_idle_timeout_secs", config.stream_idle_timeout_secs)?;
        let key = match &config.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                ConfigError(format!(
                    "upstream {:?}: environment variable {var} is not set",
                    config.name
                ))
            })?),
            None => None,
        };
        let base = config.base_url.trim_end_matches('/');
        let endpoint: http::Uri = format!("{base}/chat/completions")
            .parse()
            .map_err(|e| ConfigError(format!("upstream {:?}: base_url: {e}", config.name)))?;
        let transport = match endpoint.scheme_str() {
            Some("http") => Transport::Plain {
                pool: clients.plain,
                host: host_header(&endpoint),
            },
            _ => Transport::Reqwest(http.clone()),
        };
        let anthropic = match config.kind {
            UpstreamKind::Openai => None,
            UpstreamKind::Anthropic => {
                let mut builder = AnthropicClient::builder()
                    .base_url(base)
                    .provider_name(config.name.clone())
                    .timeout(timeout)
                    .stream_idle_timeout(idle)
                    .max_body_bytes(max_body)
                    .max_event_bytes(max_body.min(DEFAULT_MAX_EVENT_BYTES))
                    .http_client(http.clone());
                if let Some(key) = &key {
                    builder = builder.api_key(key.clone());
                }
                Some(
                    builder
                        .build()
                        .map_err(|e| ConfigError(format!("upstream {:?}: {e}", config.name)))?,
                )
            }
        };
        let key = match (&key, config.kind) {
            (Some(key), UpstreamKind::Openai) => {
                let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                    ConfigError(format!("upstream {:?}: invalid API key", config.name))
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            _ => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                name: config.name.as_str().into(),
                endpoint,
                key,
                transport,
                timeout,
                idle,
                max_body,
                closing: closing.clone(),
                anthropic,
            }),
        })
    }

    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }
}

impl Service<http::Request<Bytes>> for Upstream {
    type Response = http::Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<ProxyBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Bytes>) -> Self::Future {
        let inner = self.inner.clone();
        let stream = request
            .extensions()
            .get::<RequestMeta>()
            .is_some_and(|meta| meta.stream);
        match inner.anthropic.clone() {
            None => Box::pin(call_openai(inner, request.into_body(), stream)),
            Some(client) => Box::pin(call_anthropic(inner, client, request.into_body(), stream)),
        }
    }
}

/// Headers of an upstream answer the client and the classifier may need.
fn keep_header(name: &http::HeaderName) -> bool {
    let name = name.as_str();
    name == "content-type"
        || name == "retry-after"
        || name == "retry-after-ms"
        || name == "x-request-id"
        || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
}

async fn call_openai(
    inner: Arc<Inner>,
    body: Bytes,
    stream: bool,
) -> Result<http::Response<ProxyBody>, BoxError> {
    let mut request = http::Request::post(inner.endpoint.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body)?;
    if let Some(key) = &inner.key {
        request.headers_mut().insert(AUTHORIZATION, key.clone());
    }
    if stream {
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    }
    let timed_out = || -> BoxError {
        ClassifiedError::new(
            FailureKind::Timeout,
            format!(
                "upstream {} did not answer in {:?}",
                inner.name, inner.timeout
            ),
        )
        .into()
    };
    let deadline = tokio::time::Instant::now() + inner.timeout;
    let sent = inner.transport.send(&inner.name, request);
    let response = tokio::time::timeout_at(deadline, sent)
        .await
        .map_err(|_| timed_out())??;
    let (parts, body) = response.into_parts();
    let mut out = http::Response::new(ProxyBody::Full(Bytes::new()));
    *out.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if keep_header(name) {
            out.headers_mut().append(name, value.clone());
        }
    }
    let is_sse = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let max_body = inner.max_body;
    let too_large = || -> BoxError {
        ClassifiedError::new(
            FailureKind::InvalidResponse,
            format!(
                "upstream {} answered more than {max_body} bytes (limits.max_upstream_body_bytes)",
                inner.name
            ),
        )
        .into()
    };
    *out.body_mut() = if stream && is_sse && parts.status.is_success() {
        let bounded = MaxBytes::new(body, max_body, inner.name.clone());
        let guarded = inner.closing.guard(IdleTimeout::new(bounded, inner.idle));
        ProxyBody::Stream(guarded.boxed_unsync())
    } else {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max_body as u64) {
            // Not read at all: dropping the body closes the connection.
            return Err(too_large());
        }
        // Reading stops at the limit, and what was read is dropped with the error.
        let bytes = match tokio::time::timeout_at(deadline, collect_at_most(body, max_body)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => return Err(too_large()),
            Ok(Ok(Some(bytes))) => bytes,
        };
        ProxyBody::Full(bytes)
    };
    Ok(out)
}

/// The whole of `body`, or `None` as soon as it is over `max` bytes.
async fn collect_at_most(mut body: UpstreamBody, max: usize) -> Result<Option<Bytes>, BoxError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            return Ok(None);
        }
        // Most answers come in one piece: kept as it is, without a copy.
        if let Some(joined) = &mut joined {
            joined.extend_from_slice(&data);
        } else if let Some(head) = first.take() {
            let mut both = bytes::BytesMut::with_capacity(head.len() + data.len());
            both.extend_from_slice(&head);
            both.extend_from_slice(&data);
            joined = Some(both);
        } else {
            first = Some(data);
        }
    }
    Ok(Some(
        joined
            .map(bytes::BytesMut::freeze)
            .or(first)
            .unwrap_or_default(),
    ))
}

/// The HTTP clients of the upstreams.
///
/// Plain-HTTP upstreams use one hyper client per thread: each serving thread
/// keeps its own upstream connections, driven by its own runtime, so a request
/// never waits on another thread. HTTPS upstreams share one reqwest client.
#[derive(Clone, Debug)]
pub struct HttpClients {
    plain: PoolSettings,
    reqwest: reqwest::Client,
}

/// How plain-HTTP pools are set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PoolSettings {
    max_idle: usize,
    connect_timeout: Duration,
}

type PlainClient = hyper_util::client::legacy::Client<HttpConnector, http_body_util::Full<Bytes>>;

thread_local! {
    /// This thread's plain-HTTP clients, by settings (in practice one).
    static PLAIN: RefCell<Vec<(PoolSettings, PlainClient)>> = const { RefCell::new(Vec::new()) };
}

impl PoolSettings {
    fn client(self) -> PlainClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.max_idle)
            .pool_timer(TokioTimer::new())
            .build(connector)
    }

    /// Send on this thread's client.
    fn request(
        self,
        request: http::Request<http_body_util::Full<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        PLAIN.with(|clients| {
            let mut clients = clients.borrow_mut();
            let index = match clients.iter().position(|(settings, _)| *settings == self) {
                Some(index) => index,
                None => {
                    clients.push((self, self.client()));
                    clients.len() - 1
                }
            };
            clients[index].1.request(request)
        })
    }
}

impl HttpClients {
    /// Pools of up to `max_idle` idle connections per host; `connect_timeout` for
    /// new connections.
    pub fn new(max_idle: usize, connect_timeout: Duration) -> Result<Self, ConfigError> {
        let reqwest = reqwest::Client::builder()
            .pool_max_idle_per_host(max_idle)
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| ConfigError(format!("HTTP client: {e}")))?;
        Ok(Self {
            plain: PoolSettings {
                max_idle,
                connect_timeout,
            },
            reqwest,
        })
    }
}

/// How an OpenAI-compatible upstream is reached.
enum Transport {
    /// `http://`: hyper, nothing in between (a client per thread).
    Plain {
        pool: PoolSettings,
        /// The `Host` header, made once (hyper would format it per request).
        host: Option<HeaderValue>,
    },
    /// `https://`: reqwest with rustls.
    Reqwest(reqwest::Client),
}

/// An upstream's response body, whichever the transport.
type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

impl Transport {
    /// Send `request`; transport failures come back classified (connect,
    /// timeout...) so the circuit and the fallback judge them like reqwest's.
    async fn send(
        &self,
        upstream: &Arc<str>,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<UpstreamBody>, BoxError> {
        match self {
            Transport::Plain { pool, host } => {
                let mut request = request;
                if let Some(host) = host {
                    request
                        .headers_mut()
                        .insert(http::header::HOST, host.clone());
                }
                let response = pool
                    .request(request.map(http_body_util::Full::new))
                    .await
                    .map_err(|e| hyper_client_error(upstream, e))?;
                let name = upstream.clone();
                Ok(response.map(|body| {
                    body.map_err(move |e| hyper_body_error(&name, e))
                        .boxed_unsync()
                }))
            }
            Transport::Reqwest(client) => {
                let request = reqwest::Request::try_from(request)?;
                let response = client.execute(request).await?;
                Ok(http::Response::from(response)
                    .map(|body| body.map_err(BoxError::from).boxed_unsync()))
            }
        }
    }
}

/// The `Host` header for `uri`, as hyper-util writes it: the host, and the port
/// unless it is the scheme's default.
fn host_header(uri: &http::Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::try_from(value).ok()
}

/// The kind of a hyper error: timeouts, connections that broke or closed, and
/// answers that are not HTTP.
fn hyper_kind(e: &hyper::Error) -> FailureKind {
    if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        FailureKind::InvalidResponse
    } else {
        // Closed, canceled, incomplete message, body write aborted, io errors.
        match std::error::Error::source(e).map(classify_dyn_error) {
            Some(FailureKind::Timeout) => FailureKind::Timeout,
            _ => FailureKind::Connect,
        }
    }
}

fn hyper_client_error(upstream: &str, e: hyper_util::client::legacy::Error) -> BoxError {
    let kind = if e.is_connect() {
        FailureKind::Connect
    } else {
        match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<hyper::Error>()) {
            Some(hyper) => hyper_kind(hyper),
            None => FailureKind::Connect,
        }
    };
    let detail = match std::error::Error::source(&e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    };
    ClassifiedError::new(kind, format!("upstream {upstream}: {detail}")).into()
}

fn hyper_body_error(upstream: &str, e: hyper::Error) -> BoxError {
    // A body that ends before its announced length (or its last chunk) is an
    // answer cut short: invalid, whatever closed the connection.
    let cut_short = e.is_incomplete_message()
        || std::error::Error::source(&e)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
    let kind = if cut_short {
        FailureKind::InvalidResponse
    } else {
        hyper_kind(&e)
    };
    ClassifiedError::new(
        kind,
        format!("upstream {upstream}: reading the answer: {e}"),
    )
    .into()
}

async fn call_anthropic(
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
pub fn openai_completion(answer: &ChatResponse) -> serde_json::Value {
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
    fn host_headers_name_the_port_unless_it_is_the_default() {
        let host = |uri: &str| host_header(&uri.parse().unwrap()).unwrap();
        assert_eq!(
            host("http://127.0.0.1:9001/v1/chat/completions"),
            "127.0.0.1:9001"
        );
        assert_eq!(
            host("http://models.internal/v1/chat/completions"),
            "models.internal"
        );
        assert_eq!(host("http://models.internal:80/v1"), "models.internal");
        assert_eq!(host("http://[::1]:8000/v1"), "[::1]:8000");
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
