//! Snapshots bounded in depth and size, with secrets redacted at any size.
//!
//! A snapshot is stored inside a record and read back by every store, so it must
//! stay readable by a JSON parser with a recursion limit (serde_json's is 128):
//! values nested deeper than [`MAX_DEPTH`] are replaced by a marker. Its size is
//! bounded too: long strings, arrays and objects are cut to the byte budget, and
//! every cut leaves a marker saying how much was cut. Redaction runs on the whole
//! value before anything is cut, so a secret is never kept because its body was
//! large; a body that is not JSON is redacted as text (`"name": "value"` pairs with
//! a secret-looking name).

use serde_json::{Map, Value};

/// What stands in for a removed secret.
pub(super) const REDACTED: &str = "[redacted]";

/// A name (query parameter, JSON key) that looks like it holds a secret.
pub(super) fn is_sensitive_name(name: &str) -> bool {
    const WORDS: [&str; 7] = [
        "key",
        "token",
        "secret",
        "password",
        "authorization",
        "signature",
        "credential",
    ];
    let lower = name.to_ascii_lowercase();
    lower == "sig" || lower == "code" || WORDS.iter().any(|w| lower.contains(w))
}

/// Values nested deeper than this (counted from the snapshot's body) become a
/// marker. Far below serde_json's recursion limit of 128, so that the record
/// around the snapshot still parses.
pub(crate) const MAX_DEPTH: usize = 32;

/// The marker of a value nested too deep.
fn too_deep() -> Value {
    Value::String(format!("[cut: nested deeper than {MAX_DEPTH} levels]"))
}

/// The snapshot of a body: JSON (redacted, bounded) when it parses, else text
/// (redacted, cut at `max_bytes`).
pub(super) fn snapshot_body(body: &[u8], max_bytes: usize) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut json) => {
            redact_json(&mut json);
            bound(json, max_bytes)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let redacted = redact_text(&text);
            Value::String(cut_str(&redacted, max_bytes))
        }
    }
}

/// Replaces secret-looking fields (strings, objects, arrays) with `[redacted]`,
/// at any depth (iteratively: no recursion on client-controlled nesting).
pub(super) fn redact_json(value: &mut Value) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (name, value) in map.iter_mut() {
                    if is_sensitive_name(name) && !value.is_number() && !value.is_boolean() {
                        *value = Value::String(REDACTED.into());
                    } else {
                        stack.push(value);
                    }
                }
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
}

/// `value` cut to about `max_bytes` of JSON and [`MAX_DEPTH`] levels.
pub(super) fn bound(value: Value, max_bytes: usize) -> Value {
    let mut budget = max_bytes;
    bounded(value, 0, &mut budget)
}

fn size(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// The room a cut marker needs, so a cut container stays near its budget.
const MARKER: usize = 48;

fn bounded(value: Value, depth: usize, budget: &mut usize) -> Value {
    if depth >= MAX_DEPTH && matches!(value, Value::Array(_) | Value::Object(_)) {
        let marker = too_deep();
        *budget = budget.saturating_sub(size(&marker));
        return marker;
    }
    let whole = size(&value);
    if whole <= *budget {
        // Shallow enough already? Only containers can hide deeper levels.
        if depth + container_depth(&value, MAX_DEPTH - depth) <= MAX_DEPTH {
            *budget -= whole;
            return value;
        }
    }
    match value {
        Value::String(text) => {
            // At most half of what is left: the fields after it get room too.
            let room = budget.saturating_sub(MARKER) / 2;
            let out = cut_str(&text, room);
            *budget = budget.saturating_sub(out.len() + 2);
            Value::String(out)
        }
        Value::Array(items) => {
            let total = items.len();
            let mut out = Vec::new();
            for item in items {
                if *budget <= MARKER {
                    break;
                }
                // The comma.
                *budget -= 1;
                out.push(bounded(item, depth + 1, budget));
            }
            if out.len() < total {
                out.push(Value::String(format!(
                    "[cut: {} more items]",
                    total - out.len()
                )));
            }
            Value::Array(out)
        }
        Value::Object(map) => {
            let total = map.len();
            let mut out = Map::new();
            for (name, item) in map {
                if *budget <= MARKER + name.len() {
                    break;
                }
                *budget -= name.len() + 4;
                out.insert(name, bounded(item, depth + 1, budget));
            }
            if out.len() < total {
                out.insert(
                    "[cut]".into(),
                    Value::String(format!("{} more fields", total - out.len())),
                );
            }
            Value::Object(out)
        }
        scalar => {
            *budget = budget.saturating_sub(whole);
            scalar
        }
    }
}

/// How deep `value` nests, counting up to `limit + 1` (iteratively).
fn container_depth(value: &Value, limit: usize) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        if deepest > limit {
            return deepest;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

/// `text` cut at a character boundary within `max` bytes, with a marker of the cut.
pub(super) fn cut_str(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [cut: {} more bytes]", &text[..end], text.len() - end)
}

/// Text that is not JSON (too deep, cut, or malformed) still has its
/// `"secret-name": "value"` pairs redacted.
pub(super) fn redact_text(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    // The last string literal and where it ended, if only blanks and a colon
    // followed it so far.
    let mut last_name: Option<(usize, usize)> = None;
    let mut after_colon = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                let end = string_end(bytes, i + 1);
                if after_colon {
                    if let Some((ns, ne)) = last_name {
                        if is_sensitive_name(&text[ns + 1..ne - 1]) {
                            out.push_str(&text[copied..start]);
                            out.push('"');
                            out.push_str(REDACTED);
                            out.push('"');
                            copied = end;
                        }
                    }
                    last_name = None;
                    after_colon = false;
                } else {
                    last_name = Some((start, end));
                }
                i = end;
                continue;
            }
            b':' if last_name.is_some() => after_colon = true,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => {
                last_name = None;
                after_colon = false;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// The index just past the closing quote of a string literal whose content starts
/// at `from` (or the end of the text when it never closes).
fn string_end(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn deep_values_are_cut_and_the_result_parses_back() {
        let body = format!(r#"{{"model":"m","messages":{}}}"#, nested(126));
        let snap = snapshot_body(body.as_bytes(), 1 << 20);
        assert_eq!(snap["model"], "m");
        // Wrapped three more levels deep, as a record holds it.
        let record = serde_json::json!({"request": {"body": snap}});
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains("nested deeper than"), "{text}");
        serde_json::from_str::<Value>(&text).expect("the record parses back");
    }

    #[test]
    fn bodies_too_deep_to_parse_are_text_and_still_redacted() {
        let body = format!(r#"{{"api_key": "sk-deep", "x": {}}}"#, nested(10_000));
        let snap = snapshot_body(body.as_bytes(), 256);
        let text = snap.as_str().unwrap();
        assert!(
            !text.contains("sk-deep") && text.contains(REDACTED),
            "{text}"
        );
        assert!(text.contains("[cut: "), "{text}");
        assert!(text.len() < 400);
    }

    #[test]
    fn large_json_bodies_are_redacted_then_cut_with_markers() {
        let filler = "x".repeat(200_000);
        let body = format!(
            r#"{{"messages":[{{"content":"{filler}"}}],"api_key":"sk-big","items":[{}]}}"#,
            vec!["1"; 50_000].join(",")
        );
        let snap = snapshot_body(body.as_bytes(), 4096);
        let text = snap.to_string();
        assert!(!text.contains("sk-big"), "secret kept");
        assert!(text.contains("more items]"), "array cut is marked: {text}");
        assert!(text.contains("more fields"), "object cut is marked");
        assert!(text.len() < 4096 + 512, "{}", text.len());
        assert_eq!(snap["api_key"], REDACTED);
        let long = format!(r#"{{"messages":[{{"content":"{filler}"}}]}}"#);
        let snap = snapshot_body(long.as_bytes(), 4096);
        assert!(
            snap.to_string().contains("more bytes]"),
            "string cut is marked"
        );
    }

    #[test]
    fn text_redaction_leaves_other_pairs() {
        let text = r#"{"token": "t1", "model": "m", "password" : "p\"w", "n": 1"#;
        let out = redact_text(text);
        assert_eq!(
            out,
            r#"{"token": "[redacted]", "model": "m", "password" : "[redacted]", "n": 1"#
        );
        assert_eq!(cut_str("héllo", 2), "h... [cut: 5 more bytes]");
    }
}
