//! `classify_error_body`'s message heuristics one by one (the code table alone is
//! in `classify_edges.rs`), and `classify_buffered`'s envelope check, the answers
//! it does not read, and when a body refines the status's kind.
use http::{HeaderMap, HeaderValue, StatusCode};
use tower_llm_resilience::classify::{
    classify_buffered, classify_error_body, FailureKind, Outcome,
};

const RATE: FailureKind = FailureKind::RateLimited { retry_after: None };
const OVERLOADED: FailureKind = FailureKind::Overloaded { retry_after: None };

#[test]
fn each_message_heuristic_on_its_own() {
    let cases = [
        ("Prompt is too long", FailureKind::ContextLengthExceeded),
        (
            "exceeds the CONTEXT LENGTH",
            FailureKind::ContextLengthExceeded,
        ),
        (
            "over the context window",
            FailureKind::ContextLengthExceeded,
        ),
        (
            "the maximum context is 8k",
            FailureKind::ContextLengthExceeded,
        ),
        (
            "too many tokens in the input",
            FailureKind::ContextLengthExceeded,
        ),
        (
            "The input token count (9000) exceeds the maximum number of tokens allowed",
            FailureKind::ContextLengthExceeded,
        ),
        // Each half of the Gemini phrase alone says nothing about context.
        ("the input token count is 12", FailureKind::BadRequest),
        ("this exceeds the maximum size", FailureKind::BadRequest),
        (
            "blocked by the content policy",
            FailureKind::ContentFiltered,
        ),
        (
            "Azure's content management policy",
            FailureKind::ContentFiltered,
        ),
        ("caught by the content filter", FailureKind::ContentFiltered),
        ("You exceeded your Quota", FailureKind::QuotaExhausted),
        ("Rate limit reached", RATE),
        ("The server is overloaded", OVERLOADED),
        ("'messages' is a required property", FailureKind::BadRequest),
    ];
    for (message, kind) in cases {
        let body = serde_json::json!({"error": {"message": message}}).to_string();
        assert_eq!(
            classify_error_body(body.as_bytes()),
            Some(kind.clone()),
            "{message}"
        );
        // The same through the type-only envelope.
        let body = serde_json::json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}).to_string();
        assert_eq!(
            classify_error_body(body.as_bytes()),
            Some(kind),
            "{message}"
        );
    }
    // No code, type or message: an error all the same, of no known kind.
    assert_eq!(
        classify_error_body(br#"{"error":{"param":"x"}}"#),
        Some(FailureKind::Other)
    );
}

#[test]
fn each_envelope_shape_alone_marks_a_two_hundred_invalid() {
    let ok = StatusCode::OK;
    let none = HeaderMap::new();
    for body in [
        &br#"{"error":{"message":"x"}}"#[..],
        br#"{"error":"overloaded"}"#,
        br#"{"type":"error","choices":[]}"#,
        br#"{"object":"error","message":"x","code":400}"#,
        br#"{"id":"1","error":{},"choices":[]}"#,
    ] {
        assert_eq!(
            classify_buffered(ok, &none, body),
            Outcome::Failure(FailureKind::InvalidResponse),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for body in [
        &br#"{"type":"message","object":"chat.completion","error":null}"#[..],
        br#"{"type":"errors","object":"list"}"#,
        br#"{"error":[1],"error_code":"x"}"#,
        br#"[{"error":{}}]"#,
        b"42",
        b"-1",
        b"1.5",
        b"true",
        b"null",
        br#""error""#,
    ] {
        assert_eq!(
            classify_buffered(ok, &none, body),
            Outcome::Success,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn answers_without_content_or_outside_2xx_success_are_not_read() {
    let none = HeaderMap::new();
    for status in [204, 205, 304] {
        assert_eq!(
            classify_buffered(StatusCode::from_u16(status).unwrap(), &none, b"<garbage>"),
            Outcome::Success,
            "{status}"
        );
    }
    let mut sse = HeaderMap::new();
    sse.insert(
        "content-type",
        HeaderValue::from_static(" TEXT/Event-Stream ; charset=utf-8"),
    );
    assert_eq!(
        classify_buffered(StatusCode::OK, &sse, b"data: {\"error\":{}}\n\n"),
        Outcome::Success
    );
    let mut json = HeaderMap::new();
    json.insert(
        "content-type",
        HeaderValue::from_static("application/json; x=text/event-stream"),
    );
    assert_eq!(
        classify_buffered(StatusCode::OK, &json, b"data: x"),
        Outcome::Failure(FailureKind::InvalidResponse)
    );
}

#[test]
fn a_body_refines_only_into_a_more_specific_kind() {
    let none = HeaderMap::new();
    let status = |code| StatusCode::from_u16(code).unwrap();
    // Generic kinds from the body keep the status's kind.
    for body in [
        &br#"{"error":{"code":"server_error"}}"#[..],
        br#"{"error":{"message":"something odd"}}"#,
        br#"{"error":{"param":"x"}}"#,
    ] {
        assert_eq!(
            classify_buffered(status(503), &none, body),
            Outcome::Failure(OVERLOADED),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // An auth body counts on an auth status only.
    let auth = br#"{"error":{"code":"invalid_api_key"}}"#;
    assert_eq!(
        classify_buffered(status(401), &none, auth),
        Outcome::Failure(FailureKind::Auth)
    );
    assert_eq!(
        classify_buffered(status(429), &none, auth),
        Outcome::Failure(RATE)
    );
    // A specific kind replaces the status's, keeping the header's wait.
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("3"));
    assert_eq!(
        classify_buffered(
            status(503),
            &headers,
            br#"{"error":{"code":"rate_limit_exceeded"}}"#
        ),
        Outcome::Failure(FailureKind::RateLimited {
            retry_after: Some(std::time::Duration::from_secs(3))
        })
    );
}
