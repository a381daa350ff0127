//! The OpenTelemetry GenAI span of a chat call, and what is recorded on it
//! (see the crate's "Tracing" table).

use super::types::Usage;
use crate::classify::FailureKind;

/// The OpenTelemetry GenAI client span of one chat call (see the crate's
/// "Tracing" table): named `chat {model}` for OpenTelemetry, and never holding
/// prompt or answer text.
pub(crate) fn chat_span(provider: &str, model: &str, streaming: bool) -> tracing::Span {
    tracing::info_span!(
        "gen_ai.chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "chat",
        gen_ai.system = %provider,
        gen_ai.request.model = %model,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
        llm.streaming = streaming,
    )
}

/// Mark a chat span failed with the failure kind (`rate_limited`, ...).
pub(crate) fn record_error(span: &tracing::Span, kind: &FailureKind) {
    span.record("error.type", kind.name());
    span.record("otel.status_code", "ERROR");
}

/// Record an answer's model and tokens on its chat span.
pub(crate) fn record_answer(span: &tracing::Span, model: &str, usage: Option<Usage>) {
    span.record("gen_ai.response.model", model);
    if let Some(usage) = usage {
        span.record("gen_ai.usage.input_tokens", usage.input_tokens);
        span.record("gen_ai.usage.output_tokens", usage.output_tokens);
    }
}

/// The answer's text as the span's `gen_ai.content.completion` event (opted in).
pub(crate) fn record_completion(span: &tracing::Span, text: &str) {
    tracing::info!(parent: span, gen_ai.completion = %text, "gen_ai.content.completion");
}
