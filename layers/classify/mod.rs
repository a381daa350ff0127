//! The shared outcome taxonomy, and the classifiers that map a call's result onto it.
//!
//! Every layer of this crate decides from the same classification of a call's
//! `Result<Res, Err>`: [`Outcome::Success`], or [`Outcome::Failure`] with a
//! [`FailureKind`]. A [`FailurePolicy`] then answers three questions for each kind
//! (retry it? count it against a circuit? try a fallback?), with documented defaults
//! that can be overridden.
//!
//! A classifier is anything that implements [`Classify`]:
//!
//! - [`DefaultClassifier`]: responses by status and headers
//!   (`http::Response<B>`, `reqwest::Response`, or your type implementing
//!   [`ClassifyResponse`]) and errors through [`ClassifyError`].
//! - [`JsonBodyClassifier`]: buffered `http::Response<B>` whose body is bytes, also
//!   reading the OpenAI and Anthropic error bodies.
//! - [`ErrorOnlyClassifier`]: every `Ok` is a success; errors through
//!   [`ClassifyError`].
//! - Any closure `Fn(&Result<Res, Err>) -> Outcome`.
//!
//! # Waits a server asks for
//!
//! `Retry-After` (seconds or an HTTP date), `retry-after-ms`, the provider reset
//! headers and Google's `RetryInfo` are parsed into the `retry_after` of
//! [`FailureKind::RateLimited`] and [`FailureKind::Overloaded`], capped where they
//! are parsed at one process-wide ceiling: [`DEFAULT_MAX_RETRY_AFTER`] (10 minutes),
//! changed with [`set_max_retry_after`]. A longer or unrepresentable wait is taken
//! as the ceiling, so no server can pause a batch, a circuit or a caller longer.
//!
//! # What a 429 means, provider by provider
//!
//! | provider | body | kind | retry? |
//! |---|---|---|---|
//! | OpenAI, Azure OpenAI | `code: rate_limit_exceeded` | `RateLimited` | yes, after `retry-after(-ms)` or the `x-ratelimit-reset-*` of the exhausted limit |
//! | OpenAI, Azure OpenAI | `code: insufficient_quota` | `QuotaExhausted` | no: the account is out of credit; fall back |
//! | Anthropic | `type: rate_limit_error` | `RateLimited` | yes, after `retry-after` or `anthropic-ratelimit-*-reset` |
//! | Anthropic | (529) `type: overloaded_error` | `Overloaded` | yes, later; counts against the circuit |
//! | Gemini, Vertex AI | `status: RESOURCE_EXHAUSTED` | `RateLimited` | yes: the ordinary per-minute limit (its message says "check quota" for every limit), after the `RetryInfo.retryDelay` in `details` |
//! | Gemini, Vertex AI | `RESOURCE_EXHAUSTED` naming a per-day quota (`quotaId` with `PerDay`) | `QuotaExhausted` | no: it resets the next day; fall back |
//! | vLLM, llama.cpp, Ollama | OpenAI's envelope, or vLLM's older `{"object": "error", "message", "code"}` | by `code`/`type`, else by message | as the kind says |
//!
//! Whether a kind is retried, counted against a circuit or fallen back from is the
//! [`FailurePolicy`]'s answer; the table gives the defaults.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_llm_resilience::classify::{Classify, DefaultClassifier, FailureKind, Outcome};
//! use tower_llm_resilience::BoxError;
//!
//! let limited = http::Response::builder()
//!     .status(429)
//!     .header("retry-after", "20")
//!     .body(())
//!     .unwrap();
//! let result: Result<_, BoxError> = Ok(limited);
//! assert_eq!(
//!     DefaultClassifier.classify(&result),
//!     Outcome::Failure(FailureKind::RateLimited { retry_after: Some(Duration::from_secs(20)) })
//! );
//!
//! // A closure for your own types.
//! let mine = |r: &Result<u32, String>| match r {
//!     Ok(_) => Outcome::Success,
//!     Err(e) if e.contains("busy") => Outcome::Failure(FailureKind::Overloaded { retry_after: None }),
//!     Err(_) => Outcome::Failure(FailureKind::Other),
//! };
//! assert!(mine.classify(&Ok(1)).is_success());
//! ```

mod body;
mod error;
mod headers;
mod http;
mod kind;
mod policy;
mod providers;

pub use self::body::{classify_buffered, classify_error_body};
pub use self::error::{classify_dyn_error, ClassifiedError, ClassifyError};
pub(crate) use self::error::{kind_if, walk_sources};
pub(crate) use self::headers::announced_limits;
pub use self::headers::{
    cap_retry_after, max_retry_after, parse_retry_after_value, retry_after, retry_after_at,
    set_max_retry_after, DEFAULT_MAX_RETRY_AFTER,
};
pub use self::http::classify_status;
pub use self::kind::{FailureCategory, FailureKind, Outcome};
pub use self::policy::{Decisions, FailurePolicy};

/// Maps the result of one call to an [`Outcome`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot classify a `Result<{Res}, {Err}>`",
    label = "not a classifier for these response and error types",
    note = "`DefaultClassifier` needs a response implementing `ClassifyResponse` and an error implementing `ClassifyError`; `ErrorOnlyClassifier` needs only the error",
    note = "or pass a closure `|result: &Result<{Res}, {Err}>| -> Outcome` to `.classifier(..)`"
)]
pub trait Classify<Res, Err> {
    /// Classify one result.
    fn classify(&self, result: &Result<Res, Err>) -> Outcome;
}

impl<F, Res, Err> Classify<Res, Err> for F
where
    F: Fn(&Result<Res, Err>) -> Outcome,
{
    fn classify(&self, result: &Result<Res, Err>) -> Outcome {
        self(result)
    }
}

/// A response that can tell whether it is a success, without reading its body.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say whether it is a success (`ClassifyResponse`)",
    label = "the default classifier needs `ClassifyResponse` for this response type",
    note = "implement `ClassifyResponse` for `{Self}`, or set `.classifier(ErrorOnlyClassifier)` when every `Ok` is a success",
    note = "`http::Response<B>`, `reqwest::Response`, `ChatResponse` and `ChatStream` implement it"
)]
pub trait ClassifyResponse {
    /// Classify this response.
    fn classify_response(&self) -> Outcome;
}

/// Responses through [`ClassifyResponse`] (status and headers), errors through
/// [`ClassifyError`]. The default classifier of every layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl<Res: ClassifyResponse, Err: ClassifyError> Classify<Res, Err> for DefaultClassifier {
    fn classify(&self, result: &Result<Res, Err>) -> Outcome {
        match result {
            Ok(response) => response.classify_response(),
            Err(err) => Outcome::Failure(err.classify_error()),
        }
    }
}

/// Every `Ok` is a success; errors through [`ClassifyError`]. For services whose
/// responses are plain values (for example an LLM client returning parsed answers and
/// reporting every failure as an error).
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorOnlyClassifier;

impl<Res, Err: ClassifyError> Classify<Res, Err> for ErrorOnlyClassifier {
    fn classify(&self, result: &Result<Res, Err>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(err) => Outcome::Failure(err.classify_error()),
        }
    }
}

/// For buffered `http::Response<B>` where `B: AsRef<[u8]>` (`Bytes`, `Vec<u8>`,
/// `String`): status, headers and the provider error body, see [`classify_buffered`].
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonBodyClassifier;

impl<B: AsRef<[u8]>, Err: ClassifyError> Classify<::http::Response<B>, Err> for JsonBodyClassifier {
    fn classify(&self, result: &Result<::http::Response<B>, Err>) -> Outcome {
        match result {
            Ok(response) => classify_buffered(
                response.status(),
                response.headers(),
                response.body().as_ref(),
            ),
            Err(err) => Outcome::Failure(err.classify_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;

    #[test]
    fn json_body_classifier_reads_bodies() {
        let response = ::http::Response::builder()
            .status(200)
            .body(bytes::Bytes::from_static(
                br#"{"error":{"type":"server_error"}}"#,
            ))
            .unwrap();
        let result: Result<_, BoxError> = Ok(response);
        assert_eq!(
            JsonBodyClassifier.classify(&result),
            Outcome::Failure(FailureKind::InvalidResponse)
        );
    }

    #[test]
    fn error_only_classifier() {
        let ok: Result<&str, BoxError> = Ok("answer");
        assert_eq!(ErrorOnlyClassifier.classify(&ok), Outcome::Success);
        let err: Result<&str, BoxError> = Err(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(
            ErrorOnlyClassifier.classify(&err),
            Outcome::Failure(FailureKind::Timeout)
        );
    }
}
