//! Reading a chat completion request without building it: the proxy only needs
//! `model`, `messages`, `stream` and `response_format`, and forwards the rest
//! byte for byte.
//!
//! The body is scanned once into its top-level members (values left as raw
//! JSON), checked, and written again with `model` set to the first tier's model.
//! This is the proxy's hot path: no JSON tree is built for the messages.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a body is not a chat completion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON at all: serde_json's message.
    Json(String),
    /// JSON, but not a request: what is wrong with it.
    Shape(&'static str),
}

/// A chat completion request, as read from its body.
#[derive(Debug)]
pub struct ChatBody<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The model the client asked for.
    pub model: Cow<'a, str>,
    /// `stream: true`.
    pub stream: bool,
    /// `response_format` asked for JSON (`json_object` or `json_schema`).
    pub wants_json: bool,
}

impl<'a> ChatBody<'a> {
    /// Read `body`: a JSON object with a string `model` and an array `messages`.
    pub fn parse(body: &'a [u8]) -> Result<Self, Invalid> {
        let starts_object = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{');
        if !starts_object {
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Err(e) => Invalid::Json(e.to_string()),
                Ok(_) => Invalid::Shape("the request body must be a JSON object"),
            });
        }
        let Members(members) =
            serde_json::from_slice(body).map_err(|e| Invalid::Json(e.to_string()))?;
        // Duplicate keys: the last one counts, as in a parsed JSON value.
        let last = |name: &str| {
            members
                .iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, raw)| *raw)
        };
        let model = match last("model") {
            Some(raw) => match serde_json::from_str::<Key<'a>>(raw.get()) {
                Ok(Key(name)) => name,
                Err(_) => return Err(Invalid::Shape("`model` must be a string")),
            },
            None => return Err(Invalid::Shape("you must provide a `model` parameter")),
        };
        if !last("messages").is_some_and(|raw| raw.get().starts_with('[')) {
            return Err(Invalid::Shape("`messages` must be an array"));
        }
        let stream = last("stream")
            .and_then(|raw| serde_json::from_str::<bool>(raw.get()).ok())
            .unwrap_or(false);
        let wants_json = last("response_format")
            .filter(|raw| raw.get().starts_with('{'))
            .and_then(|raw| serde_json::from_str::<ResponseFormat<'_>>(raw.get()).ok())
            .and_then(|format| format.kind)
            .is_some_and(|kind| kind == "json_object" || kind == "json_schema");
        Ok(Self {
            members,
            model,
            stream,
            wants_json,
        })
    }

    /// The body to send upstream: the same members, `model` set to `model`,
    /// without `stream` and `stream_options` when `drop_stream`.
    pub fn rewrite(&self, model: &str, drop_stream: bool) -> Vec<u8> {
        let size = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4);
        let mut out = Vec::with_capacity(size.sum::<usize>() + model.len() + 2);
        out.push(b'{');
        for (i, (key, raw)) in self.members.iter().enumerate() {
            let superseded = self.members[i + 1..].iter().any(|(later, _)| later == key);
            let dropped = drop_stream && (key == "stream" || key == "stream_options");
            if superseded || dropped {
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            write_json_str(&mut out, key);
            out.push(b':');
            if key == "model" {
                write_json_str(&mut out, model);
            } else {
                out.extend_from_slice(raw.get().as_bytes());
            }
        }
        out.push(b'}');
        out
    }
}

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// The top-level members of an object, in order.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(key)) = map.next_key()? {
                    members.push((key, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A string, borrowed from the body unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[derive(serde::Deserialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn rewritten(body: &str, model: &str, drop_stream: bool) -> Value {
        let parsed = ChatBody::parse(body.as_bytes()).unwrap();
        serde_json::from_slice(&parsed.rewrite(model, drop_stream)).unwrap()
    }

    #[test]
    fn reads_what_the_proxy_needs_and_keeps_the_rest() {
        let body = r#" {"model":"smart","messages":[{"role":"user","content":"h\"i \u00e9"}],
            "stream":true,"stream_options":{"include_usage":true},"temperature":0.5,
            "response_format":{"type":"json_object"},"x\u0041":[1,{"a":null}]} "#;
        let parsed = ChatBody::parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.model, "smart");
        assert!(parsed.stream && parsed.wants_json);
        let mut expected: Value = serde_json::from_str(body).unwrap();
        expected["model"] = json!("gpt-4o \"quoted\"");
        assert_eq!(rewritten(body, "gpt-4o \"quoted\"", false), expected);
        let object = expected.as_object_mut().unwrap();
        object.remove("stream");
        object.remove("stream_options");
        assert_eq!(rewritten(body, "gpt-4o \"quoted\"", true), expected);
    }

    #[test]
    fn the_last_duplicate_counts_and_is_sent_once() {
        let body = r#"{"model":1,"messages":[],"model":"m","stream":true,"stream":"yes"}"#;
        let parsed = ChatBody::parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.model, "m");
        assert!(!parsed.stream, "a non-boolean stream is not a stream");
        let out = String::from_utf8(parsed.rewrite("x", false)).unwrap();
        assert_eq!(out, r#"{"messages":[],"model":"x","stream":"yes"}"#);
    }

    #[test]
    fn bad_bodies_say_why() {
        let shape = |body: &str| ChatBody::parse(body.as_bytes()).unwrap_err();
        assert!(matches!(shape(""), Invalid::Json(_)));
        assert!(matches!(shape("{\"model\":"), Invalid::Json(_)));
        assert!(matches!(shape("{} trailing"), Invalid::Json(_)));
        assert!(matches!(shape("[1,"), Invalid::Json(_)));
        assert_eq!(
            shape("[1]"),
            Invalid::Shape("the request body must be a JSON object")
        );
        assert_eq!(
            shape(r#"{"messages":[]}"#),
            Invalid::Shape("you must provide a `model` parameter")
        );
        assert_eq!(
            shape(r#"{"model":["m"],"messages":[]}"#),
            Invalid::Shape("`model` must be a string")
        );
        assert_eq!(
            shape(r#"{"model":"m","messages":"hi"}"#),
            Invalid::Shape("`messages` must be an array")
        );
    }

    #[test]
    fn response_format_must_ask_for_json() {
        for (format, wants) in [
            (r#"{"type":"json_object"}"#, true),
            (r#"{"type":"json_schema","json_schema":{}}"#, true),
            (r#"{"type":"text"}"#, false),
            (r#"["json_object"]"#, false),
            ("null", false),
        ] {
            let body = format!(r#"{{"model":"m","messages":[],"response_format":{format}}}"#);
            assert_eq!(
                ChatBody::parse(body.as_bytes()).unwrap().wants_json,
                wants,
                "{format}"
            );
        }
    }
}
