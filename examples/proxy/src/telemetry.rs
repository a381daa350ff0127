//! Logs and traces: the process-wide `tracing` subscriber, and with
//! `[telemetry] otlp_endpoint` (cargo feature `otel`, on by default) traces
//! exported over OTLP/HTTP.
//!
//! A chat request is one trace: a server span for the request, continuing the
//! client's W3C `traceparent` when it sends one, and a client span for each
//! upstream call, one per tier attempted, named `chat {model}` with the
//! OpenTelemetry GenAI attributes. Each upstream receives a `traceparent` of
//! the same trace. No prompt or answer text and no key is put in a span.
//!
//! | span | attributes |
//! |---|---|
//! | `POST /v1/chat/completions` (server) | `http.request.method`, `http.route`, `llm.model` (the client's model), `llm.tier` (the tier that answered), `llm.degraded`, `http.response.status_code` |
//! | `chat {model}` (client, one per upstream call) | `gen_ai.operation.name` (`chat`), `gen_ai.system` (`openai`, `anthropic`), `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `server.address`, `llm.tier` (the upstream's name), `http.response.status_code`, `error.type` (the failure kind: `rate_limited`, `server_error`, `timeout`, ...) |
//!
//! The fallback's decisions (a tier failed and why, a circuit open, a degraded
//! answer) are `tracing` events, exported as events of the request's span.
//! Without an endpoint, no span is built: the request path pays one relaxed
//! atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use tracing::Span;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ConfigError, TelemetryConfig};

/// Spans are built only when traces are exported.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The target of this module's spans (the exporter takes only these and the
/// events inside them).
const TARGET: &str = "llm_proxy::trace";

#[inline]
fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The installed subscriber's exporter, if any: flushed and shut down on
/// drop (keep it alive as long as the process serves).
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &enabled())
            .finish()
    }
}

impl Telemetry {
    /// Install the process-wide subscriber: logs to stderr (filtered by
    /// `RUST_LOG`, default `info`) and, when `config` names an OTLP endpoint,
    /// trace export. Fails on a bad exporter setting or when a subscriber is
    /// already installed.
    pub fn install(config: &TelemetryConfig) -> Result<Telemetry, ConfigError> {
        // One filter for logs and traces: `RUST_LOG`, default `info`. The
        // exporter gets this module's spans and every event logged inside them
        // (a tier failed, a circuit opened, a degraded answer).
        let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        if config.otlp_endpoint.is_some() {
            // Traces whatever the log level.
            if let Ok(directive) = format!("{TARGET}=info").parse() {
                filter = filter.add_directive(directive);
            }
        }
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let registry = tracing_subscriber::registry().with(filter).with(logs);
        let Some(endpoint) = &config.otlp_endpoint else {
            registry
                .try_init()
                .map_err(|e| ConfigError(format!("cannot install the log subscriber: {e}")))?;
            return Ok(Telemetry {
                #[cfg(feature = "otel")]
                provider: None,
            });
        };
        #[cfg(feature = "otel")]
        {
            let (provider, layer) = otel::layer(config, endpoint)?;
            registry
                .with(layer)
                .try_init()
                .map_err(|e| ConfigError(format!("cannot install the trace subscriber: {e}")))?;
            ENABLED.store(true, Ordering::Relaxed);
            Ok(Telemetry {
                provider: Some(provider),
            })
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (endpoint, registry);
            Err(ConfigError(
                "telemetry.otlp_endpoint: this llm-proxy was built without the `otel` feature"
                    .into(),
            ))
        }
    }

    /// Export the finished spans now (they are otherwise sent in batches).
    pub fn flush(&self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "trace export flush failed");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            let _ = provider.shutdown();
        }
    }
}

/// The server span of one chat request, continuing the client's
/// `traceparent`; disabled when traces are not exported.
#[inline]
pub(crate) fn request_span(headers: &HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    request_span_slow(headers)
}

#[cold]
fn request_span_slow(headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "POST /v1/chat/completions",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/chat/completions",
        llm.model = tracing::field::Empty,
        llm.tier = tracing::field::Empty,
        llm.degraded = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    #[cfg(feature = "otel")]
    otel::continue_trace(&span, headers);
    #[cfg(not(feature = "otel"))]
    let _ = headers;
    span
}

/// Record how a request ended on its span (a no-op on a disabled one).
pub(crate) fn record_response(span: &Span, response: &http::Response<axum::body::Body>) {
    if span.is_disabled() {
        return;
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if let Some(tier) = header("x-llm-proxy-tier") {
        span.record("llm.tier", tier.as_str());
    }
    if let Some(degraded) = header("x-llm-proxy-degraded") {
        span.record("llm.degraded", degraded == "true");
    }
    if let Some(model) = header("x-llm-proxy-model") {
        span.record("llm.model", model.as_str());
    }
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The client span of one upstream call; disabled when traces are not
/// exported. `body` is the request sent (read for its `model` only).
#[inline]
pub(crate) fn upstream_span(upstream: &str, system: &'static str, body: &[u8]) -> Span {
    if !enabled() {
        return Span::none();
    }
    upstream_span_slow(upstream, system, body)
}

#[derive(serde::Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
}

#[cold]
fn upstream_span_slow(upstream: &str, system: &'static str, body: &[u8]) -> Span {
    let model = serde_json::from_slice::<ModelOnly<'_>>(body)
        .ok()
        .and_then(|m| m.model)
        .unwrap_or_default();
    tracing::info_span!(
        target: TARGET,
        "chat",
        otel.name = format!("chat {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.system = system,
        gen_ai.request.model = &*model,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        llm.tier = upstream,
        server.address = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

#[derive(serde::Deserialize)]
struct AnswerSummary<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    usage: Option<UsageSummary>,
}

#[derive(serde::Deserialize)]
struct UsageSummary {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Record an upstream call's outcome on its span: the status, the failure
/// kind, and from a whole OpenAI-format answer its model and token counts.
pub(crate) fn record_upstream(
    span: &Span,
    server: Option<&str>,
    result: &Result<http::Response<crate::body::ProxyBody>, tower_llm_resilience::BoxError>,
) {
    if span.is_disabled() {
        return;
    }
    use tower_llm_resilience::classify::{classify_dyn_error, classify_status, Outcome};
    if let Some(server) = server {
        span.record("server.address", server);
    }
    let failure = match result {
        Ok(response) => {
            span.record(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            );
            if let crate::body::ProxyBody::Full(bytes) = response.body() {
                if let Ok(answer) = serde_json::from_slice::<AnswerSummary<'_>>(bytes) {
                    if let Some(model) = &answer.model {
                        span.record("gen_ai.response.model", &**model);
                    }
                    if let Some(usage) = answer.usage {
                        if let Some(n) = usage.prompt_tokens {
                            span.record(
                                "gen_ai.usage.input_tokens",
                                i64::try_from(n).unwrap_or(i64::MAX),
                            );
                        }
                        if let Some(n) = usage.completion_tokens {
                            span.record(
                                "gen_ai.usage.output_tokens",
                                i64::try_from(n).unwrap_or(i64::MAX),
                            );
                        }
                    }
                }
            }
            match classify_status(response.status(), response.headers()) {
                Outcome::Failure(kind) => Some(kind.name()),
                Outcome::Success => None,
            }
        }
        Err(error) => Some(classify_dyn_error(&**error).name()),
    };
    if let Some(kind) = failure {
        span.record("error.type", kind);
        span.record("otel.status_code", "ERROR");
    }
}

/// Put the current span's `traceparent` (and `tracestate`) on an upstream
/// request; nothing when traces are not exported.
#[inline]
pub(crate) fn inject(headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    #[cfg(feature = "otel")]
    otel::inject(headers);
    #[cfg(not(feature = "otel"))]
    let _ = headers;
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_http::{HeaderExtractor, HeaderInjector};
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use opentelemetry_sdk::Resource;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;

    use super::*;

    /// The tracer provider exporting to `endpoint`, and the layer feeding it
    /// this module's spans and the events inside them.
    pub(super) fn layer<S>(
        config: &TelemetryConfig,
        endpoint: &str,
    ) -> Result<(SdkTracerProvider, impl Layer<S>), ConfigError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let mut headers = std::collections::HashMap::new();
        if let Some(var) = &config.otlp_headers_env {
            let value = std::env::var(var).map_err(|_| {
                ConfigError(format!(
                    "telemetry.otlp_headers_env: environment variable {var} is not set"
                ))
            })?;
            for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((name, value)) = pair.split_once('=') else {
                    return Err(ConfigError(format!(
                        "telemetry.otlp_headers_env: {var} must be name=value pairs separated by commas"
                    )));
                };
                headers.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_headers(headers)
            .build()
            .map_err(|e| ConfigError(format!("telemetry.otlp_endpoint: {e}")))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("llm-proxy");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_context_activation(false);
        Ok((provider, layer))
    }

    /// Make `span` a child of the client's `traceparent`, if any.
    pub(super) fn continue_trace(span: &Span, headers: &HeaderMap) {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }

    pub(super) fn inject(headers: &mut HeaderMap) {
        let context = Span::current().context();
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}
