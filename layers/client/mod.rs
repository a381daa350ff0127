//! LLM client services on reqwest: OpenAI-compatible chat completions and the
//! Anthropic Messages API, behind one provider-neutral request and answer.
//!
//! Enabled by the `reqwest` feature (add `rustls` for HTTPS).
//!
//! These are the services the layers of this crate most often wrap: a
//! [`ChatRequest`] goes in, a [`ChatResponse`] comes out, whichever provider
//! answers, so one request can travel down a fallback chain from an OpenAI-compatible
//! server to Anthropic to a template.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::client::{ChatRequest, Message, OpenAiClient};
//!
//! # async fn run() -> Result<(), tower_llm_resilience::BoxError> {
//! let openai = OpenAiClient::builder()
//!     .api_key(std::env::var("OPENAI_API_KEY")?)
//!     .model("gpt-4o-mini")
//!     .build()?;
//!
//! // Any tower layer stacks on top; the crate's layers classify `ClientError`s
//! // (rate limits with their `Retry-After`, overload, context length, auth...).
//! let mut service = ServiceBuilder::new()
//!     .concurrency_limit(8)
//!     .service(openai.clone());
//!
//! let request = ChatRequest::new(vec![
//!     Message::system("You are terse."),
//!     Message::user("Say hello."),
//! ])
//! .max_tokens(64);
//! let answer = service.ready().await?.call(request.clone()).await?;
//! println!("{} ({}): {}", answer.model, answer.provider, answer.content);
//!
//! // Streaming: the same request, answered delta by delta.
//! let mut stream = openai.streaming().oneshot(request).await?;
//! while let Some(delta) = stream.next_delta().await {
//!     println!("{:?}", delta?);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Non-streaming and streaming services
//!
//! [`OpenAiClient`] and [`AnthropicClient`] are each
//! `Service<ChatRequest, Response = ChatResponse, Error = ClientError>`: the future
//! resolves with the whole answer, so every failure, including one in the middle
//! of a streamed body, is the call's `Err` and every layer sees it. If
//! [`ChatRequest::stream`] is set, the answer is streamed on the wire and assembled
//! (some servers stream faster, or only stream).
//!
//! Their [`streaming`](OpenAiClient::streaming) form, [`Streaming<C>`], is
//! `Service<ChatRequest, Response = ChatStream, Error = ClientError>`. Its future
//! resolves when the provider accepted the request (a success status); errors up
//! to then are the call's `Err`. The [`ChatStream`] then yields [`ChatDelta`]s.
//! A stream that ends without the provider's terminal event (`data: [DONE]` or a
//! chunk with a `finish_reason`, `message_stop`), breaks, is malformed, carries an
//! error event, or stays silent longer than the stream idle timeout yields one
//! `Err` and ends: never a silent short answer (see [`ChatStream`] for the kind of
//! each). Layers around a `Streaming` service therefore judge the opening of
//! the stream only; a failure mid-stream reaches the reader, who decides.
//!
//! Two service types rather than one with an enum answer keep each `Response` type
//! concrete, so a fallback tier (a template, a cached answer) has one simple type to
//! produce, and [`ChatStream::from_response`] turns such an answer into a stream.
//!
//! # Tools, images and structured output
//!
//! The neutral types carry what an agent needs, translated to and from both wire
//! formats: [`Tool`] definitions (a name, a description, a JSON Schema for the
//! arguments), a [`ToolChoice`] (auto, none, required, a named tool),
//! [`ChatRequest::parallel_tool_calls`], assistant messages with [`ToolCall`]s
//! ([`Message::assistant_tool_calls`], or [`ChatResponse::message`] of the answer),
//! tool results ([`Message::tool_result`]), [`Content`] as text or
//! [`ContentPart`]s (text, images by URL or inline base64) and
//! [`ResponseFormat::JsonSchema`]. An answer that calls tools has
//! [`FinishReason::ToolCalls`] from either provider and its calls in
//! [`ChatResponse::tool_calls`].
//!
//! Streams yield [`ChatDelta::ToolCall`] fragments (OpenAI's incremental
//! `tool_calls` by index; Anthropic's `tool_use` blocks and their
//! `input_json_delta`s); a [`ToolCallAssembler`] makes whole calls of them, as
//! [`ChatStream::into_response`] does. Assembly is bounded: at most
//! [`DEFAULT_MAX_TOOL_CALLS`] calls and [`DEFAULT_MAX_TOOL_ARGUMENT_BYTES`] bytes of
//! arguments per answer (a non-streamed answer too), past which the call fails
//! with [`InvalidResponse`](crate::classify::FailureKind::InvalidResponse).
//!
//! A model's tool call may still be wrong: arguments that are not JSON, or that do
//! not match the tool's schema. [`ToolCallCheck`] checks calls against the tools
//! (a small JSON Schema check: `type`, `required`, `properties`, `items`, `enum`,
//! `additionalProperties: false`), and the user chooses what a bad call means:
//! with [`ToolCallCheck::classifier`] a [`FallbackLayer`](crate::fallback::FallbackLayer)
//! asks the next tier; as an [`EscalationPolicy`](crate::escalation::EscalationPolicy)
//! with [`ChatAdapter`] an [`EscalationLayer`](crate::escalation::EscalationLayer)
//! asks a human, who may answer with a corrected call.
//!
//! [`ChatRequest::from_openai_json`], [`to_openai_json`](ChatRequest::to_openai_json),
//! [`from_anthropic_json`](ChatRequest::from_anthropic_json) and
//! [`to_anthropic_json`](ChatRequest::to_anthropic_json) expose the translation for
//! gateways; what a format cannot express is a [`TranslateError`] naming the field.
//!
//! # Errors
//!
//! A [`ClientError`] carries its [`FailureKind`](crate::classify::FailureKind) from
//! the shared taxonomy: status and headers first (`Retry-After`, `retry-after-ms`,
//! provider reset headers), refined by the provider's error body through
//! [`classify_buffered`](crate::classify::classify_buffered). Boxed into a
//! [`BoxError`](crate::BoxError) it is still recognized by
//! [`classify_dyn_error`](crate::classify::classify_dyn_error). A
//! [`ChatResponse`] cut by the provider's content filter classifies as
//! [`ContentFiltered`](crate::classify::FailureKind::ContentFiltered) through
//! [`ClassifyResponse`](crate::classify::ClassifyResponse).
//!
//! # Timeouts
//!
//! - `timeout`: the whole call for the non-streaming service; for a stream, until
//!   the answer's headers. A [`FailureKind::Timeout`](crate::classify::FailureKind::Timeout).
//! - `connect_timeout`: connecting, on the HTTP client the builder makes.
//! - `stream_idle_timeout`: the longest silence between two chunks of a stream.
//!
//! All are measured with `tokio::time`, so tests with paused time control them.
//!
//! # Limits
//!
//! - `max_body_bytes` (default 16 MiB): the largest answer read whole. Past it
//!   (or when `Content-Length` announces more) reading stops at once and the call
//!   fails with [`InvalidResponse`](crate::classify::FailureKind::InvalidResponse).
//!   Error answers are read up to 64 KiB to classify them.
//! - `max_event_bytes` (default 1 MiB): the largest event of a stream, with the
//!   line being read, whether it comes as one long line or as `data:` lines with
//!   no blank line to end the event. Past it the stream fails with
//!   `InvalidResponse`.
//!
//! # Secrets
//!
//! API keys go only into their request header, marked sensitive. `Debug` output of
//! the clients and builders shows `[REDACTED]`, errors never contain them (a
//! provider message that echoes the key is redacted), and spans and metrics name
//! the provider and model, never the key or the prompt.

mod anthropic;
mod check;
mod content;
mod error;
mod fields;
mod openai;
mod review;
mod service;
mod span;
mod sse;
mod stream;
mod tools;
mod translate;
mod transport;
mod types;

pub use self::anthropic::{
    AnthropicClient, AnthropicClientBuilder, DEFAULT_ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS,
};
pub use self::check::{ToolCallCheck, ToolCallClassifier, ToolCallProblem};
pub use self::content::{Content, ContentPart, ImageSource};
pub use self::error::{ClientError, ConfigError};
pub use self::fields::TranslateError;
pub use self::openai::{OpenAiClient, OpenAiClientBuilder};
pub use self::review::ChatAdapter;
pub use self::service::{ResponseFuture, StreamChat, Streaming};
pub use self::stream::{ChatDelta, ChatStream};
pub use self::tools::{
    Tool, ToolCall, ToolCallAssembler, ToolCallDelta, ToolCallError, ToolChoice,
    DEFAULT_MAX_TOOL_ARGUMENT_BYTES, DEFAULT_MAX_TOOL_CALLS,
};
pub use self::types::{
    ChatRequest, ChatResponse, FinishReason, Message, ResponseFormat, Role, Usage,
};

/// The kind of an error of one of this module's types, for the walk over a
/// type-erased error's sources (see [`ClassifyError`](crate::classify::ClassifyError)).
pub(crate) fn error_kind(
    err: &(dyn std::error::Error + 'static),
) -> Option<crate::classify::FailureKind> {
    crate::classify::kind_if::<ClientError>(err)
}
