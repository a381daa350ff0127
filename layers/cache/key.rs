//! Cache keys for chat requests: a digest of everything that changes the answer.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Top-level fields of an OpenAI-style chat body that do not change the answer's
/// content: how it is delivered and who asked. Everything else (model, messages,
/// tools, sampling parameters, fields this crate does not know yet) is part of
/// the key, so an unknown field can cause a miss, never a wrong answer.
pub const IGNORED_FIELDS: &[&str] = &["stream", "stream_options", "user", "metadata"];

/// The key of an OpenAI-style chat request body (`model`, `messages`, `tools`,
/// `temperature`, ...), under `namespace` (a tenant or client id, so answers are
/// only shared within it; `""` for none).
///
/// The digest is SHA-256 over the body's canonical JSON (object keys sorted)
/// without [`IGNORED_FIELDS`]: a streamed and a non-streamed request share one
/// key. Headers and API keys never enter it.
pub fn chat_body_key(namespace: &str, body: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(namespace.len().to_le_bytes());
    hasher.update(namespace.as_bytes());
    match body {
        Value::Object(fields) => write_object(&mut hasher, fields, IGNORED_FIELDS),
        other => write_canonical(&mut hasher, other),
    }
    let digest = hasher.finalize();
    let mut key = String::with_capacity(8 + 64);
    key.push_str("chat:v1:");
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `true` when the body asks for `temperature` 0: the answers a cache may serve
/// by default. A missing temperature is the provider's default (1 for OpenAI),
/// not deterministic.
pub fn is_deterministic(body: &Value) -> bool {
    body.get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|temperature| temperature == 0.0)
}

/// Feed an object as canonical JSON, sorted by key, without the `skip` fields.
fn write_object(hasher: &mut Sha256, fields: &serde_json::Map<String, Value>, skip: &[&str]) {
    let mut names: Vec<&String> = fields
        .keys()
        .filter(|name| !skip.contains(&name.as_str()))
        .collect();
    names.sort();
    hasher.update(b"{");
    for name in names {
        write_canonical(hasher, &Value::String(name.clone()));
        hasher.update(b":");
        write_canonical(hasher, &fields[name.as_str()]);
        hasher.update(b",");
    }
    hasher.update(b"}");
}

/// Feed `value` as canonical JSON: objects with sorted keys, no whitespace.
fn write_canonical(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Object(fields) => write_object(hasher, fields, &[]),
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                write_canonical(hasher, item);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        // `0` and `0.0` ask for the same thing: a float with no fraction (and
        // exact as an integer) is written as that integer; every other number
        // in serde_json's own form, so large integers stay exact.
        Value::Number(number) => match number.as_f64() {
            Some(float)
                if !number.is_i64()
                    && !number.is_u64()
                    && float.fract() == 0.0
                    && float.abs() < 9_007_199_254_740_992.0 =>
            {
                hasher.update((float as i64).to_string().as_bytes())
            }
            _ => hasher.update(number.to_string().as_bytes()),
        },
        // Other scalars print the same whatever the map order.
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

/// The cache key of a [`ChatRequest`](crate::client::ChatRequest) when it is
/// deterministic (`temperature` 0), else `None`: the key function of a
/// [`CacheLayer`](super::CacheLayer) in front of a client that caches the
/// requests a cache may serve by default. For an opt-in or a per-request bypass,
/// write your own key function around [`chat_request_digest`].
#[cfg(feature = "reqwest")]
pub fn deterministic_chat_key(request: &crate::client::ChatRequest) -> Option<String> {
    (request.temperature == Some(0.0)).then(|| chat_request_digest(request))
}

/// The cache key of a [`ChatRequest`](crate::client::ChatRequest), whatever its
/// temperature: [`chat_body_key`] of its serialized form (so every field it has,
/// now or later, is part of the key; `stream` is not).
#[cfg(feature = "reqwest")]
pub fn chat_request_digest(request: &crate::client::ChatRequest) -> String {
    // A struct of strings, numbers and JSON values: serializing cannot fail.
    let body = serde_json::to_value(request).unwrap_or(Value::Null);
    chat_body_key("", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_key_as_their_integer() {
        let key = |t: Value| chat_body_key("", &json!({"model": "m", "temperature": t}));
        assert_eq!(key(json!(0)), key(json!(0.0)));
        assert_eq!(key(json!(2)), key(json!(2.0)));
        assert_eq!(key(json!(-1)), key(json!(-1.0)));
        assert_ne!(key(json!(0)), key(json!(0.5)));
        assert_ne!(key(json!(0.25)), key(json!(0.5)));
        // Large integers stay exact: two seeds one apart are two keys.
        let seed = |n: u64| chat_body_key("", &json!({"model": "m", "seed": n}));
        assert_ne!(seed(u64::MAX), seed(u64::MAX - 1));
    }

    #[test]
    fn key_ignores_order_and_delivery_but_not_content() {
        let a = json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]});
        let b = json!({"messages": [{"content": "hi", "role": "user"}], "stream": true,
            "stream_options": {"include_usage": true}, "user": "u1", "temperature": 0, "model": "m"});
        assert_eq!(chat_body_key("", &a), chat_body_key("", &b));
        let other_model = json!({"model": "n", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]});
        assert_ne!(chat_body_key("", &a), chat_body_key("", &other_model));
        let tools = json!({"model": "m", "temperature": 0, "tools": [{"type": "function"}],
            "messages": [{"role": "user", "content": "hi"}]});
        assert_ne!(chat_body_key("", &a), chat_body_key("", &tools));
        assert_ne!(chat_body_key("", &a), chat_body_key("client-2", &a));
        assert!(chat_body_key("", &a).starts_with("chat:v1:"));
        assert_eq!(chat_body_key("", &a).len(), 8 + 64);
    }

    #[test]
    fn namespace_boundary_is_unambiguous() {
        // "ab" + body vs "a" + body starting with "b" cannot collide: lengths are hashed.
        assert_ne!(
            chat_body_key("ab", &json!("c")),
            chat_body_key("a", &json!("bc"))
        );
    }

    #[test]
    fn only_temperature_zero_is_deterministic() {
        assert!(is_deterministic(&json!({"temperature": 0})));
        assert!(is_deterministic(&json!({"temperature": 0.0})));
        assert!(!is_deterministic(&json!({"temperature": 0.2})));
        assert!(!is_deterministic(&json!({})));
        assert!(!is_deterministic(&json!({"temperature": "0"})));
    }
}
