//! The client's errors.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::classify::{
    classify_buffered, classify_error_body, ClassifyError, FailureKind, Outcome,
};
use crate::BoxError;

/// The most of a provider's error message an error keeps.
const MAX_MESSAGE_CHARS: usize = 500;

/// Why a call through [`OpenAiClient`](super::OpenAiClient) or
/// [`AnthropicClient`](super::AnthropicClient) failed.
///
/// Every error knows its [`FailureKind`] in the crate's shared taxonomy, so the
/// layers treat it like any other failure: a 429 is
/// [`RateLimited`](FailureKind::RateLimited) with the server's `Retry-After`, a 529
/// or an `overloaded_error` is [`Overloaded`](FailureKind::Overloaded), a prompt
/// that is too long is [`ContextLengthExceeded`](FailureKind::ContextLengthExceeded),
/// a bad key is [`Auth`](FailureKind::Auth), a stream that breaks off is
/// [`Connect`](FailureKind::Connect), and a body that cannot be understood is
/// [`InvalidResponse`](FailureKind::InvalidResponse). Boxed as a
/// [`BoxError`], it is still found by
/// [`classify_dyn_error`](crate::classify::classify_dyn_error).
///
/// It never contains the API key: provider messages that echo it are redacted.
#[derive(Debug)]
pub struct ClientError {
    kind: FailureKind,
    provider: String,
    status: Option<StatusCode>,
    error_type: Option<String>,
    message: String,
    source: Option<BoxError>,
}

impl ClientError {
    pub(crate) fn new(kind: FailureKind, provider: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            provider: provider.to_owned(),
            status: None,
            error_type: None,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// An error answer: the kind from status, headers and the provider's error body.
    pub(crate) fn from_answer(
        provider: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        redact: &dyn Fn(&str) -> String,
    ) -> Self {
        let kind = match classify_buffered(status, headers, body) {
            Outcome::Failure(kind) => kind,
            Outcome::Success => FailureKind::InvalidResponse,
        };
        let (error_type, message) = match ProviderError::parse(body) {
            Some(found) => (found.error_type, redact(&found.message)),
            None if body.is_empty() => (None, String::from("empty body")),
            None => (
                None,
                String::from("the body is not a provider error object"),
            ),
        };
        Self {
            kind,
            provider: provider.to_owned(),
            status: Some(status),
            error_type,
            message: truncate(message),
            source: None,
        }
    }

    /// An error object that arrived inside a stream (Anthropic's `error` event, or
    /// an OpenAI-compatible server's `{"error": ...}` chunk).
    pub(crate) fn from_stream_error(
        provider: &str,
        data: &str,
        redact: &dyn Fn(&str) -> String,
    ) -> Self {
        let kind = match classify_error_body(data.as_bytes()) {
            Some(FailureKind::Other) | None => FailureKind::ServerError,
            Some(kind) => kind,
        };
        let found = ProviderError::parse(data.as_bytes());
        Self {
            kind,
            provider: provider.to_owned(),
            status: None,
            error_type: found.as_ref().and_then(|f| f.error_type.clone()),
            message: truncate(
                found.map_or_else(|| "error event".to_owned(), |f| redact(&f.message)),
            ),
            source: None,
        }
    }

    /// The failure kind in the crate's shared taxonomy.
    pub fn kind(&self) -> &FailureKind {
        &self.kind
    }

    /// The wait the provider asked for (`Retry-After` and friends), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.kind.retry_after()
    }

    /// The provider's name as the client knows it (`openai`, `anthropic`, ...).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The HTTP status, when the provider answered with an error status.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The provider's error type or code (`rate_limit_exceeded`,
    /// `overloaded_error`, ...), when its error body named one.
    pub fn error_type(&self) -> Option<&str> {
        self.error_type.as_deref()
    }

    /// What went wrong: the provider's own message when it sent one (shortened,
    /// API key redacted), otherwise this client's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.provider, self.kind)?;
        if let Some(status) = self.status {
            write!(f, ": HTTP {}", status.as_u16())?;
        }
        if let Some(error_type) = &self.error_type {
            write!(f, " {error_type}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Error for ClientError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

impl ClassifyError for ClientError {
    fn classify_error(&self) -> FailureKind {
        self.kind.clone()
    }
}

/// A client builder was given a value it cannot use.
#[derive(Debug)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid client configuration: {}", self.message)
    }
}

impl Error for ConfigError {}

/// The type and message of either provider's error envelope.
struct ProviderError {
    error_type: Option<String>,
    message: String,
}

impl ProviderError {
    fn parse(body: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let error = value.get("error")?;
        if let Some(message) = error.as_str() {
            return Some(Self {
                error_type: None,
                message: message.to_owned(),
            });
        }
        let text = |name: &str| error.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        Some(Self {
            // OpenAI's `code` is more precise than its `type`; Anthropic has `type`.
            error_type: text("code").or_else(|| text("type")),
            message: text("message").unwrap_or_default(),
        })
    }
}

fn truncate(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn answer_errors_carry_type_message_and_kind() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "3".parse().unwrap());
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        let err = ClientError::from_answer(
            "anthropic",
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            body,
            &keep,
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(err.error_type(), Some("rate_limit_error"));
        assert_eq!(
            err.to_string(),
            "anthropic: rate_limited (retry after 3s): HTTP 429 rate_limit_error: slow down"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(2 * MAX_MESSAGE_CHARS);
        let cut = truncate(long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn stream_errors_default_to_server_error() {
        let err = ClientError::from_stream_error("x", "{\"error\":{}}", &keep);
        assert_eq!(err.kind(), &FailureKind::ServerError);
        let err = ClientError::from_stream_error(
            "x",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &keep,
        );
        assert_eq!(err.kind(), &FailureKind::Overloaded { retry_after: None });
    }
}
