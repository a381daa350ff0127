//! Classification of real providers' error bodies (fixtures in tests/fixtures,
//! see its README for their source), and the edges of `classify_buffered`:
//! Gemini's per-minute 429, vLLM's older envelope, 204, media-type case.
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use tower_llm_resilience::classify::{
    classify_buffered, classify_error_body, max_retry_after, FailureKind, FailurePolicy, Outcome,
};

fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("fixture {full}: {e}"))
}

fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> Outcome {
    classify_buffered(StatusCode::from_u16(status).unwrap(), headers, body)
}

fn failure(outcome: Outcome) -> FailureKind {
    match outcome {
        Outcome::Failure(kind) => kind,
        Outcome::Success => panic!("expected a failure"),
    }
}

#[test]
fn gemini_per_minute_429_is_a_rate_limit_that_is_retried() {
    let none = HeaderMap::new();
    let kind = failure(classify(
        429,
        &none,
        &fixture("gemini/error_resource_exhausted.json"),
    ));
    assert_eq!(
        kind,
        FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(37))
        },
        "the RetryInfo delay is carried"
    );
    assert!(FailurePolicy::DEFAULT.is_retryable(&kind));

    let plain = failure(classify(
        429,
        &none,
        &fixture("gemini/error_resource_exhausted_plain.json"),
    ));
    assert_eq!(plain, FailureKind::RateLimited { retry_after: None });

    // A Retry-After header wins over the body's hint.
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("5"));
    assert_eq!(
        failure(classify(
            429,
            &headers,
            &fixture("gemini/error_resource_exhausted.json")
        )),
        FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(5))
        }
    );
}

#[test]
fn gemini_daily_quota_is_exhausted_and_not_retried() {
    let kind = failure(classify(
        429,
        &HeaderMap::new(),
        &fixture("gemini/error_quota_per_day.json"),
    ));
    assert_eq!(kind, FailureKind::QuotaExhausted);
    assert!(!FailurePolicy::DEFAULT.is_retryable(&kind));
}

#[test]
fn google_status_names_decide_without_the_message() {
    let body = |status: &str, details: &str| {
        format!(
            r#"{{"error":{{"code":1,"message":"","status":"{status}","details":[{details}]}}}}"#
        )
    };
    let cases = [
        ("UNAVAILABLE", FailureKind::Overloaded { retry_after: None }),
        ("UNAUTHENTICATED", FailureKind::Auth),
        ("PERMISSION_DENIED", FailureKind::Auth),
        ("DEADLINE_EXCEEDED", FailureKind::Timeout),
        ("INTERNAL", FailureKind::ServerError),
        (
            "RESOURCE_EXHAUSTED",
            FailureKind::RateLimited { retry_after: None },
        ),
    ];
    for (status, kind) in cases {
        assert_eq!(
            classify_error_body(body(status, "").as_bytes()),
            Some(kind),
            "{status}"
        );
    }
    // An absurd retry delay is cut to the ceiling.
    let absurd = body(
        "RESOURCE_EXHAUSTED",
        r#"{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"999999999999s"}"#,
    );
    assert_eq!(
        classify_error_body(absurd.as_bytes()),
        Some(FailureKind::RateLimited {
            retry_after: Some(max_retry_after())
        })
    );
    // Gemini's too-long prompt is an INVALID_ARGUMENT whose message decides.
    let too_long = r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
    assert_eq!(
        classify_error_body(too_long.as_bytes()),
        Some(FailureKind::ContextLengthExceeded)
    );
}

#[test]
fn vllm_older_envelope_is_recognised() {
    let none = HeaderMap::new();
    let context = fixture("vllm/error_context_length.json");
    assert_eq!(
        failure(classify(400, &none, &context)),
        FailureKind::ContextLengthExceeded
    );
    assert_eq!(
        failure(classify(200, &none, &context)),
        FailureKind::InvalidResponse,
        "a 200 carrying an error is not a success"
    );
    assert_eq!(
        failure(classify(
            400,
            &none,
            &fixture("vllm/error_bad_request.json")
        )),
        FailureKind::BadRequest
    );
    // A completion that merely has an `object` field is fine.
    let ok = br#"{"object":"chat.completion","choices":[{"message":{"content":"hi"}}]}"#;
    assert_eq!(classify(200, &none, ok), Outcome::Success);
}

#[test]
fn no_content_is_not_an_invalid_response() {
    let none = HeaderMap::new();
    assert_eq!(classify(204, &none, b""), Outcome::Success);
    assert_eq!(classify(205, &none, b""), Outcome::Success);
    assert_eq!(
        classify(200, &none, b""),
        Outcome::Failure(FailureKind::InvalidResponse)
    );
}

#[test]
fn media_types_are_compared_case_insensitively() {
    for content_type in [
        "text/event-stream",
        "Text/Event-Stream",
        "TEXT/EVENT-STREAM; charset=utf-8",
        " text/event-stream ;charset=UTF-8",
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_str(content_type).unwrap());
        assert_eq!(
            classify(200, &headers, b"data: {}\n\n"),
            Outcome::Success,
            "{content_type}"
        );
    }
    let mut other = HeaderMap::new();
    other.insert(
        "content-type",
        HeaderValue::from_static("text/event-streamx"),
    );
    assert_eq!(
        classify(200, &other, b"data: {}\n\n"),
        Outcome::Failure(FailureKind::InvalidResponse)
    );
}
