//! [`Upstream`]: one `[[upstreams]]` entry as a tower service, and the
//! OpenAI-compatible call (the request as it is, the answer checked and
//! bounded).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::BodyExt;
use tower::Service;
use tower_llm_resilience::classify::{ClassifiedError, FailureKind};
use tower_llm_resilience::client::AnthropicClient;
use tower_llm_resilience::fallback::DEFAULT_MAX_EVENT_BYTES;
use tower_llm_resilience::BoxError;
use tracing::Instrument;

use crate::body::{Closing, IdleTimeout, MaxBytes, ProxyBody};
use crate::config::{ConfigError, UpstreamConfig, UpstreamKind};
use crate::pipeline::RequestMeta;

use super::anthropic::call_anthropic;
use super::transport::{host_header, HttpClients, Transport, UpstreamBody};

/// A provider, cheap to clone.
#[derive(Clone)]
pub(crate) struct Upstream {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) name: Arc<str>,
    endpoint: http::Uri,
    key: Option<HeaderValue>,
    transport: Transport,
    timeout: Duration,
    idle: Duration,
    /// `limits.max_upstream_body_bytes`.
    max_body: usize,
    /// Ends its streams when the proxy closes.
    pub(super) closing: Closing,
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
    pub(crate) fn new(
        config: &UpstreamConfig,
        clients: &HttpClients,
        max_body: usize,
        closing: &Closing,
    ) -> Result<Self, ConfigError> {
        let http = clients.reqwest.clone();
        let timeout = config.timeout_secs;
        let idle = config.stream_idle_timeout_secs;
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
        let system = if inner.anthropic.is_some() {
            "anthropic"
        } else {
            "openai"
        };
        let span = crate::telemetry::upstream_span(&inner.name, system, request.body());
        if span.is_disabled() {
            return dispatch(inner, request.into_body(), stream);
        }
        let server = inner.endpoint.authority().map(|a| a.as_str().to_owned());
        let call = dispatch(inner, request.into_body(), stream);
        Box::pin(
            async move {
                let result = call.await;
                let span = tracing::Span::current();
                crate::telemetry::record_upstream(&span, server.as_deref(), &result);
                result
            }
            .instrument(span),
        )
    }
}

/// The call for this upstream's wire format.
fn dispatch(
    inner: Arc<Inner>,
    body: Bytes,
    stream: bool,
) -> BoxFuture<'static, Result<http::Response<ProxyBody>, BoxError>> {
    match inner.anthropic.clone() {
        None => Box::pin(call_openai(inner, body, stream)),
        Some(client) => Box::pin(call_anthropic(inner, client, body, stream)),
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
    crate::telemetry::inject(request.headers_mut());
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
