//! The cross-provider fallback chain end to end: `OpenAiClient` → `AnthropicClient`
//! → a template, each provider behind its own circuit breaker, against real servers
//! speaking each wire format.
//!
//! Real time throughout (see `tests/support/mod.rs`): no test here is about a timer
//! firing, and paused time lets reqwest's loopback I/O race the clock.
#![cfg(feature = "reqwest")]
mod support;

use std::time::Duration;

use support::{fixture, json_fixture, Reply, Step, Upstream};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState, Handle};
use tower_llm_resilience::classify::{ClassifyResponse, FailureKind};
use tower_llm_resilience::client::{
    AnthropicClient, ChatDelta, ChatRequest, ChatResponse, ChatStream, ClientError, Message,
    OpenAiClient,
};
use tower_llm_resilience::fallback::{FallbackLayer, MarkDegraded, Tier};
use tower_llm_resilience::BoxError;

const OPENAI_KEY: &str = "sk-test-openai-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-api03-test-0123456789";
const CLAUDE: &str = "claude-sonnet-4-20250514";
const TEMPLATE: &str = "Our assistants are busy right now; please try again in a minute.";

/// The neutral request of the wire fixtures (`chat_request.json`,
/// `messages_request.json`), asking for the primary's model.
fn hello() -> ChatRequest {
    ChatRequest::new(vec![
        Message::system("You are a helpful assistant."),
        Message::user("Hello!"),
    ])
    .model("gpt-4o")
}

/// The whole chain, boxed so each test names one type.
type Chain<T> = BoxCloneSyncService<ChatRequest, T, BoxError>;

/// The chain and each provider's circuit.
struct Built<T> {
    service: Chain<T>,
    openai: Handle<()>,
    anthropic: Handle<()>,
}

/// Two failures in a row open a provider's circuit for 30 seconds.
fn breaker(name: &str) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .consecutive_failures(2)
        .cooldown(Duration::from_secs(30))
        .jitter(0.0)
        .build()
        .unwrap()
}

fn openai(upstream: &Upstream) -> OpenAiClient {
    OpenAiClient::builder()
        .base_url(format!("{}/v1", upstream.url()))
        .api_key(OPENAI_KEY)
        .model("gpt-4o-mini")
        .build()
        .unwrap()
}

fn anthropic(upstream: &Upstream) -> AnthropicClient {
    AnthropicClient::builder()
        .base_url(upstream.url())
        .api_key(ANTHROPIC_KEY)
        .model(CLAUDE)
        .build()
        .unwrap()
}

/// OpenAI (primary, named `openai`) → Anthropic (`anthropic`, model rewritten to
/// Claude) → `template`, each provider behind its own breaker.
fn chain<O, A, T>(openai: O, anthropic: A, template: fn() -> T) -> Built<T>
where
    O: Service<ChatRequest, Response = T, Error = ClientError> + Clone + Send + Sync + 'static,
    O::Future: Send + 'static,
    A: Service<ChatRequest, Response = T, Error = ClientError> + Clone + Send + Sync + 'static,
    A::Future: Send + 'static,
    T: ClassifyResponse + MarkDegraded + Send + 'static,
{
    let (openai_breaker, anthropic_breaker) = (breaker("openai"), breaker("anthropic"));
    let (openai_circuit, anthropic_circuit) = (openai_breaker.handle(), anthropic_breaker.handle());
    let claude = ServiceBuilder::new()
        .layer(anthropic_breaker)
        .service(anthropic);
    let fallback = FallbackLayer::builder()
        .primary_name("openai")
        .tier(
            Tier::new("anthropic", claude)
                .map_request(|request: ChatRequest| request.model(CLAUDE)),
        )
        .final_responder("template", move |_request: ChatRequest| template())
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(fallback)
        .layer(openai_breaker)
        .service(openai);
    Built {
        service: BoxCloneSyncService::new(service),
        openai: openai_circuit,
        anthropic: anthropic_circuit,
    }
}

fn template() -> ChatResponse {
    ChatResponse::new("template", "none", TEMPLATE)
}

fn template_stream() -> ChatStream {
    ChatStream::from_response(template())
}

async fn ask<T>(service: &mut Chain<T>, request: ChatRequest) -> Result<T, BoxError> {
    service.ready().await?.call(request).await
}

#[tokio::test]
async fn openai_rate_limited_answers_from_anthropic_with_the_same_request_translated() {
    let gpt = Upstream::always(
        Reply::status(429, &fixture("openai/error_rate_limit.json"))
            .with_header("retry-after", "20"),
    )
    .await;
    let claude =
        Upstream::always(Reply::ok_json(&fixture("anthropic/messages_response.json"))).await;
    let Built {
        mut service,
        openai: openai_circuit,
        anthropic: anthropic_circuit,
    } = chain(openai(&gpt), anthropic(&claude), template);

    let answer = ask(&mut service, hello()).await.unwrap();

    assert_eq!(answer.provider, "anthropic");
    assert_eq!(answer.model, CLAUDE);
    assert_eq!(answer.content, "Hi! My name is Claude.");
    let degraded = answer.degraded().expect("not the primary's answer");
    assert_eq!(degraded.name(), "anthropic");
    assert_eq!(degraded.tier(), 1);
    assert!(!degraded.hedged());
    assert_eq!(degraded.failed().len(), 1);
    assert_eq!(degraded.failed()[0].name(), "openai");
    assert_eq!(
        degraded.failed()[0].kind(),
        &FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(20))
        }
    );

    // Each provider got the same neutral request in its own wire format, with the
    // model each tier asks for and only its own key.
    let to_openai = &gpt.requests()[..];
    assert_eq!(to_openai.len(), 1);
    assert_eq!(to_openai[0].path, "/v1/chat/completions");
    assert_eq!(
        to_openai[0].json(),
        json_fixture("openai/chat_request.json")
    );
    assert_eq!(
        to_openai[0].headers["authorization"],
        format!("Bearer {OPENAI_KEY}")
    );
    let to_anthropic = &claude.requests()[..];
    assert_eq!(to_anthropic.len(), 1);
    assert_eq!(to_anthropic[0].method, "POST");
    assert_eq!(to_anthropic[0].path, "/v1/messages");
    assert_eq!(
        to_anthropic[0].json(),
        json_fixture("anthropic/messages_request.json")
    );
    assert_eq!(to_anthropic[0].headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(to_anthropic[0].headers["anthropic-version"], "2023-06-01");
    assert!(to_anthropic[0].headers.get("authorization").is_none());

    // The 429 counted against OpenAI's circuit (one of two), not Anthropic's.
    let openai_snapshot = openai_circuit.circuit().snapshot();
    assert_eq!(openai_snapshot.state, CircuitState::Closed);
    assert_eq!(openai_snapshot.consecutive_failures, 1);
    assert_eq!(anthropic_circuit.circuit().snapshot().failures, 0);
}

#[tokio::test]
async fn both_providers_down_answers_from_the_template_with_both_failures_in_order() {
    let gpt = Upstream::always(Reply::status(
        500,
        r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#,
    ))
    .await;
    let claude = Upstream::always(Reply::status(
        529,
        &fixture("anthropic/error_overloaded.json"),
    ))
    .await;
    let Built { mut service, .. } = chain(openai(&gpt), anthropic(&claude), template);

    let answer = ask(&mut service, hello()).await.unwrap();

    assert_eq!(answer.content, TEMPLATE);
    assert_eq!(answer.provider, "template");
    let degraded = answer
        .degraded()
        .expect("the template is a degraded answer");
    assert_eq!(degraded.name(), "template");
    assert_eq!(degraded.tier(), 2);
    let failed: Vec<_> = degraded
        .failed()
        .iter()
        .map(|tier| (tier.name(), tier.kind().clone()))
        .collect();
    assert_eq!(
        failed,
        [
            ("openai", FailureKind::ServerError),
            ("anthropic", FailureKind::Overloaded { retry_after: None }),
        ]
    );
    assert_eq!(
        degraded.to_string(),
        "answered by tier 2 (template) after openai: server_error, anthropic: overloaded"
    );
    assert_eq!((gpt.hits(), claude.hits()), (1, 1));
}

#[tokio::test]
async fn a_bad_request_to_openai_is_returned_not_hidden_by_a_fallback() {
    let gpt = Upstream::always(Reply::status(
        400,
        r#"{"error":{"message":"Invalid value for 'temperature': expected a number between 0 and 2.","type":"invalid_request_error","param":"temperature","code":null}}"#,
    ))
    .await;
    let claude =
        Upstream::always(Reply::ok_json(&fixture("anthropic/messages_response.json"))).await;
    let Built {
        mut service,
        openai: openai_circuit,
        ..
    } = chain(openai(&gpt), anthropic(&claude), template);

    let err = ask(&mut service, hello()).await.unwrap_err();

    let client_error = err
        .downcast_ref::<ClientError>()
        .expect("the provider's own error, unwrapped");
    assert_eq!(client_error.provider(), "openai");
    assert_eq!(client_error.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(client_error.kind(), &FailureKind::BadRequest);
    assert_eq!(client_error.error_type(), Some("invalid_request_error"));
    assert!(client_error
        .message()
        .starts_with("Invalid value for 'temperature'"));
    assert_eq!(claude.hits(), 0, "no fallback for a caller bug");
    // Nor is the caller's bug held against the provider.
    assert_eq!(openai_circuit.circuit().snapshot().failures, 0);
}

#[tokio::test]
async fn an_open_openai_circuit_answers_from_anthropic_without_calling_openai() {
    let gpt = Upstream::always(Reply::status(503, &fixture("openai/error_overloaded.json"))).await;
    let claude =
        Upstream::always(Reply::ok_json(&fixture("anthropic/messages_response.json"))).await;
    let Built {
        mut service,
        openai: openai_circuit,
        anthropic: anthropic_circuit,
    } = chain(openai(&gpt), anthropic(&claude), template);

    // Two 503s: each answered by Anthropic, and OpenAI's circuit opens.
    for _ in 0..2 {
        let answer = ask(&mut service, hello()).await.unwrap();
        assert_eq!(answer.degraded().unwrap().name(), "anthropic");
        assert_eq!(
            answer.degraded().unwrap().failed()[0].kind(),
            &FailureKind::Overloaded { retry_after: None }
        );
    }
    assert_eq!(gpt.hits(), 2);
    assert_eq!(openai_circuit.circuit().state(), CircuitState::Open);

    let answer = ask(&mut service, hello()).await.unwrap();

    assert_eq!(gpt.hits(), 2, "OpenAI's server was not called");
    assert_eq!(claude.hits(), 3);
    assert_eq!(answer.content, "Hi! My name is Claude.");
    let degraded = answer.degraded().unwrap();
    assert_eq!(degraded.name(), "anthropic");
    assert_eq!(degraded.failed()[0].name(), "openai");
    match degraded.failed()[0].kind() {
        FailureKind::CircuitOpen { retry_after } => {
            assert!(
                *retry_after > Duration::from_secs(20) && *retry_after <= Duration::from_secs(30),
                "{retry_after:?}"
            );
        }
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(openai_circuit.circuit().snapshot().rejected, 1);
    assert_eq!(anthropic_circuit.circuit().state(), CircuitState::Closed);
}

#[tokio::test]
async fn streaming_falls_back_when_openai_refuses_to_open_the_stream() {
    let gpt = Upstream::always(
        Reply::status(429, &fixture("openai/error_rate_limit.json"))
            .with_header("retry-after", "20"),
    )
    .await;
    let claude = Upstream::always(Reply::sse(Step::events(&fixture(
        "anthropic/messages_stream.sse",
    ))))
    .await;
    let Built { mut service, .. } = chain(
        openai(&gpt).streaming(),
        anthropic(&claude).streaming(),
        template_stream,
    );

    let answer = ask(&mut service, hello()).await.unwrap();

    let degraded = answer.degraded().unwrap().clone();
    assert_eq!(degraded.name(), "anthropic");
    assert_eq!(
        degraded.failed()[0].kind(),
        &FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(20))
        }
    );
    let mut stream = answer;
    assert_eq!(
        stream.next_delta().await.unwrap().unwrap(),
        ChatDelta::Text("Hello".into())
    );
    let rest = stream.into_response().await.unwrap();
    assert_eq!(rest.provider, "anthropic");
    assert_eq!(rest.content, "!");
    assert_eq!(
        claude.requests()[0].json(),
        json_fixture("anthropic/messages_request_stream.json")
    );
    assert_eq!(claude.requests()[0].headers["accept"], "text/event-stream");
}

#[tokio::test]
async fn streaming_both_providers_down_streams_the_template() {
    let gpt = Upstream::always(Reply::status(503, &fixture("openai/error_overloaded.json"))).await;
    let claude = Upstream::always(Reply::status(
        529,
        &fixture("anthropic/error_overloaded.json"),
    ))
    .await;
    let Built { mut service, .. } = chain(
        openai(&gpt).streaming(),
        anthropic(&claude).streaming(),
        template_stream,
    );

    let answer = ask(&mut service, hello()).await.unwrap();

    let degraded = answer.degraded().unwrap().clone();
    assert_eq!(degraded.name(), "template");
    assert_eq!(degraded.failed().len(), 2);
    // The marker follows the stream into the whole answer.
    let mut whole = answer.into_response().await.unwrap();
    let marker = whole.degraded.take().expect("the marker of the stream");
    assert_eq!(marker.name(), "template");
    assert_eq!(whole, template());
}

/// The documented limit of a fallback around the streaming services: a stream
/// counts as the answer once it opened (a success status), so an error event
/// before its first delta reaches the reader and does not fall back.
#[tokio::test]
async fn streaming_an_error_after_the_stream_opened_reaches_the_reader() {
    let gpt = Upstream::always(Reply::sse(vec![
        Step::Chunk(": keep-alive\n\n".into()),
        Step::data(&fixture("openai/error_overloaded.json").replace('\n', "")),
    ]))
    .await;
    let claude = Upstream::always(Reply::sse(Step::events(&fixture(
        "anthropic/messages_stream.sse",
    ))))
    .await;
    let Built { mut service, .. } = chain(
        openai(&gpt).streaming(),
        anthropic(&claude).streaming(),
        template_stream,
    );

    let answer = ask(&mut service, hello()).await.unwrap();

    assert!(answer.degraded().is_none(), "the primary's stream opened");
    let mut stream = answer;
    let err = stream.next_delta().await.unwrap().unwrap_err();
    // No status inside a stream: the error object's `server_error` type decides.
    assert_eq!(err.kind(), &FailureKind::ServerError);
    assert_eq!(err.error_type(), Some("server_error"));
    assert!(stream.next_delta().await.is_none());
    assert_eq!(claude.hits(), 0);
}
