//! Translating whole requests between the neutral types and the providers' JSON.

use std::fmt;

use serde_json::Value;

use super::types::ChatRequest;

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

/// Reading and writing the providers' request JSON. The clients use the same
/// translation; these are for proxies and gateways that receive one format and
/// call the other (the `llm-proxy` example's Anthropic tiers read OpenAI requests
/// with [`from_openai_json`](Self::from_openai_json)).
impl ChatRequest {
    /// Read an OpenAI chat completion request body: string or array contents
    /// (`text`, `image_url` parts; `data:` URLs become inline images),
    /// `developer` messages as system messages, assistant `tool_calls`, `tool`
    /// messages, `tools`, `tool_choice`, `parallel_tool_calls`, `stop` as a string
    /// or list, `max_completion_tokens` over `max_tokens`, `response_format`.
    /// Members that do not change the answer's meaning (`user`, `stream_options`,
    /// `seed`...) are ignored; ones that would (`n` above 1, the deprecated
    /// `functions`, audio or file parts) are an error naming them. `stream` is left
    /// for the caller to set.
    pub fn from_openai_json(body: &Value) -> Result<Self, TranslateError> {
        super::openai::request::from_json(body)
    }

    /// This request as an OpenAI chat completion body (`model` only if set).
    pub fn to_openai_json(&self) -> Value {
        super::openai::request::to_json(self, self.model.as_deref(), self.stream, false)
    }

    /// Read an Anthropic Messages request body: the `system` prompt, text,
    /// image, `tool_use` and `tool_result` blocks (tool results become
    /// [`Role::Tool`](super::Role::Tool) messages), `tools`, `tool_choice` and
    /// `disable_parallel_tool_use`, `stop_sequences`.
    pub fn from_anthropic_json(body: &Value) -> Result<Self, TranslateError> {
        super::anthropic::request::from_json(body)
    }

    /// This request as an Anthropic Messages body, with `max_tokens` when the
    /// request sets none. Fails, naming the field, on what the Messages API
    /// cannot express: tool call arguments that are not a JSON object, images
    /// in system or assistant messages, a tool message without its call's id.
    pub fn to_anthropic_json(&self, default_max_tokens: u32) -> Result<Value, TranslateError> {
        let max_tokens = self.max_tokens.unwrap_or(default_max_tokens);
        super::anthropic::request::to_json(self, self.model.as_deref(), max_tokens, self.stream)
    }
}

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
