//! What the error bodies of providers other than OpenAI and Anthropic say: Google's
//! (Gemini, Vertex AI) `status` codes and retry hints.
//!
//! What each provider's 429 means for retrying is tabled in the module docs of
//! [`classify`](super).

use serde_json::{Map, Value};

use super::headers::{cap_retry_after, parse_go_duration};
use super::FailureKind;

/// The kind a Google API error `status` (`google.rpc.Code` name) stands for, when it
/// decides one; `INVALID_ARGUMENT` and the like are left to the message.
pub(super) fn kind_from_google_status(error: &Map<String, Value>) -> Option<FailureKind> {
    let status = error.get("status").and_then(Value::as_str)?;
    Some(match status {
        "RESOURCE_EXHAUSTED" if names_a_daily_quota(error) => FailureKind::QuotaExhausted,
        "RESOURCE_EXHAUSTED" => FailureKind::RateLimited {
            retry_after: retry_delay(error),
        },
        "UNAVAILABLE" => FailureKind::Overloaded {
            retry_after: retry_delay(error),
        },
        "UNAUTHENTICATED" | "PERMISSION_DENIED" => FailureKind::Auth,
        "DEADLINE_EXCEEDED" => FailureKind::Timeout,
        "INTERNAL" => FailureKind::ServerError,
        _ => return None,
    })
}

fn details(error: &Map<String, Value>) -> impl Iterator<Item = &Map<String, Value>> {
    error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

/// A `google.rpc.QuotaFailure` whose violated quota is a per-day one.
fn names_a_daily_quota(error: &Map<String, Value>) -> bool {
    details(error)
        .filter_map(|detail| detail.get("violations")?.as_array())
        .flatten()
        .filter_map(Value::as_object)
        .any(|violation| {
            ["quotaId", "quotaMetric"].iter().any(|field| {
                violation
                    .get(*field)
                    .and_then(Value::as_str)
                    .is_some_and(|id| id.contains("PerDay") || id.contains("per_day"))
            })
        })
}

/// `google.rpc.RetryInfo.retryDelay` (`"37s"`, `"1.5s"`), capped.
fn retry_delay(error: &Map<String, Value>) -> Option<std::time::Duration> {
    details(error)
        .filter_map(|detail| detail.get("retryDelay")?.as_str())
        .find_map(parse_go_duration)
        .map(cap_retry_after)
}
