//! The provider-neutral chat request and answer.

use serde::{Deserialize, Serialize};

use super::content::Content;
use super::tools::{Tool, ToolCall, ToolChoice};
use crate::classify::{ClassifyResponse, FailureKind, Outcome};
use crate::fallback::{Degraded, MarkDegraded};

/// One chat completion request, in terms every provider understands.
///
/// The same value can be sent to [`OpenAiClient`](super::OpenAiClient) and to
/// [`AnthropicClient`](super::AnthropicClient); each translates it to its wire
/// format. Leave [`model`](Self::model) as `None` to let each client use its own
/// default model: that is what makes one request fit every tier of a fallback chain.
///
/// ```
/// use tower_llm_resilience::client::{ChatRequest, Message, ResponseFormat};
///
/// let request = ChatRequest::new(vec![
///     Message::system("Answer in JSON."),
///     Message::user("Name three primary colours."),
/// ])
/// .max_tokens(256)
/// .temperature(0.2)
/// .response_format(ResponseFormat::JsonObject);
/// assert_eq!(request.messages.len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatRequest {
    /// The model to ask; `None` uses the client's default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation so far. System messages may appear anywhere; providers with
    /// a separate system prompt (Anthropic) receive them joined, in order.
    pub messages: Vec<Message>,
    /// The most tokens the answer may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Sequences that end the answer when generated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Ask for JSON output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Stream the answer on the wire. The non-streaming services still answer with
    /// one [`ChatResponse`], assembled from the stream; use
    /// [`Streaming`](super::Streaming) to receive the deltas as they come.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// Whether and which tool the model must call; `None` leaves it to the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools in one answer; `None` leaves it
    /// to the provider (both allow it). Anthropic receives `false` as
    /// `disable_parallel_tool_use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// HTTP headers for this call only (a W3C `traceparent`, an idempotency
    /// key...), sent after the client's own: one of the same name replaces the
    /// client's. Not part of the serialized request. Mark a secret value
    /// sensitive (`HeaderValue::set_sensitive`) to keep it out of `Debug`.
    #[serde(skip)]
    pub headers: http::HeaderMap,
}

impl ChatRequest {
    /// A request with these messages and every option unset.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// Send this header with this call (see [`headers`](Self::headers)).
    #[must_use]
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Ask this model instead of the client's default.
    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Limit the answer's length in tokens.
    #[must_use]
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Set the sampling temperature.
    #[must_use]
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Add a stop sequence.
    #[must_use]
    pub fn stop(mut self, sequence: impl Into<String>) -> Self {
        self.stop.push(sequence.into());
        self
    }

    /// Ask for JSON output.
    #[must_use]
    pub fn response_format(mut self, format: ResponseFormat) -> Self {
        self.response_format = Some(format);
        self
    }

    /// Stream the answer on the wire.
    #[must_use]
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Offer the model a tool.
    #[must_use]
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// Say whether and which tool the model must call.
    #[must_use]
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// Allow or forbid several tool calls in one answer.
    #[must_use]
    pub fn parallel_tool_calls(mut self, parallel: bool) -> Self {
        self.parallel_tool_calls = Some(parallel);
        self
    }
}

/// Who wrote a [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Instructions for the model (OpenAI's `developer` messages too).
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call (OpenAI `tool` messages, Anthropic
    /// `tool_result` blocks in a user turn).
    Tool,
}

impl Role {
    /// The role's name on the wire (`system`, `user`, `assistant`, `tool`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a conversation: [`Content`] (text, or text and images) with a
/// [`Role`]; an assistant message may carry tool calls, a tool message answers one.
///
/// ```
/// use tower_llm_resilience::client::{Message, ToolCall};
///
/// let history = vec![
///     Message::user("What's the weather in Paris?"),
///     Message::assistant_tool_calls("", vec![ToolCall::new("call_1", "get_weather", r#"{"city":"Paris"}"#)]),
///     Message::tool_result("call_1", r#"{"celsius":21}"#),
/// ];
/// assert_eq!(history[2].tool_call_id.as_deref(), Some("call_1"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: Content,
    /// The tools an assistant message calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with this role and content (text, or parts).
    pub fn new(role: Role, content: impl Into<Content>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// An assistant message calling tools, with text (possibly empty) before the calls.
    pub fn assistant_tool_calls(content: impl Into<Content>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::new(Role::Assistant, content)
        }
    }

    /// The result of the tool call `tool_call_id`.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<Content>) -> Self {
        Self {
            tool_call_id: Some(tool_call_id.into()),
            ..Self::new(Role::Tool, content)
        }
    }

    /// A system message.
    pub fn system(content: impl Into<Content>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message: text, or parts (text and images).
    pub fn user(content: impl Into<Content>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<Content>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// The shape of output to ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any single JSON object.
    JsonObject,
    /// JSON matching a JSON Schema.
    JsonSchema {
        /// A name for the schema (OpenAI requires one).
        name: String,
        /// The JSON Schema.
        schema: serde_json::Value,
        /// Ask the provider to enforce the schema strictly, where it can.
        #[serde(default)]
        strict: bool,
    },
}

/// Why the model stopped writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FinishReason {
    /// A natural end or a stop sequence (OpenAI `stop`, Anthropic `end_turn`,
    /// `stop_sequence`).
    Stop,
    /// The token limit was reached (OpenAI `length`, Anthropic `max_tokens`).
    Length,
    /// The provider withheld or cut the answer on content policy grounds (OpenAI
    /// `content_filter`, Anthropic `refusal`).
    ContentFilter,
    /// The model wants to call tools (OpenAI `tool_calls`, Anthropic `tool_use`).
    ToolCalls,
    /// A reason this crate does not know.
    Other,
}

impl FinishReason {
    /// Map an OpenAI `finish_reason`.
    pub fn from_openai(reason: &str) -> Self {
        match reason {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "content_filter" => FinishReason::ContentFilter,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            _ => FinishReason::Other,
        }
    }

    /// Map an Anthropic `stop_reason`.
    pub fn from_anthropic(reason: &str) -> Self {
        match reason {
            "end_turn" | "stop_sequence" => FinishReason::Stop,
            "max_tokens" => FinishReason::Length,
            "refusal" => FinishReason::ContentFilter,
            "tool_use" => FinishReason::ToolCalls,
            _ => FinishReason::Other,
        }
    }
}

/// Tokens used by one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt (OpenAI `prompt_tokens`, Anthropic `input_tokens`).
    pub input_tokens: u32,
    /// Tokens of the answer (OpenAI `completion_tokens`, Anthropic `output_tokens`).
    pub output_tokens: u32,
}

impl Usage {
    /// Input and output tokens together.
    pub const fn total_tokens(&self) -> u32 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// A complete answer, in terms every provider understands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatResponse {
    /// The provider's id for this answer, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The provider that answered, as named by the client
    /// (`openai`, `anthropic`, or the name given to its builder).
    pub provider: String,
    /// The model that answered, as the provider reported it.
    pub model: String,
    /// The answer's text.
    pub content: String,
    /// The tools the model calls, whole (assembled from a stream's fragments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped, if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Tokens used, if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Set by a [`FallbackLayer`](crate::fallback::FallbackLayer) when the answer
    /// did not come from the primary tier: which tier answered, and why the ones
    /// before it failed. Read it with [`MarkDegraded::degraded`] too. Not part of
    /// the serialized answer.
    #[serde(skip)]
    pub degraded: Option<Degraded>,
}

impl ChatResponse {
    /// An answer with this text, from `provider` and `model`; for templates, tests
    /// and fallbacks of your own.
    pub fn new(
        provider: impl Into<String>,
        model: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        Self {
            provider: provider.into(),
            model: model.into(),
            content: content.into(),
            finish_reason: Some(FinishReason::Stop),
            ..Self::default()
        }
    }

    /// The answer as the assistant message to append to the conversation: its
    /// text and tool calls.
    pub fn message(&self) -> Message {
        Message::assistant_tool_calls(self.content.as_str(), self.tool_calls.clone())
    }
}

/// A fallback marks a degraded answer in its [`degraded`](ChatResponse::degraded)
/// field, so the client's answers need no wrapper in a fallback chain.
impl MarkDegraded for ChatResponse {
    fn mark_degraded(&mut self, marker: Degraded) {
        self.degraded = Some(marker);
    }

    fn degraded(&self) -> Option<&Degraded> {
        self.degraded.as_ref()
    }
}

/// An answer is a success, except one the provider cut for content policy
/// ([`FinishReason::ContentFilter`]), which is [`FailureKind::ContentFiltered`]: a
/// different provider may answer the same prompt, so a fallback layer using the
/// default classifier moves on.
impl ClassifyResponse for ChatResponse {
    fn classify_response(&self) -> Outcome {
        match self.finish_reason {
            Some(FinishReason::ContentFilter) => Outcome::Failure(FailureKind::ContentFiltered),
            _ => Outcome::Success,
        }
    }
}
