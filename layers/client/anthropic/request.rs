//! The Anthropic Messages request body, to and from the neutral request.

use serde_json::{json, Map, Value};

use crate::client::content::{Content, ContentPart, ImageSource};
use crate::client::fields::{array_at, float, join, string_at, TranslateError};
use crate::client::tools::{Tool, ToolCall, ToolChoice};
use crate::client::types::{ChatRequest, Message, ResponseFormat, Role};

/// The body for `request`: system messages become the `system` prompt (with the
/// JSON instruction when a JSON format was asked for), tool messages
/// `tool_result` blocks of a user turn.
pub(crate) fn to_json(
    request: &ChatRequest,
    model: Option<&str>,
    max_tokens: u32,
    stream: bool,
) -> Result<Value, TranslateError> {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    // Whether the last wire message is a user turn holding tool results: the
    // next tool result joins it, since the Messages API wants every result of
    // one assistant turn in one user turn.
    let mut open_results = false;
    for (i, message) in request.messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        match message.role {
            Role::System => {
                if message.content.has_images() {
                    return Err(TranslateError::new(
                        join(&path, "content"),
                        "Anthropic's system prompt takes text only, not images",
                    ));
                }
                system.push(message.content.text().into_owned());
                continue;
            }
            Role::Tool => {
                let Some(id) = &message.tool_call_id else {
                    return Err(TranslateError::new(
                        join(&path, "tool_call_id"),
                        "a tool result must name the call it answers",
                    ));
                };
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": id,
                    "content": content(&message.content),
                });
                if open_results {
                    push_block(&mut messages, block);
                } else {
                    messages.push(json!({"role": "user", "content": [block]}));
                    open_results = true;
                }
                continue;
            }
            // Its own turn even after tool results: the Messages API joins
            // consecutive user turns, and the content reads back as it was.
            Role::User => {
                messages.push(json!({"role": "user", "content": content(&message.content)}));
            }
            Role::Assistant => messages.push(assistant(message, &path)?),
        }
        open_results = false;
    }
    system.extend(request.response_format.as_ref().and_then(json_instruction));

    let mut body = Map::new();
    if let Some(model) = model {
        body.insert("model".into(), model.into());
    }
    body.insert("max_tokens".into(), max_tokens.into());
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), float(temperature));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    if !request.tools.is_empty() {
        let tools = request.tools.iter().map(tool).collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let serial = request.parallel_tool_calls == Some(false);
    let choice = match (&request.tool_choice, serial) {
        (Some(choice), _) => Some(tool_choice(choice, serial)),
        (None, true) if !request.tools.is_empty() => Some(tool_choice(&ToolChoice::Auto, true)),
        (None, _) => None,
    };
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(body))
}

/// Append `block` to the last wire message's content.
fn push_block(messages: &mut [Value], block: Value) {
    if let Some(Value::Array(content)) = messages.last_mut().and_then(|m| m.get_mut("content")) {
        content.push(block);
    }
}

fn assistant(message: &Message, path: &str) -> Result<Value, TranslateError> {
    if message.content.has_images() {
        return Err(TranslateError::new(
            join(path, "content"),
            "Anthropic's assistant turns take text only, not images",
        ));
    }
    if message.tool_calls.is_empty() {
        return Ok(json!({"role": "assistant", "content": content(&message.content)}));
    }
    let mut content: Vec<Value> = blocks(&message.content)
        .into_iter()
        .filter(|b| b["text"] != "")
        .collect();
    for (j, call) in message.tool_calls.iter().enumerate() {
        let input = if call.arguments.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str::<Value>(&call.arguments) {
                Ok(input @ Value::Object(_)) => input,
                _ => {
                    return Err(TranslateError::new(
                        format!("{path}.tool_calls[{j}].function.arguments"),
                        "is not a JSON object, which Anthropic's tool_use input must be",
                    ))
                }
            }
        };
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
    }
    Ok(json!({"role": "assistant", "content": content}))
}

/// A string for text, blocks for parts.
fn content(content: &Content) -> Value {
    match content {
        Content::Text(text) => Value::String(text.clone()),
        Content::Parts(_) => Value::Array(blocks(content)),
    }
}

fn blocks(content: &Content) -> Vec<Value> {
    match content {
        Content::Text(text) => vec![json!({"type": "text", "text": text})],
        Content::Parts(parts) => parts.iter().map(block).collect(),
    }
}

fn block(part: &ContentPart) -> Value {
    match part {
        ContentPart::Text { text } => json!({"type": "text", "text": text}),
        ContentPart::Image { source, .. } => {
            let source = match source {
                ImageSource::Url { url } => json!({"type": "url", "url": url}),
                ImageSource::Base64 { media_type, data } => {
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
            };
            json!({"type": "image", "source": source})
        }
    }
}

fn tool(tool: &Tool) -> Value {
    let mut out = json!({"name": tool.name, "input_schema": tool.parameters});
    if let Some(description) = &tool.description {
        out["description"] = description.as_str().into();
    }
    out
}

fn tool_choice(choice: &ToolChoice, serial: bool) -> Value {
    let mut out = match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => return json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
    };
    if serial {
        out["disable_parallel_tool_use"] = true.into();
    }
    out
}

fn json_instruction(format: &ResponseFormat) -> Option<String> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(
            "Respond with a single JSON object and nothing else: no prose, no code fences."
                .to_owned(),
        ),
        ResponseFormat::JsonSchema { schema, .. } => Some(format!(
            "Respond with a single JSON object that conforms to this JSON Schema, and \
             nothing else: no prose, no code fences.\n{schema}"
        )),
    }
}

/// The neutral request for an Anthropic body.
pub(crate) fn from_json(body: &Value) -> Result<ChatRequest, TranslateError> {
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(Message::system(text.as_str())),
        Some(Value::Array(_)) => {
            let content = read_blocks(array_at(body, "system", "")?, "system")?;
            messages.push(Message::system(content.text().into_owned()));
        }
        Some(_) => return Err(TranslateError::new("system", "must be a string or blocks")),
    }
    let Some(Value::Array(wire_messages)) = body.get("messages") else {
        return Err(TranslateError::new("messages", "must be an array"));
    };
    for (i, wire) in wire_messages.iter().enumerate() {
        read_message(wire, &format!("messages[{i}]"), &mut messages)?;
    }
    let mut request = ChatRequest::new(messages);
    request.model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    request.max_tokens = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .map(|max| u32::try_from(max).unwrap_or(u32::MAX));
    request.temperature = body
        .get("temperature")
        .and_then(Value::as_f64)
        .map(|t| t as f32);
    request.stop = array_at(body, "stop_sequences", "")?
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    request.stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    request.tools = array_at(body, "tools", "")?
        .iter()
        .enumerate()
        .map(|(i, wire)| {
            let path = format!("tools[{i}]");
            let mut tool = Tool::new(
                string_at(wire, "name", &path)?,
                wire.get("input_schema").cloned().unwrap_or(json!({})),
            );
            tool.description = wire
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(tool)
        })
        .collect::<Result<_, TranslateError>>()?;
    if let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) {
        request.tool_choice = Some(match string_at(choice, "type", "tool_choice")? {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "any" => ToolChoice::Required,
            "tool" => ToolChoice::Tool(string_at(choice, "name", "tool_choice")?.to_owned()),
            other => {
                return Err(TranslateError::new(
                    "tool_choice.type",
                    format!("`{other}` is not a tool choice"),
                ))
            }
        });
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            request.parallel_tool_calls = Some(false);
        }
    }
    Ok(request)
}

/// Read one wire message into `out`: a user turn's tool results become tool
/// messages, before a user message with the rest of its content (if any).
fn read_message(wire: &Value, path: &str, out: &mut Vec<Message>) -> Result<(), TranslateError> {
    let role = string_at(wire, "role", path)?;
    let content_path = join(path, "content");
    let blocks = match wire.get("content") {
        Some(Value::String(text)) => {
            let role = if role == "assistant" {
                Role::Assistant
            } else {
                Role::User
            };
            out.push(Message::new(role, text.as_str()));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(TranslateError::new(
                content_path,
                "must be a string or blocks",
            ))
        }
    };
    match role {
        "assistant" => {
            let mut text = String::new();
            let mut calls = Vec::new();
            let mut parts = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                let block_path = format!("{content_path}[{j}]");
                match string_at(block, "type", &block_path)? {
                    "tool_use" => calls.push(ToolCall::new(
                        string_at(block, "id", &block_path)?,
                        string_at(block, "name", &block_path)?,
                        block.get("input").unwrap_or(&json!({})).to_string(),
                    )),
                    "text" => {
                        let part = string_at(block, "text", &block_path)?;
                        text.push_str(part);
                        parts.push(ContentPart::text(part));
                    }
                    // Thinking and other blocks do not carry the conversation.
                    _ => {}
                }
            }
            out.push(if calls.is_empty() {
                Message::assistant(parts)
            } else {
                Message::assistant_tool_calls(text, calls)
            });
        }
        "user" => {
            let mut rest = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                let block_path = format!("{content_path}[{j}]");
                if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                    let id = string_at(block, "tool_use_id", &block_path)?;
                    let content = match block.get("content") {
                        None | Some(Value::Null) => Content::default(),
                        Some(Value::String(text)) => Content::Text(text.clone()),
                        Some(Value::Array(inner)) => {
                            read_blocks(inner, &join(&block_path, "content"))?
                        }
                        Some(_) => {
                            return Err(TranslateError::new(
                                join(&block_path, "content"),
                                "must be a string or blocks",
                            ))
                        }
                    };
                    out.push(Message::tool_result(id, content));
                } else {
                    rest.push(read_block(block, &block_path)?);
                }
            }
            let had_results = rest.len() < blocks.len();
            if !rest.is_empty() || !had_results {
                // A turn of results and more content: the rest is a user message.
                out.push(Message::user(Content::Parts(rest)));
            }
        }
        other => {
            return Err(TranslateError::new(
                join(path, "role"),
                format!("the role `{other}` is not a Messages API role"),
            ))
        }
    }
    Ok(())
}

fn read_blocks(blocks: &[Value], path: &str) -> Result<Content, TranslateError> {
    blocks
        .iter()
        .enumerate()
        .map(|(j, block)| read_block(block, &format!("{path}[{j}]")))
        .collect::<Result<Vec<_>, _>>()
        .map(Content::Parts)
}

fn read_block(block: &Value, path: &str) -> Result<ContentPart, TranslateError> {
    match string_at(block, "type", path)? {
        "text" => Ok(ContentPart::text(string_at(block, "text", path)?)),
        "image" => {
            let source_path = join(path, "source");
            let source = block
                .get("source")
                .ok_or_else(|| TranslateError::new(&source_path, "is missing"))?;
            let source = match string_at(source, "type", &source_path)? {
                "url" => ImageSource::Url {
                    url: string_at(source, "url", &source_path)?.to_owned(),
                },
                "base64" => ImageSource::Base64 {
                    media_type: string_at(source, "media_type", &source_path)?.to_owned(),
                    data: string_at(source, "data", &source_path)?.to_owned(),
                },
                other => {
                    return Err(TranslateError::new(
                        join(&source_path, "type"),
                        format!("image sources of type `{other}` are not translated"),
                    ))
                }
            };
            Ok(ContentPart::Image {
                source,
                detail: None,
            })
        }
        other => Err(TranslateError::new(
            join(path, "type"),
            format!("blocks of type `{other}` are not translated"),
        )),
    }
}
