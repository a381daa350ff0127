//! The LLM clients under the crate's layers, with the layers' default classifier.
#![cfg(feature = "reqwest")]
mod support;

use std::time::Duration;

use support::{fixture, Reply, Step, Upstream};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use tower_llm_resilience::classify::{ClassifyError, FailureKind};
use tower_llm_resilience::client::{AnthropicClient, ChatRequest, Message, OpenAiClient};
use tower_llm_resilience::BoxError;

fn hello() -> ChatRequest {
    ChatRequest::new(vec![Message::user("Hello!")])
}

#[tokio::test]
async fn a_circuit_per_provider_opens_on_overload_and_ignores_caller_bugs() {
    let upstream = Upstream::sequence(vec![
        Reply::status(400, &fixture("anthropic/error_prompt_too_long.json")),
        Reply::status(529, &fixture("anthropic/error_overloaded.json")),
        Reply::status(429, &fixture("anthropic/error_rate_limit.json"))
            .with_header("retry-after", "45"),
        Reply::ok_json(&fixture("anthropic/messages_response.json")),
    ])
    .await;
    let claude = AnthropicClient::builder()
        .base_url(upstream.url())
        .model("claude-sonnet-4-20250514")
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .name("anthropic")
        .consecutive_failures(2)
        .cooldown(Duration::from_secs(10))
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut service = ServiceBuilder::new().layer(breaker).service(claude);

    async fn call<S>(service: &mut S) -> Result<String, BoxError>
    where
        S: Service<ChatRequest, Error = BoxError>,
        S::Response: std::fmt::Debug,
    {
        let answer = service.ready().await?.call(hello()).await?;
        Ok(format!("{answer:?}"))
    }

    // A prompt over the context is the caller's: reported, never counted against
    // the provider.
    let too_long = call(&mut service).await.unwrap_err();
    assert_eq!(
        too_long.classify_error(),
        FailureKind::ContextLengthExceeded
    );
    assert_eq!(handle.circuit().state(), CircuitState::Closed);

    // Overloaded, then rate limited: two failures in a row open the circuit, kept
    // open at least as long as the 429's Retry-After asked.
    call(&mut service).await.unwrap_err();
    let limited = call(&mut service).await.unwrap_err();
    assert_eq!(
        limited.classify_error(),
        FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(45))
        }
    );
    assert_eq!(handle.circuit().state(), CircuitState::Open);

    // Open: rejected at once, the provider is not called.
    let rejected = call(&mut service).await.unwrap_err();
    let open = rejected.downcast_ref::<CircuitOpen>().expect("fails fast");
    assert!(open.retry_after() > Duration::from_secs(40), "{open}");
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn a_streaming_client_under_a_breaker_counts_failed_openings() {
    let upstream = Upstream::sequence(vec![
        Reply::status(503, &fixture("openai/error_overloaded.json")),
        Reply::sse(Step::events(&fixture("openai/chat_stream.sse"))),
    ])
    .await;
    let gpt = OpenAiClient::builder()
        .base_url(upstream.url())
        .model("gpt-4o")
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .name("openai-stream")
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut streaming = ServiceBuilder::new()
        .layer(breaker)
        .service(gpt.streaming());

    let err = streaming
        .ready()
        .await
        .unwrap()
        .call(hello())
        .await
        .unwrap_err();
    assert_eq!(
        err.classify_error(),
        FailureKind::Overloaded { retry_after: None }
    );
    assert_eq!(handle.circuit().state(), CircuitState::Open);
    handle.circuit().force_closed();

    let stream = streaming.oneshot(hello()).await.unwrap();
    assert_eq!(
        stream.into_response().await.unwrap().content,
        "Hello there!"
    );
}
