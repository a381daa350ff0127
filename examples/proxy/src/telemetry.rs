//! Logs, traces and error reports: the process-wide `tracing` subscriber;
//! with `[telemetry] otlp_endpoint` (cargo feature `otel`, on by default)
//! traces exported over OTLP/HTTP; with `sentry_dsn_env` (cargo feature
//! `sentry`, on by default) server errors and panics reported to Sentry.
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
//!
//! Sentry gets one event per server error the proxy answers (5xx: every tier
//! failed, a store outage, an escalation failure), with its status and error
//! code (not its message, which may quote an upstream) and the request's trace
//! id (`trace_id` tag: the exported trace's, else the client's `traceparent`'s),
//! and one per panic. No request data, prompt, answer or key is attached.

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use tracing::Span;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer as _;

use crate::config::{ConfigError, TelemetryConfig};

/// Spans are built only when traces are exported.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Server errors are reported only when Sentry is configured.
static SENTRY: AtomicBool = AtomicBool::new(false);

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
    #[cfg(feature = "sentry")]
    sentry: Option<sentry::ClientInitGuard>,
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
        // The trace spans are for the exporter, not the log lines: the log
        // layer skips them (formatting their fields for it was a third of
        // what exporting cost per request).
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !(meta.is_span() && meta.target() == TARGET)
            }));
        let registry = tracing_subscriber::registry().with(filter).with(logs);
        #[cfg(feature = "sentry")]
        let sentry = match &config.sentry_dsn_env {
            Some(var) => Some(report::init(var, config.sentry_environment.as_deref())?),
            None => None,
        };
        #[cfg(not(feature = "sentry"))]
        if config.sentry_dsn_env.is_some() {
            return Err(ConfigError(
                "telemetry.sentry_dsn_env: this llm-proxy was built without the `sentry` feature"
                    .into(),
            ));
        }
        let Some(endpoint) = &config.otlp_endpoint else {
            registry
                .try_init()
                .map_err(|e| ConfigError(format!("cannot install the log subscriber: {e}")))?;
            #[cfg(feature = "sentry")]
            SENTRY.store(sentry.is_some(), Ordering::Relaxed);
            return Ok(Telemetry {
                #[cfg(feature = "otel")]
                provider: None,
                #[cfg(feature = "sentry")]
                sentry,
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
            #[cfg(feature = "sentry")]
            SENTRY.store(sentry.is_some(), Ordering::Relaxed);
            Ok(Telemetry {
                provider: Some(provider),
                #[cfg(feature = "sentry")]
                sentry,
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

    /// Export the finished spans and send the pending error reports now
    /// (they are otherwise sent in batches, in the background).
    pub fn flush(&self) {
        #[cfg(feature = "sentry")]
        if let Some(sentry) = &self.sentry {
            sentry.flush(Some(std::time::Duration::from_secs(5)));
        }
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
        SENTRY.store(false, Ordering::Relaxed);
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

    /// The trace id of `span`'s exported context (hex), if valid.
    pub(super) fn trace_id(span: &Span) -> Option<String> {
        use opentelemetry::trace::TraceContextExt;
        let context = span.context();
        let id = context.span().span_context().trace_id();
        (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
    }

    pub(super) fn inject(headers: &mut HeaderMap) {
        let context = Span::current().context();
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}

/// A request's own Sentry hub (its reports carry its trace id).
pub(crate) struct RequestHub {
    #[cfg(feature = "sentry")]
    hub: std::sync::Arc<sentry::Hub>,
}

/// The hub for one request when Sentry is configured: tagged with the trace id
/// of `span` (when traces are exported) or of the client's `traceparent`.
#[inline]
pub(crate) fn request_hub(headers: &HeaderMap, span: &Span) -> Option<RequestHub> {
    if !SENTRY.load(Ordering::Relaxed) {
        return None;
    }
    #[cfg(feature = "sentry")]
    {
        #[cfg(feature = "otel")]
        let exported = (!span.is_disabled())
            .then(|| otel::trace_id(span))
            .flatten();
        #[cfg(not(feature = "otel"))]
        let exported: Option<String> = {
            let _ = span;
            None
        };
        let trace_id = exported.or_else(|| client_trace_id(headers));
        Some(RequestHub {
            hub: report::hub(trace_id),
        })
    }
    #[cfg(not(feature = "sentry"))]
    {
        let _ = (headers, span);
        None
    }
}

/// The future, run with `hub` as its Sentry hub.
pub(crate) fn bind_hub<F>(
    hub: Option<RequestHub>,
    future: F,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = F::Output> + Send>>
where
    F: std::future::Future + Send + 'static,
{
    match hub {
        #[cfg(feature = "sentry")]
        Some(hub) => Box::pin(sentry::SentryFutureExt::bind_hub(future, hub.hub)),
        _ => Box::pin(future),
    }
}

/// The trace id of a W3C `traceparent` header, if it is well formed.
#[cfg(feature = "sentry")]
fn client_trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| trace_id.to_ascii_lowercase())
}

/// Report a server error the proxy answers (a no-op without Sentry): its
/// status and error code, never its message.
pub(crate) fn report_server_error(status: http::StatusCode, kind: &str, code: &str) {
    if !SENTRY.load(Ordering::Relaxed) || !status.is_server_error() {
        return;
    }
    #[cfg(feature = "sentry")]
    report::server_error(status, kind, code);
    #[cfg(not(feature = "sentry"))]
    let _ = (kind, code);
}

#[cfg(feature = "sentry")]
mod report {
    use std::sync::Arc;

    use super::*;

    /// Start the Sentry client from the DSN in `var`.
    pub(super) fn init(
        var: &str,
        environment: Option<&str>,
    ) -> Result<sentry::ClientInitGuard, ConfigError> {
        let dsn = std::env::var(var).map_err(|_| {
            ConfigError(format!(
                "telemetry.sentry_dsn_env: environment variable {var} is not set"
            ))
        })?;
        // The DSN holds a key: never echoed.
        let dsn: sentry::types::Dsn = dsn.trim().parse().map_err(|_| {
            ConfigError(format!(
                "telemetry.sentry_dsn_env: {var} does not hold a valid Sentry DSN"
            ))
        })?;
        let mut options = sentry::ClientOptions::default();
        options.dsn = Some(dsn);
        options.release = Some(concat!("llm-proxy@", env!("CARGO_PKG_VERSION")).into());
        options.environment = environment.map(|e| e.to_owned().into());
        options.send_default_pii = false;
        // Reports name a status and a code: no request, no user, no
        // breadcrumbs from logs.
        options.before_send = Some(Arc::new(|mut event| {
            event.request = None;
            event.user = None;
            event.breadcrumbs = Default::default();
            Some(event)
        }));
        Ok(sentry::init(options))
    }

    pub(super) fn hub(trace_id: Option<String>) -> Arc<sentry::Hub> {
        let hub = Arc::new(sentry::Hub::new_from_top(sentry::Hub::current()));
        if let Some(trace_id) = trace_id {
            // Sentry's own trace context too, so its trace links match.
            let parsed = trace_id.parse::<sentry::protocol::TraceId>().ok();
            hub.configure_scope(|scope| {
                if let Some(parsed) = parsed {
                    let context = sentry::protocol::TraceContext {
                        trace_id: parsed,
                        ..Default::default()
                    };
                    scope.set_context("trace", sentry::protocol::Context::from(context));
                }
                scope.set_tag("trace_id", trace_id);
            });
        }
        hub
    }

    pub(super) fn server_error(status: http::StatusCode, kind: &str, code: &str) {
        sentry::with_scope(
            |scope| {
                scope.set_tag("http.status_code", status.as_u16());
                scope.set_tag("error.code", code);
                scope.set_tag("error.type", kind);
                scope.set_fingerprint(Some(&["llm-proxy", code]));
            },
            || {
                sentry::capture_message(
                    &format!("llm-proxy answered {} ({code})", status.as_u16()),
                    sentry::Level::Error,
                )
            },
        );
    }
}
