//! A small tool-using agent: it offers the model a `get_weather` tool, runs the
//! calls the model makes, sends the results back, and prints the final answer;
//! through a circuit breaker per provider and a fallback from an
//! OpenAI-compatible tier to Anthropic, with every tool call checked against the
//! tool's schema (a bad call is asked of the next tier).
//!
//! Against local demo servers (started in this process): the OpenAI-compatible
//! one calls the tool, then has an outage, so Claude answers the tool result in
//! the middle of the conversation, with the history translated.
//!
//! ```sh
//! cargo run --example agent_loop --features reqwest
//! ```
//!
//! Against real endpoints (HTTPS needs the `rustls` feature):
//!
//! ```sh
//! OPENAI_API_KEY=sk-... ANTHROPIC_API_KEY=sk-ant-... \
//!     cargo run --example agent_loop --features reqwest,rustls
//! ```
//!
//! `OPENAI_BASE_URL`, `OPENAI_MODEL`, `ANTHROPIC_BASE_URL` and `ANTHROPIC_MODEL`
//! are read too; demo servers are used when none of the URL/key variables is set.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;
use tower_llm_resilience::client::{
    AnthropicClient, ChatRequest, ChatResponse, Message, OpenAiClient, Tool, ToolCall,
    ToolCallCheck,
};
use tower_llm_resilience::fallback::{FallbackLayer, MarkDegraded};
use tower_llm_resilience::BoxError;

/// The most model calls of one task: an agent that keeps calling tools stops.
const MAX_STEPS: usize = 6;

/// The providers to use.
pub struct Endpoints {
    openai: OpenAiClient,
    anthropic: AnthropicClient,
}

/// What the agent did: one line per step, and the final answer.
pub struct Transcript {
    pub steps: Vec<String>,
    pub answer: ChatResponse,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let endpoints = match Endpoints::from_env()? {
        Some(endpoints) => endpoints,
        None => {
            println!("No OPENAI_*/ANTHROPIC_* variables: using local demo servers.\n");
            Endpoints::demo().await?
        }
    };
    let transcript = run(endpoints, "What's the weather in Paris right now?").await?;
    for step in &transcript.steps {
        println!("{step}");
    }
    println!("\nFinal answer: {}", transcript.answer.content.trim());
    Ok(())
}

/// The tool the agent offers.
fn weather_tool() -> Tool {
    Tool::new(
        "get_weather",
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city"]
        }),
    )
    .description("The current weather in a city.")
}

/// Runs the tool (a stand-in for a real weather service).
fn get_weather(call: &ToolCall) -> Value {
    let arguments = call.arguments_json().unwrap_or_default();
    let city = arguments["city"].as_str().unwrap_or("?");
    let fahrenheit = arguments["unit"] == "fahrenheit";
    let temperature = if fahrenheit { 70 } else { 21 };
    let unit = if fahrenheit { "F" } else { "C" };
    json!({"city": city, "temperature": temperature, "unit": unit, "sky": "sunny"})
}

/// The agent: ask, run the tools the model calls, send the results, until the
/// model answers in text (at most `MAX_STEPS` calls).
pub async fn run(endpoints: Endpoints, task: &str) -> Result<Transcript, BoxError> {
    let tools = vec![weather_tool()];
    let check = ToolCallCheck::new(tools.clone());
    let mut model = chain(endpoints, &check)?;
    let mut history = vec![
        Message::system("Use the tools to answer; be brief."),
        Message::user(task),
    ];
    let mut steps = Vec::new();
    for _ in 0..MAX_STEPS {
        let mut request = ChatRequest::new(history.clone()).max_tokens(300);
        request.tools.clone_from(&tools);
        let answer = model.ready().await?.call(request).await?;
        let who = match answer.degraded() {
            Some(degraded) => format!("{} (degraded: {degraded})", answer.provider),
            None => answer.provider.clone(),
        };
        if answer.tool_calls.is_empty() {
            steps.push(format!("{who}: answers"));
            return Ok(Transcript { steps, answer });
        }
        history.push(answer.message());
        for call in &answer.tool_calls {
            // The fallback's classifier already refused bad calls; a tier that
            // answered anyway (the last one) is checked here too.
            let result = match check.check(call) {
                Ok(()) => get_weather(call),
                Err(problem) => json!({"error": problem.to_string()}),
            };
            steps.push(format!(
                "{who}: calls {}({}) -> {result}",
                call.name, call.arguments
            ));
            history.push(Message::tool_result(&call.id, result.to_string()));
        }
    }
    Err(format!("no final answer after {MAX_STEPS} steps").into())
}

type Model = BoxCloneSyncService<ChatRequest, ChatResponse, BoxError>;

/// OpenAI-compatible, then Anthropic, each behind its own breaker; an answer with
/// a tool call that fails its schema falls back like a failure.
fn chain(endpoints: Endpoints, check: &ToolCallCheck) -> Result<Model, BoxError> {
    let breaker = |name: &str| {
        CircuitBreakerLayer::builder()
            .name(name)
            .consecutive_failures(2)
            .cooldown(Duration::from_secs(30))
            .build()
    };
    let claude = ServiceBuilder::new()
        .layer(breaker("anthropic")?)
        .service(endpoints.anthropic);
    let fallback = FallbackLayer::builder()
        .primary_name("openai")
        .alternate("anthropic", claude)
        .classifier(check.classifier())
        .build()?;
    let service = ServiceBuilder::new()
        .layer(fallback)
        .layer(breaker("openai")?)
        .service(endpoints.openai);
    Ok(BoxCloneSyncService::new(service))
}

impl Endpoints {
    /// Real endpoints from the environment, if any variable is set.
    pub fn from_env() -> Result<Option<Self>, BoxError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let configured = [
            "OPENAI_BASE_URL",
            "OPENAI_API_KEY",
            "ANTHROPIC_BASE_URL",
            "ANTHROPIC_API_KEY",
        ]
        .into_iter()
        .any(|name| var(name).is_some());
        if !configured {
            return Ok(None);
        }
        let mut openai = OpenAiClient::builder()
            .base_url(var("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()))
            .model(var("OPENAI_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()))
            .timeout(Duration::from_secs(60));
        if let Some(key) = var("OPENAI_API_KEY") {
            openai = openai.api_key(key);
        }
        let mut anthropic = AnthropicClient::builder()
            .base_url(
                var("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into()),
            )
            .model(var("ANTHROPIC_MODEL").unwrap_or_else(|| "claude-3-5-haiku-20241022".into()))
            .timeout(Duration::from_secs(60));
        if let Some(key) = var("ANTHROPIC_API_KEY") {
            anthropic = anthropic.api_key(key);
        }
        Ok(Some(Self {
            openai: openai.build()?,
            anthropic: anthropic.build()?,
        }))
    }

    /// Local demo servers: the OpenAI-compatible one calls the tool once, then
    /// is down; the Anthropic one calls the tool, and answers its result.
    pub async fn demo() -> Result<Self, BoxError> {
        let openai = OpenAiClient::builder()
            .base_url(format!("{}/v1", demo_server(openai_demo).await?))
            .model("gpt-4o-mini")
            .build()?;
        let anthropic = AnthropicClient::builder()
            .base_url(demo_server(anthropic_demo).await?)
            .model("claude-demo")
            .build()?;
        Ok(Self { openai, anthropic })
    }
}

/// The OpenAI-compatible demo: a tool call, then an outage.
fn openai_demo(call: usize, _request: &Value) -> (u16, Value) {
    if call > 0 {
        let error =
            json!({"error": {"message": "The server is overloaded.", "type": "server_error"}});
        return (503, error);
    }
    let answer = json!({
        "id": "chatcmpl-demo", "object": "chat.completion", "model": "gpt-4o-mini-demo",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"id": "call_demo_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
    });
    (200, answer)
}

/// The Anthropic demo: answers a tool result in words, else calls the tool.
fn anthropic_demo(_call: usize, request: &Value) -> (u16, Value) {
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    let result = last["content"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|block| block["type"] == "tool_result")
        .and_then(|block| block["content"].as_str())
        .and_then(|text| serde_json::from_str::<Value>(text).ok());
    let (content, stop) = match result {
        Some(weather) => (
            json!([{"type": "text", "text": format!(
                "It is {}°{} and {} in {}.",
                weather["temperature"], weather["unit"].as_str().unwrap_or(""),
                weather["sky"].as_str().unwrap_or(""), weather["city"].as_str().unwrap_or(""))}]),
            "end_turn",
        ),
        None => (
            json!([{"type": "tool_use", "id": "toolu_demo_1", "name": "get_weather",
                    "input": {"city": "Paris"}}]),
            "tool_use",
        ),
    };
    let answer = json!({
        "id": "msg_demo", "type": "message", "role": "assistant", "model": "claude-demo",
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": 60, "output_tokens": 15}
    });
    (200, answer)
}

/// Serve `answer(call_index, request_json)` as JSON on 127.0.0.1, on a random port.
async fn demo_server(answer: fn(usize, &Value) -> (u16, Value)) -> Result<String, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let calls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let calls = calls.clone();
                async move {
                    // The demo server reads at most 1 MiB of a request.
                    let body = Limited::new(request.into_body(), 1 << 20)
                        .collect()
                        .await
                        .map(|b| b.to_bytes());
                    let json = body
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or_default();
                    let (status, body) = answer(calls.fetch_add(1, Ordering::SeqCst), &json);
                    let mut response =
                        http::Response::new(Full::new(Bytes::from(body.to_string())));
                    *response.status_mut() =
                        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(url)
}
