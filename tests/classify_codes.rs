//! The provider error-code table of `classify_error_body` on its own: every code
//! and type tag decides the kind with an empty message, so the message heuristic
//! cannot hide a wrong entry; then each message heuristic on its own.
use http::{HeaderMap, HeaderValue, StatusCode};
use tower_llm_resilience::classify::{
    classify_buffered, classify_error_body, FailureKind, Outcome,
};

const RATE: FailureKind = FailureKind::RateLimited { retry_after: None };
const OVERLOADED: FailureKind = FailureKind::Overloaded { retry_after: None };

/// Every tag the table knows, with its kind.
const TAGS: [(&str, FailureKind); 23] = [
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
    ("rate_limit_exceeded", RATE),
    ("rate_limit_error", RATE),
    ("requests", RATE),
    ("tokens", RATE),
    ("overloaded_error", OVERLOADED),
    ("engine_overloaded", OVERLOADED),
    ("server_overloaded", OVERLOADED),
    ("authentication_error", FailureKind::Auth),
    ("permission_error", FailureKind::Auth),
    ("invalid_api_key", FailureKind::Auth),
    ("api_error", FailureKind::ServerError),
    ("server_error", FailureKind::ServerError),
    ("internal_error", FailureKind::ServerError),
    ("timeout_error", FailureKind::Timeout),
    ("timeout", FailureKind::Timeout),
];

#[test]
fn every_code_decides_alone_in_openai_envelopes() {
    for (tag, kind) in TAGS {
        let body = format!(r#"{{"error":{{"code":"{tag}","message":""}}}}"#);
        assert_eq!(classify_error_body(body.as_bytes()), Some(kind), "{body}");
    }
}

#[test]
fn every_type_decides_alone_in_anthropic_envelopes() {
    for (tag, kind) in TAGS {
        let body = format!(r#"{{"type":"error","error":{{"type":"{tag}"}}}}"#);
        assert_eq!(classify_error_body(body.as_bytes()), Some(kind), "{body}");
    }
}

#[test]
fn the_code_wins_over_the_type_and_the_message() {
    let body = br#"{"error":{"code":"insufficient_quota","type":"requests","message":"rate limit reached"}}"#;
    assert_eq!(classify_error_body(body), Some(FailureKind::QuotaExhausted));
    let body = br#"{"error":{"code":"unknown_code","type":"server_error","message":"quota"}}"#;
    assert_eq!(classify_error_body(body), Some(FailureKind::ServerError));
}

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
