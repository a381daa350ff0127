//! A resilient LLM client: a circuit breaker per provider, and a fallback from an
//! OpenAI-compatible server to Anthropic to a canned template.
//!
//! Against local demo servers (started in this process; the OpenAI-compatible one
//! is down, Anthropic answers twice and is then rate limited): the first answers
//! come from Anthropic, OpenAI's circuit opens, and the last answer is the template;
//! each degraded answer prints its marker (who answered, after which failures).
//!
//! ```sh
//! cargo run --example resilient_client --features reqwest
//! ```
//!
//! Against real endpoints (HTTPS needs the `rustls` feature):
//!
//! ```sh
//! OPENAI_API_KEY=sk-... ANTHROPIC_API_KEY=sk-ant-... \
//!     cargo run --example resilient_client --features reqwest,rustls
//! ```
//!
//! `OPENAI_BASE_URL` (default `https://api.openai.com/v1`, or any vLLM, Ollama,
//! llama.cpp, Azure deployment URL), `OPENAI_MODEL`, `ANTHROPIC_BASE_URL` and
//! `ANTHROPIC_MODEL` are read too. Demo servers are used when none of the four
//! URL/key variables is set.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, Handle};
use tower_llm_resilience::classify::classify_dyn_error;
use tower_llm_resilience::client::{
    AnthropicClient, ChatRequest, ChatResponse, Message, OpenAiClient,
};
use tower_llm_resilience::fallback::FallbackLayer;
use tower_llm_resilience::BoxError;

/// The last resort's answer, when no provider can answer.
const TEMPLATE: &str = "Our assistants are busy right now; please try again in a minute.";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let (openai, anthropic) = clients().await?;

    let (openai_breaker, openai_circuit) = breaker("openai")?;
    let (anthropic_breaker, anthropic_circuit) = breaker("anthropic")?;

    // The clients stack with the layers as they are: a `ChatResponse` carries the
    // degraded marker itself, and the plain Anthropic client's `ClientError` converts
    // into the breaker's `BoxError`.
    let anthropic_tier = ServiceBuilder::new()
        .layer(anthropic_breaker)
        .service(anthropic);
    let fallback = FallbackLayer::builder()
        .primary_name("openai")
        .alternate("anthropic", anthropic_tier)
        .final_responder("template", |_request: ChatRequest| {
            ChatResponse::new("template", "none", TEMPLATE)
        })
        .build()?;
    let mut client = ServiceBuilder::new()
        .layer(fallback)
        .layer(openai_breaker)
        .service(openai);

    for question in [
        "What is a circuit breaker?",
        "Why fall back to another provider?",
        "What if every provider is down?",
    ] {
        // No model in the request: each tier asks its client's default model.
        let request = ChatRequest::new(vec![
            Message::system("Answer in one sentence."),
            Message::user(question),
        ])
        .max_tokens(100);
        println!("Q: {question}");
        match client.ready().await?.call(request).await {
            Ok(answer) => {
                let degraded = answer.degraded.clone();
                let tag = if degraded.is_some() { ", degraded" } else { "" };
                println!(
                    "A ({}/{}{tag}): {}",
                    answer.provider,
                    answer.model,
                    answer.content.trim()
                );
                if let Some(degraded) = degraded {
                    println!("   degraded: {degraded}");
                }
            }
            // Caller bugs (a bad key, a bad request) are not hidden by a fallback.
            Err(err) => println!("error ({}): {err}", classify_dyn_error(&*err)),
        }
        println!(
            "   circuits: openai {:?}, anthropic {:?}\n",
            openai_circuit.circuit().state(),
            anthropic_circuit.circuit().state()
        );
    }
    Ok(())
}

/// A circuit per provider: two failures in a row open it for 30 seconds (longer if
/// the provider's `Retry-After` asks for it).
fn breaker(name: &str) -> Result<(CircuitBreakerLayer, Handle<()>), BoxError> {
    let layer = CircuitBreakerLayer::builder()
        .name(name)
        .consecutive_failures(2)
        .cooldown(Duration::from_secs(30))
        .build()?;
    let handle = layer.handle();
    Ok((layer, handle))
}

/// The two clients, for real endpoints from the environment or for demo servers.
async fn clients() -> Result<(OpenAiClient, AnthropicClient), BoxError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let configured = ["OPENAI_BASE_URL", "OPENAI_API_KEY"]
        .into_iter()
        .chain(["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"])
        .any(|name| var(name).is_some());
    let (openai_url, anthropic_url) = if configured {
        (
            var("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
            var("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into()),
        )
    } else {
        println!("No OPENAI_*/ANTHROPIC_* variables: using local demo servers.\n");
        (
            format!("{}/v1", demo_server(openai_demo).await?),
            demo_server(anthropic_demo).await?,
        )
    };

    let mut openai = OpenAiClient::builder()
        .base_url(openai_url)
        .model(var("OPENAI_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()))
        .timeout(Duration::from_secs(60));
    if let Some(key) = var("OPENAI_API_KEY") {
        openai = openai.api_key(key);
    }
    let mut anthropic = AnthropicClient::builder()
        .base_url(anthropic_url)
        .model(var("ANTHROPIC_MODEL").unwrap_or_else(|| "claude-3-5-haiku-20241022".into()))
        .timeout(Duration::from_secs(60));
    if let Some(key) = var("ANTHROPIC_API_KEY") {
        anthropic = anthropic.api_key(key);
    }
    Ok((openai.build()?, anthropic.build()?))
}

/// The OpenAI-compatible demo server is having an outage.
fn openai_demo(_call: usize) -> (u16, String) {
    let body = r#"{"error":{"message":"That model is currently overloaded with other requests.","type":"server_error","param":null,"code":null}}"#;
    (503, body.to_owned())
}

/// The Anthropic demo server answers twice, then is rate limited.
fn anthropic_demo(call: usize) -> (u16, String) {
    const ANSWERS: [&str; 2] = [
        "A circuit breaker stops calling a failing service for a while, so callers fail fast and the service can recover.",
        "So that one provider's outage or rate limit does not become your outage.",
    ];
    if let Some(text) = ANSWERS.get(call) {
        let body = serde_json::json!({
            "id": format!("msg_demo_{call}"),
            "type": "message",
            "role": "assistant",
            "model": "claude-demo",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 24}
        });
        (200, body.to_string())
    } else {
        let body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your per-minute rate limit."}}"#;
        (429, body.to_owned())
    }
}

/// Serve `answer(call_index)` as JSON on 127.0.0.1, on a random port.
async fn demo_server(answer: fn(usize) -> (u16, String)) -> Result<String, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let calls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            let service = service_fn(move |_request: http::Request<hyper::body::Incoming>| {
                let (status, body) = answer(calls.fetch_add(1, Ordering::SeqCst));
                let mut response = http::Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                if status == 429 {
                    response
                        .headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("20"));
                }
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(url)
}
