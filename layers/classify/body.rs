//! The error JSON bodies of OpenAI-compatible servers and of Anthropic.

use http::{HeaderMap, StatusCode};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::providers::kind_from_google_status;
use super::{classify_status, FailureKind, Outcome};

/// Classify a provider error body, if the body is one.
///
/// Understands OpenAI's `{"error": {"type", "code", "message"}}` (also used by Azure
/// OpenAI, vLLM, Ollama and llama.cpp), vLLM's older
/// `{"object": "error", "message", "type", "code": 400}`, Google's (Gemini, Vertex
/// AI) `{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details"}}`, and
/// Anthropic's `{"type": "error", "error": {"type", "message"}}`. Returns `None` when
/// the body is not JSON or not an error object. Never panics, whatever the bytes.
///
/// What each provider's 429 means for retrying is tabled in the
/// [classify module docs](super#what-a-429-means-provider-by-provider).
///
/// ```
/// use tower_llm_resilience::classify::{classify_error_body, FailureKind};
///
/// let body = br#"{"error":{"message":"...","type":"insufficient_quota","code":"insufficient_quota"}}"#;
/// assert_eq!(classify_error_body(body), Some(FailureKind::QuotaExhausted));
/// ```
pub fn classify_error_body(body: &[u8]) -> Option<FailureKind> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = error_object(&value)?;
    let field = |name: &str| error.get(name).and_then(Value::as_str).unwrap_or("");
    let (kind, code, message) = (field("type"), field("code"), field("message"));
    // `code` is the most specific field OpenAI sends; Anthropic only has `type`;
    // Google sends a numeric `code` and a `status` name.
    Some(
        kind_from_tag(code)
            .or_else(|| kind_from_tag(kind))
            .or_else(|| kind_from_google_status(error))
            .or_else(|| kind_from_message(message))
            .unwrap_or(FailureKind::Other),
    )
}

/// Classify a fully buffered HTTP answer from an LLM JSON API.
///
/// Status and headers decide first (see [`classify_status`]); the body then refines
/// the kind: a 400 whose body says `context_length_exceeded` becomes
/// [`FailureKind::ContextLengthExceeded`], a 429 that says `insufficient_quota`
/// becomes [`FailureKind::QuotaExhausted`], and so on, keeping the `Retry-After` the
/// headers carried (or, without one, the retry delay a Google body gives). A 2xx
/// whose body is an error object, is not JSON, or is empty is
/// [`FailureKind::InvalidResponse`]; `204 No Content`, `205 Reset Content` and
/// event streams (`text/event-stream`, any case) are not inspected.
pub fn classify_buffered(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    match classify_status(status, headers) {
        Outcome::Success => {
            let no_content = matches!(status.as_u16(), 204 | 205);
            if !status.is_success() || no_content || is_event_stream(headers) {
                return Outcome::Success;
            }
            match serde_json::from_slice::<Envelope>(body) {
                Ok(Envelope { is_error: false }) => Outcome::Success,
                _ => Outcome::Failure(FailureKind::InvalidResponse),
            }
        }
        Outcome::Failure(from_status) => {
            let refined = match classify_error_body(body) {
                Some(FailureKind::Other | FailureKind::BadRequest | FailureKind::ServerError)
                | None => from_status.clone(),
                // An `auth`-looking body on a non-auth status is still the status's kind.
                Some(FailureKind::Auth) if from_status != FailureKind::Auth => from_status.clone(),
                Some(kind) => {
                    let wait = from_status.retry_after().or(kind.retry_after());
                    kind.with_retry_after(wait)
                }
            };
            Outcome::Failure(refined)
        }
    }
}

/// Whether a JSON document is the error envelope of either provider, read without
/// building it: the same answer as [`error_object`] on the parsed value, at the
/// cost of a validating scan (a 2xx answer is read on every call).
struct Envelope {
    is_error: bool,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let (mut error, mut typed_error, mut object_error) = (false, false, false);
        while let Some(key) = map.next_key::<TopKey>()? {
            match key {
                // The last duplicate wins, as in a parsed `Value`.
                TopKey::Error => {
                    error = matches!(map.next_value()?, Shape::Object | Shape::Str { .. });
                }
                TopKey::Type => {
                    typed_error = matches!(map.next_value()?, Shape::Str { is_error: true });
                }
                TopKey::Object => {
                    object_error = matches!(map.next_value()?, Shape::Str { is_error: true });
                }
                TopKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Envelope {
            is_error: error || typed_error || object_error,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Envelope { is_error: false })
    }

    fn visit_bool<E>(self, _: bool) -> Result<Envelope, E> {
        Ok(Envelope { is_error: false })
    }

    fn visit_i64<E>(self, _: i64) -> Result<Envelope, E> {
        Ok(Envelope { is_error: false })
    }

    fn visit_u64<E>(self, _: u64) -> Result<Envelope, E> {
        Ok(Envelope { is_error: false })
    }

    fn visit_f64<E>(self, _: f64) -> Result<Envelope, E> {
        Ok(Envelope { is_error: false })
    }

    fn visit_str<E>(self, _: &str) -> Result<Envelope, E> {
        Ok(Envelope { is_error: false })
    }

    fn visit_unit<E>(self) -> Result<Envelope, E> {
        Ok(Envelope { is_error: false })
    }
}

/// A top-level key of an answer, without allocating it.
enum TopKey {
    Error,
    Type,
    Object,
    Other,
}

impl<'de> Deserialize<'de> for TopKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = TopKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<TopKey, E> {
                Ok(match key {
                    "error" => TopKey::Error,
                    "type" => TopKey::Type,
                    "object" => TopKey::Object,
                    _ => TopKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The shape of a top-level value, read without building it: `error` counts when
/// it is an object or a string (some OpenAI-compatible servers), `type` when it
/// is the string `"error"` (Anthropic).
enum Shape {
    Object,
    Str { is_error: bool },
    Other,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shape::Object)
            }
            fn visit_str<E>(self, value: &str) -> Result<Shape, E> {
                Ok(Shape::Str {
                    is_error: value == "error",
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shape::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
        }
        deserializer.deserialize_any(ShapeVisitor)
    }
}

/// Media types are case-insensitive (RFC 9110 §8.3.1); parameters are ignored.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // A byte scan: `split(';')` costs a searcher set-up per call, on every answer.
        .map(|v| &v[..v.bytes().position(|b| b == b';').unwrap_or(v.len())])
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The error object of either provider's error envelope.
fn error_object(value: &Value) -> Option<&serde_json::Map<String, Value>> {
    let object = value.as_object()?;
    match object.get("error") {
        Some(Value::Object(error)) => Some(error),
        // Some OpenAI-compatible servers send `{"error": "message"}`.
        Some(Value::String(_)) => Some(object),
        _ if object.get("type").and_then(Value::as_str) == Some("error") => Some(object),
        // vLLM's older envelope: `{"object": "error", "message", "type", "code"}`.
        _ if object.get("object").and_then(Value::as_str) == Some("error") => Some(object),
        _ => None,
    }
}

fn kind_from_tag(tag: &str) -> Option<FailureKind> {
    Some(match tag {
        "context_length_exceeded" | "string_above_max_length" => FailureKind::ContextLengthExceeded,
        "content_filter" | "content_policy_violation" | "content_filtered" => {
            FailureKind::ContentFiltered
        }
        "insufficient_quota" | "billing_hard_limit_reached" | "billing_error" => {
            FailureKind::QuotaExhausted
        }
        "rate_limit_exceeded" | "rate_limit_error" | "requests" | "tokens" => {
            FailureKind::RateLimited { retry_after: None }
        }
        "overloaded_error" | "engine_overloaded" | "server_overloaded" => {
            FailureKind::Overloaded { retry_after: None }
        }
        "authentication_error" | "permission_error" | "invalid_api_key" => FailureKind::Auth,
        "api_error" | "server_error" | "internal_error" => FailureKind::ServerError,
        "timeout_error" | "timeout" => FailureKind::Timeout,
        // Anthropic reports a too-long prompt as a plain invalid_request_error; the
        // message decides, so these fall through to `kind_from_message`.
        _ => return None,
    })
}

fn kind_from_message(message: &str) -> Option<FailureKind> {
    let message = message.to_ascii_lowercase();
    let has = |needle: &str| message.contains(needle);
    if has("prompt is too long")
        || has("context length")
        || has("context window")
        || has("maximum context")
        || has("too many tokens")
        || (has("input token count") && has("exceeds the maximum"))
    {
        Some(FailureKind::ContextLengthExceeded)
    } else if has("content policy") || has("content management policy") || has("content filter") {
        Some(FailureKind::ContentFiltered)
    } else if has("quota") {
        Some(FailureKind::QuotaExhausted)
    } else if has("rate limit") {
        Some(FailureKind::RateLimited { retry_after: None })
    } else if has("overloaded") {
        Some(FailureKind::Overloaded { retry_after: None })
    } else if !message.is_empty() {
        Some(FailureKind::BadRequest)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    const OPENAI_CONTEXT: &str = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const OPENAI_RATE: &str = r#"{"error":{"message":"Rate limit reached for gpt-4 in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    const OPENAI_FILTER: &str = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
    const OPENAI_AUTH: &str = r#"{"error":{"message":"Incorrect API key provided: sk-...","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    const OPENAI_BAD: &str = r#"{"error":{"message":"'messages' is a required property","type":"invalid_request_error","param":null,"code":null}}"#;
    const ANTHROPIC_RATE: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
    const ANTHROPIC_OVERLOADED: &str =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    const ANTHROPIC_CONTEXT: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 200500 tokens > 200000 maximum"}}"#;
    const ANTHROPIC_INVALID: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
    const ANTHROPIC_AUTH: &str =
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
    const ANTHROPIC_API: &str =
        r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn provider_bodies() {
        let cases: [(&str, FailureKind); 12] = [
            (OPENAI_CONTEXT, FailureKind::ContextLengthExceeded),
            (OPENAI_QUOTA, FailureKind::QuotaExhausted),
            (OPENAI_RATE, FailureKind::RateLimited { retry_after: None }),
            (OPENAI_FILTER, FailureKind::ContentFiltered),
            (OPENAI_AUTH, FailureKind::Auth),
            (OPENAI_BAD, FailureKind::BadRequest),
            (
                ANTHROPIC_RATE,
                FailureKind::RateLimited { retry_after: None },
            ),
            (
                ANTHROPIC_OVERLOADED,
                FailureKind::Overloaded { retry_after: None },
            ),
            (ANTHROPIC_CONTEXT, FailureKind::ContextLengthExceeded),
            (ANTHROPIC_INVALID, FailureKind::BadRequest),
            (ANTHROPIC_AUTH, FailureKind::Auth),
            (ANTHROPIC_API, FailureKind::ServerError),
        ];
        for (body, kind) in cases {
            assert_eq!(classify_error_body(body.as_bytes()), Some(kind), "{body}");
        }
    }

    #[test]
    fn non_error_and_malformed_bodies() {
        for body in [
            &b""[..],
            b"not json",
            b"{",
            b"[]",
            b"null",
            b"{\"error\": null}",
            b"{\"choices\": []}",
            b"\xff\xfe\x00",
        ] {
            assert_eq!(classify_error_body(body), None, "{body:?}");
        }
        assert_eq!(
            classify_error_body(br#"{"error":"model not found"}"#),
            Some(FailureKind::Other)
        );
        assert_eq!(
            classify_error_body(br#"{"error":{"type":42,"code":[1]}}"#),
            Some(FailureKind::Other)
        );
    }

    #[test]
    fn body_refines_status_and_keeps_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("12"));
        assert_eq!(
            classify_buffered(status(429), &headers, OPENAI_QUOTA.as_bytes()),
            Outcome::Failure(FailureKind::QuotaExhausted)
        );
        assert_eq!(
            classify_buffered(status(429), &headers, OPENAI_RATE.as_bytes()),
            Outcome::Failure(FailureKind::RateLimited {
                retry_after: Some(Duration::from_secs(12))
            })
        );
        assert_eq!(
            classify_buffered(status(529), &headers, ANTHROPIC_OVERLOADED.as_bytes()),
            Outcome::Failure(FailureKind::Overloaded {
                retry_after: Some(Duration::from_secs(12))
            })
        );
        let none = HeaderMap::new();
        assert_eq!(
            classify_buffered(status(400), &none, OPENAI_CONTEXT.as_bytes()),
            Outcome::Failure(FailureKind::ContextLengthExceeded)
        );
        assert_eq!(
            classify_buffered(status(400), &none, ANTHROPIC_INVALID.as_bytes()),
            Outcome::Failure(FailureKind::BadRequest)
        );
        assert_eq!(
            classify_buffered(status(500), &none, b"<html>oops</html>"),
            Outcome::Failure(FailureKind::ServerError)
        );
        // A body claiming "auth" on a 500 does not turn the outage into a caller bug.
        assert_eq!(
            classify_buffered(status(500), &none, ANTHROPIC_AUTH.as_bytes()),
            Outcome::Failure(FailureKind::ServerError)
        );
    }

    #[test]
    fn two_hundred_with_error_or_garbage_is_invalid() {
        let none = HeaderMap::new();
        let ok = br#"{"choices":[{"message":{"content":"hi"}}]}"#;
        assert_eq!(classify_buffered(status(200), &none, ok), Outcome::Success);
        for bad in [
            OPENAI_RATE.as_bytes(),
            ANTHROPIC_API.as_bytes(),
            b"",
            b"<html>",
        ] {
            assert_eq!(
                classify_buffered(status(200), &none, bad),
                Outcome::Failure(FailureKind::InvalidResponse)
            );
        }
        let mut sse = HeaderMap::new();
        sse.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        assert_eq!(
            classify_buffered(status(200), &sse, b"data: {}\n\n"),
            Outcome::Success
        );
    }

    /// The shallow envelope check gives the parsed value's answer, on any JSON.
    fn envelope_agrees(text: &str) {
        let by_value = serde_json::from_slice::<Value>(text.as_bytes())
            .ok()
            .map(|value| error_object(&value).is_some());
        let shallow = serde_json::from_slice::<Envelope>(text.as_bytes())
            .ok()
            .map(|envelope| envelope.is_error);
        assert_eq!(shallow, by_value, "{text}");
    }

    #[test]
    fn envelope_check_matches_the_parsed_value() {
        for text in [
            r#"{"error":{"message":"x"}}"#,
            r#"{"error":"overloaded"}"#,
            r#"{"error":null,"type":"error"}"#,
            r#"{"error":[1],"type":"message"}"#,
            r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
            r#"{"error":{"a":1},"error":null}"#,
            r#"{"type":"error","type":"message"}"#,
            r#"{"typ\u0065":"error"}"#,
            r#"[{"error":{}}]"#,
            r#""error""#,
            "null",
            "1.5e3",
            "-7",
            "true",
            r#"{"choices":[{"message":{"content":"{\"error\":1}"}}]}"#,
            r#"{"error":{}} trailing"#,
            r#"{"error":{"#,
            "",
        ] {
            envelope_agrees(text);
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("error".to_owned()),
            Just("type".to_owned()),
            Just("object".to_owned()),
            "[a-z]{0,3}"
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop_oneof![Just("error".to_owned()), "[a-z]{0,4}"].prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((key.clone(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn envelope_check_matches_on_any_document(value in arb_json()) {
            envelope_agrees(&value.to_string());
        }
    }
}
