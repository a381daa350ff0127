//! Translating whole requests between the neutral types and the providers' JSON.

use serde_json::Value;

use super::fields::TranslateError;
use super::types::ChatRequest;

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
