//! Tools: definitions, the model's calls to them, and their assembly from deltas.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::ClientError;
use crate::classify::FailureKind;

/// The most tool calls one answer may hold, unless configured otherwise.
pub const DEFAULT_MAX_TOOL_CALLS: usize = 128;
/// The most bytes of arguments (all tool calls of one answer together), unless
/// configured otherwise.
pub const DEFAULT_MAX_TOOL_ARGUMENT_BYTES: usize = 1024 * 1024;

/// A tool the model may call: a function with a JSON Schema for its arguments.
///
/// ```
/// use serde_json::json;
/// use tower_llm_resilience::client::Tool;
///
/// let weather = Tool::new(
///     "get_weather",
///     json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
/// )
/// .description("The current weather in a city.");
/// assert_eq!(weather.name, "get_weather");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its arguments (an object schema).
    pub parameters: serde_json::Value,
    /// Ask for strict schema adherence (OpenAI `strict`; Anthropic ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl Tool {
    /// A tool named `name` taking arguments described by the JSON Schema `parameters`.
    pub fn new(name: impl Into<String>, parameters: serde_json::Value) -> Self {
        Self {
            name: name.into(),
            description: None,
            parameters,
            strict: None,
        }
    }

    /// Describe the tool for the model.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Ask for strict schema adherence where the provider offers it.
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = Some(strict);
        self
    }
}

/// Whether and which tool the model must call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolChoice {
    /// The model decides (OpenAI `auto`, Anthropic `auto`).
    Auto,
    /// No tool call (OpenAI `none`, Anthropic `none`).
    None,
    /// At least one tool call (OpenAI `required`, Anthropic `any`).
    Required,
    /// A call of this tool (OpenAI `{"type": "function", ...}`, Anthropic `tool`).
    Tool(String),
}

/// The model's call of a tool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; a tool result answers it by this id.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them: JSON text, normally an object,
    /// possibly invalid: check before use.
    pub arguments: String,
}

impl ToolCall {
    /// A call with this id, tool name and arguments (JSON text).
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// The arguments parsed as JSON.
    pub fn arguments_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(&self.arguments)
    }
}

/// A fragment of a streamed tool call (see [`ChatDelta::ToolCall`](super::ChatDelta::ToolCall)).
///
/// The first fragment of a call carries its `id` and `name`; the following ones
/// only more of its `arguments`. Fragments of several calls may interleave
/// (OpenAI's parallel calls); `index` says which call each belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolCallDelta {
    /// Which call of the answer (0, 1, …), in the order the calls began.
    pub index: u32,
    /// The call's id, on its first fragment.
    pub id: Option<String>,
    /// The tool's name, on its first fragment.
    pub name: Option<String>,
    /// More of the arguments' JSON text.
    pub arguments: String,
}

impl ToolCallDelta {
    /// A fragment of call `index`.
    pub fn new(index: u32, id: Option<String>, name: Option<String>, arguments: String) -> Self {
        Self {
            index,
            id,
            name,
            arguments,
        }
    }
}

/// Why tool call fragments could not be assembled.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolCallError {
    /// More calls than the limit.
    TooManyCalls {
        /// The limit.
        limit: usize,
    },
    /// The arguments of all calls together passed the limit.
    ArgumentsTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A call never received its tool name.
    MissingName {
        /// The call's index.
        index: u32,
    },
}

impl fmt::Display for ToolCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolCallError::TooManyCalls { limit } => {
                write!(f, "the answer has more than {limit} tool calls")
            }
            ToolCallError::ArgumentsTooLarge { limit } => {
                write!(f, "the answer's tool call arguments exceed {limit} bytes")
            }
            ToolCallError::MissingName { index } => {
                write!(f, "tool call {index} has no tool name")
            }
        }
    }
}

impl std::error::Error for ToolCallError {}

/// Assembles streamed [`ToolCallDelta`]s into whole [`ToolCall`]s, for readers
/// of a [`ChatStream`](super::ChatStream) who want calls, not fragments
/// ([`ChatStream::into_response`](super::ChatStream::into_response) uses one).
///
/// Bounded: at most `max_calls` calls and `max_argument_bytes` bytes of
/// arguments in all; past either, [`push`](Self::push) fails with a
/// [`ToolCallError`] and keeps nothing more.
///
/// ```
/// use tower_llm_resilience::client::{ToolCallAssembler, ToolCallDelta};
///
/// let mut calls = ToolCallAssembler::default();
/// calls.push(&ToolCallDelta::new(0, Some("call_1".into()), Some("get_weather".into()), "{\"ci".into()))?;
/// calls.push(&ToolCallDelta::new(0, None, None, "ty\":\"Paris\"}".into()))?;
/// let calls = calls.finish()?;
/// assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
/// # Ok::<(), tower_llm_resilience::client::ToolCallError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ToolCallAssembler {
    max_calls: usize,
    max_argument_bytes: usize,
    argument_bytes: usize,
    /// (index, call) in the order the calls began.
    calls: Vec<(u32, ToolCall)>,
}

impl Default for ToolCallAssembler {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TOOL_CALLS, DEFAULT_MAX_TOOL_ARGUMENT_BYTES)
    }
}

impl ToolCallAssembler {
    /// An assembler with these limits.
    pub fn new(max_calls: usize, max_argument_bytes: usize) -> Self {
        Self {
            max_calls,
            max_argument_bytes,
            argument_bytes: 0,
            calls: Vec::new(),
        }
    }

    /// Add a fragment.
    pub fn push(&mut self, delta: &ToolCallDelta) -> Result<(), ToolCallError> {
        let total = self.argument_bytes.saturating_add(delta.arguments.len());
        if total > self.max_argument_bytes {
            return Err(ToolCallError::ArgumentsTooLarge {
                limit: self.max_argument_bytes,
            });
        }
        let position = match self.calls.iter().position(|(i, _)| *i == delta.index) {
            Some(position) => position,
            None => {
                if self.calls.len() >= self.max_calls {
                    return Err(ToolCallError::TooManyCalls {
                        limit: self.max_calls,
                    });
                }
                self.calls.push((delta.index, ToolCall::default()));
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[position].1;
        if let Some(id) = delta.id.as_deref().filter(|id| !id.is_empty()) {
            id.clone_into(&mut call.id);
        }
        if let Some(name) = delta.name.as_deref().filter(|name| !name.is_empty()) {
            name.clone_into(&mut call.name);
        }
        call.arguments.push_str(&delta.arguments);
        self.argument_bytes = total;
        Ok(())
    }

    /// Whether no fragment arrived.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The whole calls, in the order they began. A call without an id gets
    /// `call_<index>` (some OpenAI-compatible servers send none); one without
    /// arguments gets `{}`.
    pub fn finish(self) -> Result<Vec<ToolCall>, ToolCallError> {
        self.calls
            .into_iter()
            .map(|(index, mut call)| {
                if call.name.is_empty() {
                    return Err(ToolCallError::MissingName { index });
                }
                if call.id.is_empty() {
                    call.id = format!("call_{index}");
                }
                if call.arguments.is_empty() {
                    call.arguments.push_str("{}");
                }
                Ok(call)
            })
            .collect()
    }
}

/// Check whole calls (a non-streamed answer's) against the default limits.
pub(crate) fn check_limits(calls: &[ToolCall], provider: &str) -> Result<(), ClientError> {
    let bytes: usize = calls.iter().map(|c| c.arguments.len()).sum();
    let exceeded = if calls.len() > DEFAULT_MAX_TOOL_CALLS {
        ToolCallError::TooManyCalls {
            limit: DEFAULT_MAX_TOOL_CALLS,
        }
    } else if bytes > DEFAULT_MAX_TOOL_ARGUMENT_BYTES {
        ToolCallError::ArgumentsTooLarge {
            limit: DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
        }
    } else {
        return Ok(());
    };
    Err(exceeded.into_client_error(provider))
}

impl ToolCallError {
    /// As the [`FailureKind::InvalidResponse`] of an answer from `provider`.
    pub(crate) fn into_client_error(self, provider: &str) -> ClientError {
        ClientError::new(FailureKind::InvalidResponse, provider, self.to_string()).with_source(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallDelta {
        ToolCallDelta::new(index, id.map(Into::into), name.map(Into::into), args.into())
    }

    #[test]
    fn interleaved_fragments_assemble_in_order() {
        let mut calls = ToolCallAssembler::default();
        calls
            .push(&fragment(0, Some("a"), Some("f"), "{\"x\":"))
            .unwrap();
        calls.push(&fragment(1, Some("b"), Some("g"), "")).unwrap();
        calls.push(&fragment(0, None, None, "1}")).unwrap();
        let calls = calls.finish().unwrap();
        assert_eq!(calls[0], ToolCall::new("a", "f", "{\"x\":1}"));
        assert_eq!(calls[1], ToolCall::new("b", "g", "{}"));
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut calls = ToolCallAssembler::new(1, 4);
        calls
            .push(&fragment(0, Some("a"), Some("f"), "{}"))
            .unwrap();
        assert_eq!(
            calls.push(&fragment(1, Some("b"), Some("f"), "")),
            Err(ToolCallError::TooManyCalls { limit: 1 })
        );
        assert_eq!(
            calls.push(&fragment(0, None, None, "123")),
            Err(ToolCallError::ArgumentsTooLarge { limit: 4 })
        );
        let mut nameless = ToolCallAssembler::default();
        nameless.push(&fragment(3, None, None, "{}")).unwrap();
        assert_eq!(
            nameless.finish(),
            Err(ToolCallError::MissingName { index: 3 })
        );
    }
}
