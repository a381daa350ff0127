//! What both clients share: configuration, the builder's common options, and
//! sending one JSON request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use http::HeaderMap;

use super::error::{ClientError, ConfigError};
use crate::classify::ClassifyError;

/// Whole-call timeout unless configured: long answers from large models take minutes.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Connection timeout of the HTTP client the builder makes.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence inside a stream before it counts as stalled.
pub(crate) const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest answer body read whole unless configured: far above any real chat
/// answer, far below memory.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The most of an error answer's body read to classify it.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// An API key. Its `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(Arc<str>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// The options both builders have, validated into a [`Transport`] by `build`.
#[derive(Clone)]
pub(crate) struct CommonOptions {
    pub(crate) provider: String,
    pub(crate) base_url: String,
    pub(crate) api_key: Option<Secret>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) model: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) stream_idle_timeout: Option<Duration>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) http_client: Option<reqwest::Client>,
    pub(crate) trace_content: bool,
}

impl fmt::Debug for CommonOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("trace_content", &self.trace_content)
            .finish_non_exhaustive()
    }
}

impl CommonOptions {
    pub(crate) fn new(provider: &str, base_url: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            base_url: base_url.to_owned(),
            api_key: None,
            headers: Vec::new(),
            model: None,
            timeout: Some(DEFAULT_TIMEOUT),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            stream_idle_timeout: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_event_bytes: super::sse::DEFAULT_MAX_EVENT_BYTES,
            http_client: None,
            trace_content: false,
        }
    }

    pub(crate) fn set_api_key(&mut self, key: impl Into<String>) {
        self.api_key = Some(Secret(key.into().into()));
    }

    /// Validate into a [`Transport`] posting to `endpoint` below the base URL, with
    /// the key sent as `auth_header: auth_prefix KEY`.
    pub(crate) fn build(
        self,
        endpoint: &dyn Fn(&str) -> String,
        auth_header: HeaderName,
        auth_prefix: &str,
    ) -> Result<Transport, ConfigError> {
        if self.provider.trim().is_empty() {
            return Err(ConfigError::new("the provider name is empty"));
        }
        let mut url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| ConfigError::new(format!("base URL {:?}: {e}", self.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::new(format!(
                "base URL {:?}: the scheme must be http or https",
                self.base_url
            )));
        }
        let path = endpoint(url.path().trim_end_matches('/'));
        url.set_path(&path);

        for (name, timeout) in [
            ("timeout", self.timeout),
            ("connect timeout", Some(self.connect_timeout)),
            ("stream idle timeout", self.stream_idle_timeout),
        ] {
            if timeout == Some(Duration::ZERO) {
                return Err(ConfigError::new(format!("the {name} is zero")));
            }
        }
        for (name, limit) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_event_bytes", self.max_event_bytes),
        ] {
            if limit == 0 {
                return Err(ConfigError::new(format!("{name} is zero")));
            }
        }

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(format!("header name {name:?} is not valid")))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                ConfigError::new(format!("the value of header {name} is not valid"))
            })?;
            headers.insert(name, value);
        }
        if let Some(Secret(key)) = &self.api_key {
            // The message must not contain the key, so it does not say why.
            let mut value = HeaderValue::from_str(&format!("{auth_prefix}{key}"))
                .map_err(|_| ConfigError::new("the API key is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(auth_header, value);
        }

        let http = match self.http_client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .build()
                .map_err(|e| ConfigError::new(format!("HTTP client: {e}")))?,
        };
        Ok(Transport(Arc::new(TransportInner {
            provider: self.provider,
            url,
            headers,
            api_key: self.api_key,
            model: self.model,
            timeout: self.timeout,
            stream_idle_timeout: self.stream_idle_timeout,
            max_body_bytes: self.max_body_bytes,
            max_event_bytes: self.max_event_bytes,
            trace_content: self.trace_content,
            http,
        })))
    }
}

/// A validated client configuration, cheap to clone.
#[derive(Clone)]
pub(crate) struct Transport(Arc<TransportInner>);

struct TransportInner {
    provider: String,
    url: reqwest::Url,
    headers: HeaderMap,
    api_key: Option<Secret>,
    model: Option<String>,
    timeout: Option<Duration>,
    stream_idle_timeout: Option<Duration>,
    max_body_bytes: usize,
    max_event_bytes: usize,
    trace_content: bool,
    http: reqwest::Client,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.0;
        f.debug_struct("Transport")
            .field("provider", &inner.provider)
            .field("url", &inner.url.as_str())
            .field("api_key", &inner.api_key)
            .field("headers", &inner.headers.keys().collect::<Vec<_>>())
            .field("model", &inner.model)
            .field("timeout", &inner.timeout)
            .field("stream_idle_timeout", &inner.stream_idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn provider(&self) -> &str {
        &self.0.provider
    }

    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.0.url
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.0.timeout
    }

    pub(crate) fn stream_idle_timeout(&self) -> Option<Duration> {
        self.0.stream_idle_timeout
    }

    pub(crate) fn max_event_bytes(&self) -> usize {
        self.0.max_event_bytes
    }

    /// Whether prompts and answers go into the chat span (opted in).
    pub(crate) fn trace_content(&self) -> bool {
        self.0.trace_content
    }

    /// Read a 2xx answer's whole body, at most `max_body_bytes` of it. Over the
    /// limit (announced by `Content-Length` or found while reading) reading stops
    /// at once, the connection is dropped with what was read, and the answer is an
    /// [`InvalidResponse`](crate::classify::FailureKind::InvalidResponse).
    pub(crate) async fn read_answer(
        &self,
        response: reqwest::Response,
    ) -> Result<bytes::Bytes, ClientError> {
        read_limited(response, self.0.max_body_bytes)
            .await
            .map_err(|failure| match failure {
                ReadFailure::TooLarge => ClientError::new(
                    crate::classify::FailureKind::InvalidResponse,
                    self.provider(),
                    format!(
                        "the answer is larger than the limit of {} bytes",
                        self.0.max_body_bytes
                    ),
                ),
                ReadFailure::Transport(e) => self.transport_error(e),
            })
    }

    /// The request's model, or the client's default.
    pub(crate) fn model(&self, requested: Option<&str>) -> Result<String, ClientError> {
        requested
            .filter(|m| !m.is_empty())
            .or(self.0.model.as_deref())
            .map(str::to_owned)
            .ok_or_else(|| {
                ClientError::new(
                    crate::classify::FailureKind::BadRequest,
                    self.provider(),
                    "no model: set one on the request or the client's builder",
                )
            })
    }

    /// Replace every occurrence of the API key in `text`.
    pub(crate) fn redact(&self, text: &str) -> String {
        match &self.0.api_key {
            Some(Secret(key)) if !key.is_empty() => text.replace(&**key, "[REDACTED]"),
            _ => text.to_owned(),
        }
    }

    /// Turn a transport failure into a [`ClientError`].
    pub(crate) fn transport_error(&self, err: reqwest::Error) -> ClientError {
        let kind = err.classify_error();
        let message = self.redact(&err.to_string());
        ClientError::new(kind, self.provider(), message).with_source(err.without_url())
    }

    /// POST `body`; a 2xx answer is returned unread, any other status is read and
    /// turned into a [`ClientError`] through the shared taxonomy.
    /// Post `body`, with the client's headers and then `extra` (this call's
    /// own, see `ChatRequest::headers`).
    pub(crate) async fn post(
        &self,
        body: Vec<u8>,
        event_stream: bool,
        extra: http::HeaderMap,
    ) -> Result<reqwest::Response, ClientError> {
        let accept = if event_stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let response = self
            .0
            .http
            .post(self.0.url.clone())
            .headers(self.0.headers.clone())
            .header(ACCEPT, accept)
            .headers(extra)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        // A broken (or endless) error body still leaves the status and headers to
        // classify by; only its start is read.
        let limit = MAX_ERROR_BODY_BYTES.min(self.0.max_body_bytes);
        let body = read_limited(response, limit).await.unwrap_or_default();
        Err(ClientError::from_answer(
            self.provider(),
            status,
            &headers,
            &body,
            &|s| self.redact(s),
        ))
    }
}

enum ReadFailure {
    TooLarge,
    Transport(reqwest::Error),
}

/// Read a body chunk by chunk, failing as soon as it passes `limit` bytes.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, ReadFailure> {
    let announced = response.content_length().unwrap_or(0);
    if announced > limit as u64 {
        return Err(ReadFailure::TooLarge);
    }
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await.map_err(ReadFailure::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadFailure::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}
