//! The OpenAI chat completion request body, to and from the neutral request.

use serde_json::{json, Map, Value};

use crate::client::content::{Content, ContentPart, ImageSource};
use crate::client::fields::{array_at, float, join, string_at, TranslateError};
use crate::client::tools::{Tool, ToolCall, ToolChoice};
use crate::client::types::{ChatRequest, Message, ResponseFormat, Role};

/// The body for `request`, asking `model` (if any).
pub(crate) fn to_json(
    request: &ChatRequest,
    model: Option<&str>,
    stream: bool,
    stream_usage: bool,
) -> Value {
    let mut body = Map::new();
    if let Some(model) = model {
        body.insert("model".into(), model.into());
    }
    let messages = request.messages.iter().map(message).collect();
    body.insert("messages".into(), Value::Array(messages));
    if let Some(max) = request.max_tokens {
        body.insert("max_tokens".into(), max.into());
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), float(temperature));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if let Some(format) = &request.response_format {
        body.insert("response_format".into(), response_format(format));
    }
    if !request.tools.is_empty() {
        let tools = request.tools.iter().map(tool).collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &request.tool_choice {
        body.insert("tool_choice".into(), tool_choice(choice));
    }
    if let Some(parallel) = request.parallel_tool_calls {
        body.insert("parallel_tool_calls".into(), parallel.into());
    }
    if stream {
        body.insert("stream".into(), true.into());
        if stream_usage {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
    }
    Value::Object(body)
}

fn message(message: &Message) -> Value {
    let mut out = Map::new();
    out.insert("role".into(), message.role.as_str().into());
    let content = match &message.content {
        // An assistant message that only calls tools has `content: null`.
        Content::Text(text) if text.is_empty() && !message.tool_calls.is_empty() => Value::Null,
        Content::Text(text) => Value::String(text.clone()),
        Content::Parts(parts) => Value::Array(parts.iter().map(part).collect()),
    };
    out.insert("content".into(), content);
    if !message.tool_calls.is_empty() {
        let calls = message.tool_calls.iter().map(tool_call).collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &message.tool_call_id {
        out.insert("tool_call_id".into(), id.as_str().into());
    }
    Value::Object(out)
}

fn part(part: &ContentPart) -> Value {
    match part {
        ContentPart::Text { text } => json!({"type": "text", "text": text}),
        ContentPart::Image { source, detail } => {
            let mut image = json!({"url": source.to_url()});
            if let Some(detail) = detail {
                image["detail"] = detail.as_str().into();
            }
            json!({"type": "image_url", "image_url": image})
        }
    }
}

fn tool_call(call: &ToolCall) -> Value {
    json!({
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    })
}

fn tool(tool: &Tool) -> Value {
    let mut function = json!({"name": tool.name, "parameters": tool.parameters});
    if let Some(description) = &tool.description {
        function["description"] = description.as_str().into();
    }
    if let Some(strict) = tool.strict {
        function["strict"] = strict.into();
    }
    json!({"type": "function", "function": function})
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => "auto".into(),
        ToolChoice::None => "none".into(),
        ToolChoice::Required => "required".into(),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

fn response_format(format: &ResponseFormat) -> Value {
    match format {
        ResponseFormat::Text => json!({ "type": "text" }),
        ResponseFormat::JsonObject => json!({ "type": "json_object" }),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => json!({
            "type": "json_schema",
            "json_schema": { "name": name, "schema": schema, "strict": strict },
        }),
    }
}

/// The neutral request for an OpenAI body.
pub(crate) fn from_json(body: &Value) -> Result<ChatRequest, TranslateError> {
    if !body.is_object() {
        return Err(TranslateError::new("", "the body must be a JSON object"));
    }
    for legacy in ["functions", "function_call"] {
        if body.get(legacy).is_some_and(|v| !v.is_null()) {
            return Err(TranslateError::new(
                legacy,
                "the deprecated functions API is not translated; use `tools`",
            ));
        }
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(TranslateError::new("n", "only one choice can be asked for"));
    }
    let Some(Value::Array(wire_messages)) = body.get("messages") else {
        return Err(TranslateError::new("messages", "must be an array"));
    };
    let messages = wire_messages
        .iter()
        .enumerate()
        .map(|(i, m)| read_message(m, &format!("messages[{i}]")))
        .collect::<Result<_, _>>()?;
    let mut request = ChatRequest::new(messages);
    request.model = optional(body, "model", Value::as_str)?.map(str::to_owned);
    let max_tokens = match optional(body, "max_completion_tokens", Value::as_u64)? {
        Some(max) => Some(max),
        None => optional(body, "max_tokens", Value::as_u64)?,
    };
    request.max_tokens = max_tokens.map(|max| u32::try_from(max).unwrap_or(u32::MAX));
    request.temperature = optional(body, "temperature", Value::as_f64)?.map(|t| t as f32);
    request.stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| TranslateError::new("stop", "must be a string or strings"))?,
        Some(_) => return Err(TranslateError::new("stop", "must be a string or strings")),
    };
    request.response_format = read_format(body.get("response_format"))?;
    request.tools = array_at(body, "tools", "")?
        .iter()
        .enumerate()
        .map(|(i, t)| read_tool(t, &format!("tools[{i}]")))
        .collect::<Result<_, _>>()?;
    request.tool_choice = read_tool_choice(body.get("tool_choice"))?;
    request.parallel_tool_calls = optional(body, "parallel_tool_calls", Value::as_bool)?;
    Ok(request)
}

/// `body[key]` read by `read`; absent or null is `None`, another type an error.
fn optional<'a, T>(
    body: &'a Value,
    key: &str,
    read: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>, TranslateError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => read(value)
            .map(Some)
            .ok_or_else(|| TranslateError::new(key, "has the wrong type")),
    }
}

fn read_message(wire: &Value, path: &str) -> Result<Message, TranslateError> {
    let role = match string_at(wire, "role", path)? {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(TranslateError::new(
                join(path, "role"),
                format!("the role `{other}` is not translated"),
            ))
        }
    };
    if wire.get("function_call").is_some_and(|v| !v.is_null()) {
        return Err(TranslateError::new(
            join(path, "function_call"),
            "the deprecated functions API is not translated; use `tool_calls`",
        ));
    }
    let content = read_content(wire.get("content"), &join(path, "content"))?;
    let mut message = Message::new(role, content);
    if role == Role::Assistant {
        message.tool_calls = array_at(wire, "tool_calls", path)?
            .iter()
            .enumerate()
            .map(|(i, call)| read_tool_call(call, &format!("{path}.tool_calls[{i}]")))
            .collect::<Result<_, _>>()?;
    }
    if role == Role::Tool {
        message.tool_call_id = Some(string_at(wire, "tool_call_id", path)?.to_owned());
    }
    Ok(message)
}

fn read_content(wire: Option<&Value>, path: &str) -> Result<Content, TranslateError> {
    match wire {
        None | Some(Value::Null) => Ok(Content::default()),
        Some(Value::String(text)) => Ok(Content::Text(text.clone())),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| read_part(p, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Content::Parts),
        Some(_) => Err(TranslateError::new(path, "must be a string or an array")),
    }
}

fn read_part(wire: &Value, path: &str) -> Result<ContentPart, TranslateError> {
    match string_at(wire, "type", path)? {
        "text" => Ok(ContentPart::text(string_at(wire, "text", path)?)),
        "image_url" => {
            let image_path = join(path, "image_url");
            let image = wire
                .get("image_url")
                .ok_or_else(|| TranslateError::new(&image_path, "is missing"))?;
            // Some clients send the URL as a bare string.
            let (url, detail) = match image {
                Value::String(url) => (url.as_str(), None),
                _ => (
                    string_at(image, "url", &image_path)?,
                    image.get("detail").and_then(Value::as_str),
                ),
            };
            Ok(ContentPart::Image {
                source: ImageSource::from_url(url),
                detail: detail.map(str::to_owned),
            })
        }
        other => Err(TranslateError::new(
            join(path, "type"),
            format!("content parts of type `{other}` are not translated"),
        )),
    }
}

fn read_tool_call(wire: &Value, path: &str) -> Result<ToolCall, TranslateError> {
    // `type` may be left out of a call (not of a tool): only `function` exists.
    let (function, function_path) = function_of(wire, path, "tool calls", true)?;
    Ok(ToolCall::new(
        string_at(wire, "id", path)?,
        string_at(function, "name", &function_path)?,
        string_at(function, "arguments", &function_path)?,
    ))
}

/// The `function` member of a tool or tool call whose `type` is `function`.
fn function_of<'a>(
    wire: &'a Value,
    path: &str,
    what: &str,
    type_optional: bool,
) -> Result<(&'a Value, String), TranslateError> {
    let kind = match wire.get("type") {
        None if type_optional => "function",
        _ => string_at(wire, "type", path)?,
    };
    if kind != "function" {
        return Err(TranslateError::new(
            join(path, "type"),
            format!("{what} of type `{kind}` are not translated"),
        ));
    }
    let function_path = join(path, "function");
    match wire.get("function") {
        Some(function) => Ok((function, function_path)),
        None => Err(TranslateError::new(function_path, "is missing")),
    }
}

fn read_tool(wire: &Value, path: &str) -> Result<Tool, TranslateError> {
    let (function, function_path) = function_of(wire, path, "tools", false)?;
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema) => schema.clone(),
    };
    let mut tool = Tool::new(string_at(function, "name", &function_path)?, parameters);
    tool.description = function
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    tool.strict = function.get("strict").and_then(Value::as_bool);
    Ok(tool)
}

fn read_tool_choice(wire: Option<&Value>) -> Result<Option<ToolChoice>, TranslateError> {
    let choice = match wire {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(TranslateError::new(
                    "tool_choice",
                    format!("`{other}` is not a tool choice"),
                ))
            }
        },
        Some(named) => {
            let name = named
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::new("tool_choice.function.name", "must be a string")
                })?;
            ToolChoice::Tool(name.to_owned())
        }
    };
    Ok(Some(choice))
}

fn read_format(wire: Option<&Value>) -> Result<Option<ResponseFormat>, TranslateError> {
    let Some(wire) = wire.filter(|w| !w.is_null()) else {
        return Ok(None);
    };
    match string_at(wire, "type", "response_format")? {
        "text" => Ok(None),
        "json_object" => Ok(Some(ResponseFormat::JsonObject)),
        "json_schema" => {
            let path = "response_format.json_schema";
            let schema = wire
                .get("json_schema")
                .ok_or_else(|| TranslateError::new(path, "is missing"))?;
            Ok(Some(ResponseFormat::JsonSchema {
                name: string_at(schema, "name", path)?.to_owned(),
                schema: schema
                    .get("schema")
                    .filter(|s| !s.is_null())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
                strict: schema
                    .get("strict")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }))
        }
        other => Err(TranslateError::new(
            "response_format.type",
            format!("`{other}` is not a response format"),
        )),
    }
}
