//! Reading a chat completion request without building it: the proxy only needs
//! `model`, `messages`, `stream` and `response_format`, and forwards the rest
//! byte for byte.
//!
//! The body is scanned once into its top-level members (values left as raw
//! JSON, located in the body) and checked; [`TierBody`] then gives each tier the
//! client's bytes with only `model`'s value replaced. This is the proxy's hot
//! path: no JSON tree is built for the messages, and nothing is parsed again for
//! later tiers. Values are skipped without a depth limit (serde_json skips raw
//! values iteratively), so any body that is valid JSON can be rewritten; one that
//! is not is a 400 before any tier is called.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a body is not a chat completion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not JSON at all: serde_json's message.
    Json(String),
    /// JSON, but not a request: what is wrong with it.
    Shape(&'static str),
}

/// A chat completion request, as read from its body.
#[derive(Debug)]
pub(crate) struct ChatBody<'a> {
    body: &'a Bytes,
    members: Vec<Member<'a>>,
    /// The model the client asked for.
    pub(crate) model: Cow<'a, str>,
    /// `stream: true`.
    pub(crate) stream: bool,
    /// `response_format` asked for JSON (`json_object` or `json_schema`).
    pub(crate) wants_json: bool,
}

/// A top-level member: its key and where it lies in the body.
#[derive(Debug)]
struct Member<'a> {
    key: Cow<'a, str>,
    raw: &'a RawValue,
    /// Where its segment starts: after the previous member's value (so the
    /// segment holds the separating comma) or after the opening brace.
    segment_start: usize,
    /// Where its value starts and ends.
    value: Range<usize>,
}

impl<'a> ChatBody<'a> {
    /// Read `body`: a JSON object with a string `model` and an array `messages`.
    pub(crate) fn parse(source: &'a Bytes) -> Result<Self, Invalid> {
        let body: &'a [u8] = source;
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
        let Members(read) =
            serde_json::from_slice(body).map_err(|e| Invalid::Json(e.to_string()))?;
        let members = locate(body, read)?;
        // Duplicate keys: the last one counts, as in a parsed JSON value.
        let last = |name: &str| {
            members
                .iter()
                .rev()
                .find(|member| member.key == name)
                .map(|member| member.raw)
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
            body: source,
            members,
            model,
            stream,
            wants_json,
        })
    }

    /// The body every tier is sent, `model` aside: the client's bytes as they
    /// are, without the `stream` and `stream_options` members when `drop_stream`.
    pub(crate) fn tier_body(&self, drop_stream: bool) -> TierBody {
        let mut pieces = Vec::with_capacity(self.members.len() + 2);
        let mut copied_from = 0;
        let mut any_kept = false;
        for member in &self.members {
            let dropped = drop_stream && (member.key == "stream" || member.key == "stream_options");
            if dropped {
                pieces.push(Piece::Copy(copied_from..member.segment_start));
                copied_from = member.value.end;
                continue;
            }
            if !any_kept && copied_from == member.segment_start && member.segment_start > 0 {
                // The first member kept after dropped ones: its separating comma goes.
                let segment = &self.body[member.segment_start..member.value.start];
                if let Some(comma) = segment.iter().position(|&b| b == b',') {
                    copied_from = member.segment_start + comma + 1;
                }
            }
            any_kept = true;
            if member.key == "model" {
                pieces.push(Piece::Copy(copied_from..member.value.start));
                pieces.push(Piece::Model);
                copied_from = member.value.end;
            }
        }
        pieces.push(Piece::Copy(copied_from..self.body.len()));
        pieces.retain(|piece| !matches!(piece, Piece::Copy(range) if range.is_empty()));
        TierBody {
            body: self.body.clone(),
            pieces: pieces.into(),
        }
    }
}

/// Where each member's value lies in `body`: serde_json hands out raw values as
/// slices of the input, so their offsets are known without scanning again.
fn locate<'a>(
    body: &'a [u8],
    read: Vec<(Cow<'a, str>, &'a RawValue)>,
) -> Result<Vec<Member<'a>>, Invalid> {
    let base = body.as_ptr() as usize;
    let opening = body.iter().position(|&b| b == b'{').unwrap_or(0) + 1;
    let mut previous_end = opening;
    let mut members = Vec::with_capacity(read.len());
    for (key, raw) in read {
        let text = raw.get();
        let start = (text.as_ptr() as usize)
            .checked_sub(base)
            .filter(|&start| start >= previous_end && start + text.len() <= body.len())
            .ok_or(Invalid::Shape("the request body cannot be rewritten"))?;
        let value = start..start + text.len();
        members.push(Member {
            key,
            raw,
            segment_start: previous_end,
            value: value.clone(),
        });
        previous_end = value.end;
    }
    Ok(members)
}

/// A request body as every tier gets it: the client's bytes with only the value
/// of `model` replaced by the tier's model (and `stream` dropped for batches).
///
/// Made once per request and carried in its extensions, so the first tier and
/// every later one get their body from the same bytes by the same rule: nothing
/// is parsed again, and numbers, escapes, nesting and duplicate keys reach each
/// tier exactly as the client wrote them. A duplicated `model` has every copy
/// replaced, so the tier's model wins whichever copy the upstream reads.
#[derive(Clone, Debug)]
pub(crate) struct TierBody {
    body: Bytes,
    pieces: Arc<[Piece]>,
}

#[derive(Clone, Debug)]
enum Piece {
    /// These bytes of the client's body.
    Copy(Range<usize>),
    /// The tier's model, as a JSON string.
    Model,
}

impl TierBody {
    /// The body for a tier whose model is `model`.
    pub(crate) fn for_model(&self, model: &str) -> Bytes {
        let models = self
            .pieces
            .iter()
            .filter(|piece| matches!(piece, Piece::Model))
            .count();
        let mut out = Vec::with_capacity(self.body.len() + models * (model.len() + 8));
        for piece in self.pieces.iter() {
            match piece {
                Piece::Copy(range) => out.extend_from_slice(&self.body[range.clone()]),
                Piece::Model => write_json_str(&mut out, model),
            }
        }
        Bytes::from(out)
    }
}

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// The top-level members of an object, in order, values as raw slices of the input.
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

    fn parse(body: &str) -> Result<ChatBody<'static>, Invalid> {
        let bytes: &'static Bytes = Box::leak(Box::new(Bytes::from(body.to_owned())));
        ChatBody::parse(bytes)
    }

    fn rewritten_text(body: &str, model: &str, drop_stream: bool) -> String {
        let parsed = parse(body).unwrap();
        let out = parsed.tier_body(drop_stream).for_model(model);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn rewritten(body: &str, model: &str, drop_stream: bool) -> Value {
        serde_json::from_str(&rewritten_text(body, model, drop_stream)).unwrap()
    }

    #[test]
    fn reads_what_the_proxy_needs_and_keeps_the_rest() {
        let body = r#" {"model":"smart","messages":[{"role":"user","content":"h\"i \u00e9"}],
            "stream":true,"stream_options":{"include_usage":true},"temperature":0.5,
            "response_format":{"type":"json_object"},"x\u0041":[1,{"a":null}]} "#;
        let parsed = parse(body).unwrap();
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
    fn the_last_duplicate_counts_and_every_model_is_replaced() {
        let body = r#"{"model":1,"messages":[],"model":"m","stream":true,"stream":"yes"}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.model, "m");
        assert!(!parsed.stream, "a non-boolean stream is not a stream");
        assert_eq!(
            rewritten_text(body, "x", false),
            r#"{"model":"x","messages":[],"model":"x","stream":true,"stream":"yes"}"#
        );
        assert_eq!(
            rewritten_text(body, "x", true),
            r#"{"model":"x","messages":[],"model":"x"}"#
        );
    }

    #[test]
    fn only_the_model_changes_byte_for_byte() {
        let body =
            " \n{ \"seed\" : 12345678901234567890123 ,\"t\":1e400, \"mod\\u0065l\" :\t\"a\" ,
            \"messages\":[[[[{\"c\":\"\\ud83d\\ude00 \\u0000\"}]]]] } \n";
        assert_eq!(
            rewritten_text(body, "b/\"c\"", false),
            " \n{ \"seed\" : 12345678901234567890123 ,\"t\":1e400, \"mod\\u0065l\" :\t\"b/\\\"c\\\"\" ,
            \"messages\":[[[[{\"c\":\"\\ud83d\\ude00 \\u0000\"}]]]] } \n"
        );
        let deep = format!(
            r#"{{"messages":[],"model":"m","x":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let out = rewritten_text(&deep, "n", false);
        assert_eq!(out, deep.replace(r#""model":"m""#, r#""model":"n""#));
    }

    #[test]
    fn dropped_members_leave_valid_json() {
        for (body, expected) in [
            (
                r#"{ "stream":true , "model":"m","messages":[]}"#,
                r#"{ "model":"x","messages":[]}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{},"model":"m","messages":[]}"#,
                r#"{"model":"x","messages":[]}"#,
            ),
            (
                r#"{"model":"m","stream":true,"messages":[],"stream_options":{"a":","}}"#,
                r#"{"model":"x","messages":[]}"#,
            ),
        ] {
            assert_eq!(rewritten_text(body, "x", true), expected);
        }
    }

    #[test]
    fn bad_bodies_say_why() {
        let shape = |body: &str| parse(body).unwrap_err();
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
            assert_eq!(parse(&body).unwrap().wants_json, wants, "{format}");
        }
    }
}
