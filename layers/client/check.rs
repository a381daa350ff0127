//! Checking the model's tool calls against the tools it was offered.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::tools::{Tool, ToolCall};
use super::types::ChatResponse;
use crate::classify::{Classify, ClassifyError, ClassifyResponse, FailureKind, Outcome};

/// How deep a schema (and the arguments it describes) is followed.
const MAX_DEPTH: usize = 32;

/// Checks tool calls against the tools' JSON Schemas: the arguments must be a
/// JSON object, the tool must be one of those offered, and the arguments must
/// match its schema.
///
/// The schema check is deliberately small and covers what tool schemas use:
/// `type` (one or a list), `required`, `properties`, `items`, `enum` and
/// `additionalProperties: false`, nested up to 32 levels. Other keywords
/// (`pattern`, `minimum`, `oneOf`...) are not checked.
///
/// What to do with a bad call is the caller's choice:
///
/// - ask the next tier: [`classifier`](Self::classifier) makes such an answer a
///   [`FailureKind::InvalidResponse`] for a [`FallbackLayer`](crate::fallback::FallbackLayer)
///   (which falls back from it by default);
/// - ask a human: `ToolCallCheck` is an
///   [`EscalationPolicy`](crate::escalation::EscalationPolicy) for
///   [`ChatResponse`]s, to use with [`ChatAdapter`](super::ChatAdapter) in an
///   [`EscalationLayer`](crate::escalation::EscalationLayer).
///
/// ```
/// use serde_json::json;
/// use tower_llm_resilience::client::{Tool, ToolCall, ToolCallCheck};
///
/// let check = ToolCallCheck::new([Tool::new(
///     "get_weather",
///     json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
/// )]);
/// assert!(check.check(&ToolCall::new("c1", "get_weather", r#"{"city":"Paris"}"#)).is_ok());
/// let problem = check.check(&ToolCall::new("c2", "get_weather", r#"{"town":"Paris"}"#)).unwrap_err();
/// assert_eq!(problem.to_string(), "tool call `get_weather`: `city` is required");
/// ```
#[derive(Clone, Debug)]
pub struct ToolCallCheck {
    tools: Arc<[Tool]>,
}

/// Why a tool call failed its [`ToolCallCheck`]. Its text names the tool and the
/// schema's path, never the arguments' values, so it can go in logs and
/// escalation reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCallProblem {
    tool: String,
    problem: String,
}

impl ToolCallProblem {
    /// The tool the model called.
    pub fn tool(&self) -> &str {
        &self.tool
    }
}

impl fmt::Display for ToolCallProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tool call `{}`: {}", self.tool, self.problem)
    }
}

impl std::error::Error for ToolCallProblem {}

impl ToolCallCheck {
    /// A check against these tools.
    pub fn new(tools: impl IntoIterator<Item = Tool>) -> Self {
        Self {
            tools: tools.into_iter().collect(),
        }
    }

    /// Check one call.
    pub fn check(&self, call: &ToolCall) -> Result<(), ToolCallProblem> {
        let problem = |problem: String| ToolCallProblem {
            tool: call.name.clone(),
            problem,
        };
        let Some(tool) = self.tools.iter().find(|t| t.name == call.name) else {
            return Err(problem("the model called a tool it was not offered".into()));
        };
        let arguments: Value = serde_json::from_str(&call.arguments)
            .map_err(|_| problem("the arguments are not valid JSON".into()))?;
        if !arguments.is_object() {
            return Err(problem("the arguments are not a JSON object".into()));
        }
        matches(&tool.parameters, &arguments, "", 0).map_err(problem)
    }

    /// Check every call of an answer; the first problem.
    pub fn check_response(&self, response: &ChatResponse) -> Result<(), ToolCallProblem> {
        response
            .tool_calls
            .iter()
            .try_for_each(|call| self.check(call))
    }

    /// A classifier for a [`FallbackLayer`](crate::fallback::FallbackLayer): the
    /// default classification, except that an answer with a tool call failing
    /// this check is [`FailureKind::InvalidResponse`], so the next tier is asked.
    pub fn classifier(&self) -> ToolCallClassifier {
        ToolCallClassifier(self.clone())
    }
}

/// The classifier of [`ToolCallCheck::classifier`].
#[derive(Clone, Debug)]
pub struct ToolCallClassifier(ToolCallCheck);

impl<Err: ClassifyError> Classify<ChatResponse, Err> for ToolCallClassifier {
    fn classify(&self, result: &Result<ChatResponse, Err>) -> Outcome {
        match result {
            Ok(response) => match self.0.check_response(response) {
                Ok(()) => response.classify_response(),
                Err(problem) => {
                    tracing::debug!(provider = %response.provider, %problem, "invalid tool call");
                    Outcome::Failure(FailureKind::InvalidResponse)
                }
            },
            Err(error) => Outcome::Failure(error.classify_error()),
        }
    }
}

/// Whether `value` matches `schema`; else what is wrong, at `path`.
fn matches(schema: &Value, value: &Value, path: &str, depth: usize) -> Result<(), String> {
    let at = |path: &str| {
        if path.is_empty() {
            "the arguments".to_owned()
        } else {
            format!("`{path}`")
        }
    };
    if depth > MAX_DEPTH {
        return Err(format!("{} nest deeper than {MAX_DEPTH} levels", at(path)));
    }
    let Some(schema) = schema.as_object() else {
        // `true`, `{}` or a schema this check does not read: anything goes.
        return Ok(());
    };
    if let Some(kinds) = schema.get("type") {
        let allowed: Vec<&str> = match kinds {
            Value::String(kind) => vec![kind.as_str()],
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|kind| has_type(value, kind)) {
            return Err(format!("{} must be {}", at(path), allowed.join(" or ")));
        }
    }
    if let Some(Value::Array(choices)) = schema.get("enum") {
        if !choices.contains(value) {
            return Err(format!("{} is not one of the allowed values", at(path)));
        }
    }
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    if let Value::Object(members) = value {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !members.contains_key(required) {
                return Err(format!("`{}` is required", child(required)));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, member) in members {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => matches(property, member, &child(key), depth + 1)?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!(
                        "{} may have no properties but its schema's",
                        at(path)
                    ));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            matches(item_schema, item, &format!("{path}[{i}]"), depth + 1)?;
        }
    }
    Ok(())
}

fn has_type(value: &Value, kind: &str) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check() -> ToolCallCheck {
        ToolCallCheck::new([Tool::new(
            "book",
            json!({"type": "object", "additionalProperties": false,
                "required": ["city", "nights"],
                "properties": {
                    "city": {"type": "string"},
                    "nights": {"type": "integer"},
                    "room": {"enum": ["single", "double"]},
                    "guests": {"type": "array", "items": {"type": "object",
                        "required": ["name"], "properties": {"name": {"type": ["string", "null"]}}}}}}),
        )])
    }

    fn problem(arguments: &str) -> String {
        check()
            .check(&ToolCall::new("c", "book", arguments))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_matching_call_passes() {
        let call = ToolCall::new(
            "c",
            "book",
            r#"{"city":"Oslo","nights":2.0,"room":"double","guests":[{"name":null}]}"#,
        );
        assert_eq!(check().check(&call), Ok(()));
    }

    #[test]
    fn each_problem_names_the_field_not_the_value() {
        assert_eq!(
            problem("{\"city\":"),
            "tool call `book`: the arguments are not valid JSON"
        );
        assert_eq!(
            problem("[1]"),
            "tool call `book`: the arguments are not a JSON object"
        );
        assert_eq!(
            problem(r#"{"city":"Oslo"}"#),
            "tool call `book`: `nights` is required"
        );
        assert_eq!(
            problem(r#"{"city":7,"nights":1}"#),
            "tool call `book`: `city` must be string"
        );
        assert_eq!(
            problem(r#"{"city":"x","nights":1.5}"#),
            "tool call `book`: `nights` must be integer"
        );
        assert_eq!(
            problem(r#"{"city":"x","nights":1,"room":"suite"}"#),
            "tool call `book`: `room` is not one of the allowed values"
        );
        assert_eq!(
            problem(r#"{"city":"x","nights":1,"guests":[{}]}"#),
            "tool call `book`: `guests[0].name` is required"
        );
        assert_eq!(
            problem(r#"{"city":"x","nights":1,"secret":"hunter2"}"#),
            "tool call `book`: the arguments may have no properties but its schema's"
        );
        let unknown = check().check(&ToolCall::new("c", "rm", "{}")).unwrap_err();
        assert_eq!(unknown.tool(), "rm");
    }

    #[test]
    fn deep_schemas_are_bounded() {
        let mut schema = json!({"type": "object"});
        let mut value = json!({});
        for _ in 0..40 {
            schema = json!({"type": "object", "properties": {"a": schema}});
            value = json!({"a": value});
        }
        let check = ToolCallCheck::new([Tool::new("deep", schema)]);
        let error = check
            .check(&ToolCall::new("c", "deep", value.to_string()))
            .unwrap_err();
        assert!(error.to_string().contains("deeper than 32"), "{error}");
    }
}
