//! The error of a translation, and reading JSON fields that it names.

use std::fmt;

use serde_json::Value;

/// A request that cannot be expressed in a wire format, or a wire request that
/// cannot be read: which field, and why.
///
/// ```
/// use serde_json::json;
/// use tower_llm_resilience::client::ChatRequest;
///
/// let body = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
/// let err = ChatRequest::from_openai_json(&body).unwrap_err();
/// assert_eq!(err.field(), "messages[0].content[0].type");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateError {
    field: String,
    reason: String,
}

impl TranslateError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field, as a path into the JSON (`messages[2].tool_calls[0].function.arguments`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Why it cannot be translated.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for TranslateError {}

/// `value[key]` as a string, or an error naming `path`.
pub(crate) fn string_at<'a>(
    value: &'a Value,
    key: &str,
    path: &str,
) -> Result<&'a str, TranslateError> {
    match value.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TranslateError::new(join(path, key), "must be a string")),
        None => Err(TranslateError::new(join(path, key), "is missing")),
    }
}

/// `value[key]` as an array (absent or null: empty), or an error naming `path`.
pub(crate) fn array_at<'a>(
    value: &'a Value,
    key: &str,
    path: &str,
) -> Result<&'a [Value], TranslateError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(TranslateError::new(join(path, key), "must be an array")),
    }
}

/// `path.key`, or `key` at the root.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// An `f32` as the JSON number of its shortest decimal form (`0.2`, not the
/// `0.20000000298023224` of a widening to `f64`), as a typed body would write it.
pub(crate) fn float(value: f32) -> Value {
    value
        .to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}
