//! Pins the classification edges that mutation testing found untested: the
//! provider error-code table on its own (no message to fall back on), and the
//! Retry-After / reset-header / duration parsing edges.
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use tower_llm_resilience::classify::{classify_error_body, retry_after_at, FailureKind};

fn body_kind(json: String) -> Option<FailureKind> {
    classify_error_body(json.as_bytes())
}

#[test]
fn every_code_in_the_table_decides_without_a_message() {
    let rate = FailureKind::RateLimited { retry_after: None };
    let overloaded = FailureKind::Overloaded { retry_after: None };
    let table: [(&str, FailureKind); 22] = [
        (
            "context_length_exceeded",
            FailureKind::ContextLengthExceeded,
        ),
        (
            "string_above_max_length",
            FailureKind::ContextLengthExceeded,
        ),
        ("content_filter", FailureKind::ContentFiltered),
        ("content_policy_violation", FailureKind::ContentFiltered),
        ("content_filtered", FailureKind::ContentFiltered),
        ("insufficient_quota", FailureKind::QuotaExhausted),
        ("billing_hard_limit_reached", FailureKind::QuotaExhausted),
        ("billing_error", FailureKind::QuotaExhausted),
        ("rate_limit_exceeded", rate.clone()),
        ("rate_limit_error", rate.clone()),
        ("requests", rate.clone()),
        ("tokens", rate.clone()),
        ("overloaded_error", overloaded.clone()),
        ("engine_overloaded", overloaded.clone()),
        ("server_overloaded", overloaded.clone()),
        ("authentication_error", FailureKind::Auth),
        ("permission_error", FailureKind::Auth),
        ("invalid_api_key", FailureKind::Auth),
        ("api_error", FailureKind::ServerError),
        ("server_error", FailureKind::ServerError),
        ("internal_error", FailureKind::ServerError),
        ("timeout_error", FailureKind::Timeout),
    ];
    for (tag, kind) in table {
        // As OpenAI's `code`, as OpenAI's `type`, and as Anthropic's `type`.
        let openai_code = format!(r#"{{"error":{{"code":"{tag}","type":"x","message":""}}}}"#);
        let openai_type = format!(r#"{{"error":{{"type":"{tag}","message":""}}}}"#);
        let anthropic = format!(r#"{{"type":"error","error":{{"type":"{tag}"}}}}"#);
        for body in [openai_code, openai_type, anthropic] {
            assert_eq!(body_kind(body.clone()), Some(kind.clone()), "{body}");
        }
    }
    assert_eq!(
        body_kind(r#"{"error":{"code":"timeout","message":""}}"#.into()),
        Some(FailureKind::Timeout)
    );
    // `code` wins over `type`, and an unknown tag falls to the message, then Other.
    assert_eq!(
        body_kind(r#"{"error":{"code":"insufficient_quota","type":"requests"}}"#.into()),
        Some(FailureKind::QuotaExhausted)
    );
    assert_eq!(
        body_kind(r#"{"error":{"code":"nope","message":"Overloaded, try later"}}"#.into()),
        Some(FailureKind::Overloaded { retry_after: None })
    );
    assert_eq!(
        body_kind(r#"{"error":{"code":"nope","message":""}}"#.into()),
        Some(FailureKind::Other)
    );
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

const EPOCH: SystemTime = SystemTime::UNIX_EPOCH;

#[test]
fn retry_after_ms_edges() {
    let wait = |pairs: &[(&'static str, &str)]| retry_after_at(&headers(pairs), EPOCH);
    assert_eq!(
        wait(&[("retry-after-ms", "1.5")]),
        Some(Duration::from_micros(1500))
    );
    assert_eq!(wait(&[("retry-after-ms", "0")]), Some(Duration::ZERO));
    // A malformed retry-after-ms falls back to Retry-After.
    assert_eq!(
        wait(&[("retry-after-ms", "soon"), ("retry-after", "3")]),
        Some(Duration::from_secs(3))
    );
    assert_eq!(wait(&[("retry-after", "5.")]), Some(Duration::from_secs(5)));
    assert_eq!(wait(&[("retry-after", ".")]), None);
    assert_eq!(wait(&[("retry-after", "1e3")]), None);
}

#[test]
fn reset_headers_count_only_exhausted_limits_and_take_the_longest() {
    let now = humantime::parse_rfc3339_weak("2024-05-01T12:00:00Z").unwrap();
    let wait = |pairs: &[(&'static str, &str)]| retry_after_at(&headers(pairs), now);
    // No "remaining" header: the limit counts as exhausted.
    assert_eq!(
        wait(&[("x-ratelimit-reset-tokens", "1m30s")]),
        Some(Duration::from_secs(90))
    );
    // An unreadable "remaining" counts as exhausted too; a positive one does not.
    assert_eq!(
        wait(&[
            ("x-ratelimit-remaining-tokens", "lots"),
            ("x-ratelimit-reset-tokens", "2s")
        ]),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        wait(&[
            ("x-ratelimit-remaining-tokens", "3"),
            ("x-ratelimit-reset-tokens", "2s")
        ]),
        None
    );
    // The longest exhausted limit, across providers' headers.
    assert_eq!(
        wait(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "20ms"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2024-05-01T12:00:07Z"),
        ]),
        Some(Duration::from_secs(7))
    );
    // A reset in the past is no wait at all.
    assert_eq!(
        wait(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T11:00:00Z"),
        ]),
        Some(Duration::ZERO)
    );
    // Retry-After wins over resets.
    assert_eq!(
        wait(&[
            ("retry-after", "1"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
        ]),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn go_duration_units() {
    let reset = |value: &str| {
        retry_after_at(
            &headers(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", value),
            ]),
            EPOCH,
        )
    };
    assert_eq!(reset("0.125h"), Some(Duration::from_secs(450)));
    assert_eq!(reset("2h"), Some(Duration::from_secs(600)), "capped");
    assert_eq!(reset("2m"), Some(Duration::from_secs(120)));
    assert_eq!(reset("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(reset("2us"), Some(Duration::from_micros(2)));
    // Non-ASCII ("µs") never gets here: header text must be visible ASCII.
    assert_eq!(reset("3µs"), None);
    assert_eq!(reset("4ns"), Some(Duration::from_nanos(4)));
    assert_eq!(reset("1m30.5s"), Some(Duration::from_millis(90_500)));
    for bad in ["", "5", "m", "1d", "1h-2m", "1..2s"] {
        assert_eq!(reset(bad), None, "{bad:?}");
    }
}

#[test]
fn retry_after_too_large_is_the_cap_but_infinite_is_ignored() {
    use tower_llm_resilience::classify::{max_retry_after, parse_retry_after_value};
    let now = SystemTime::now();
    // 10^30 seconds does not fit a Duration: the longest wait, then capped.
    let huge = format!("1{}", "0".repeat(30));
    assert_eq!(parse_retry_after_value(&huge, now), Some(max_retry_after()));
    // 400 digits overflow f64 to infinity: not a number of seconds, ignored.
    let endless = "9".repeat(400);
    assert_eq!(parse_retry_after_value(&endless, now), None);
}
