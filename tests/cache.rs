//! `CacheLayer` in front of the chat clients, at real loopback upstreams: hits,
//! bypass, expiry, what is never stored, and coalescing of concurrent misses.
#![cfg(feature = "reqwest")]
#[path = "support/llm.rs"]
mod llm;
mod support;

use std::time::Duration;

use futures_util::future::join_all;
use llm::{anthropic, openai};
use support::{fixture, Reply, Upstream};
use tower::{Layer, ServiceExt};
use tower_llm_resilience::cache::{
    deterministic_chat_key, BuildError, CacheLayer, CacheStatus, CacheableResponse, MemoryStore,
};
use tower_llm_resilience::client::{ChatRequest, ChatResponse, Message};
use tower_llm_resilience::fallback::FallbackLayer;

const TTL: Duration = Duration::from_secs(300);

fn layer() -> CacheLayer<fn(&ChatRequest) -> Option<String>, ChatResponse> {
    CacheLayer::builder(deterministic_chat_key as fn(&ChatRequest) -> Option<String>)
        .ttl(TTL)
        .build()
        .unwrap()
}

fn ask(text: &str, temperature: f32) -> ChatRequest {
    ChatRequest::new(vec![Message::user(text)]).temperature(temperature)
}

async fn ok_upstream() -> Upstream {
    Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await
}

#[tokio::test]
async fn repeated_deterministic_request_is_a_hit_and_others_bypass() {
    let upstream = ok_upstream().await;
    let service = layer().layer(openai(&upstream));
    let first = service.clone().oneshot(ask("hi", 0.0)).await.unwrap();
    let second = service.clone().oneshot(ask("hi", 0.0)).await.unwrap();
    assert_eq!(upstream.hits(), 1);
    assert_eq!(first, second);
    // Streaming on the wire or not, the answer is the same: one key.
    service
        .clone()
        .oneshot(ask("hi", 0.0).stream(true))
        .await
        .unwrap();
    assert_eq!(upstream.hits(), 1);
    // Another prompt, or a temperature above 0 (bypass), goes upstream every time.
    service.clone().oneshot(ask("other", 0.0)).await.unwrap();
    service.clone().oneshot(ask("hi", 0.7)).await.unwrap();
    service.oneshot(ask("hi", 0.7)).await.unwrap();
    assert_eq!(upstream.hits(), 4);
}

#[tokio::test]
async fn hundred_concurrent_identical_misses_make_one_upstream_call() {
    let upstream = ok_upstream().await;
    let cache = layer();
    let service = cache.layer(openai(&upstream));
    let answers = join_all((0..100).map(|_| service.clone().oneshot(ask("same", 0.0)))).await;
    assert!(answers
        .iter()
        .all(|a| a.as_ref().unwrap().content.contains("Hello there")));
    assert_eq!(upstream.hits(), 1);
    assert_eq!(cache.in_flight(), 0, "the call left the in-flight map");
    // And it was stored.
    service.oneshot(ask("same", 0.0)).await.unwrap();
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let upstream = ok_upstream().await;
    let service = layer().layer(openai(&upstream));
    service.clone().oneshot(ask("hi", 0.0)).await.unwrap();
    // Move the clock with no request in flight (see tests/support: paused time
    // and pooled connections), then run the next requests on real time again.
    tokio::time::pause();
    tokio::time::advance(TTL - Duration::from_secs(1)).await;
    tokio::time::resume();
    service.clone().oneshot(ask("hi", 0.0)).await.unwrap();
    assert_eq!(upstream.hits(), 1, "still fresh one second before the TTL");
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::time::resume();
    service.clone().oneshot(ask("hi", 0.0)).await.unwrap();
    assert_eq!(upstream.hits(), 2, "expired at the TTL");
    service.oneshot(ask("hi", 0.0)).await.unwrap();
    assert_eq!(upstream.hits(), 2, "stored again");
}

#[tokio::test]
async fn degraded_answers_are_served_but_never_stored() {
    let failing = Upstream::always(Reply::status(500, r#"{"error":{"message":"down"}}"#)).await;
    let claude =
        Upstream::always(Reply::ok_json(&fixture("anthropic/messages_response.json"))).await;
    let fallback = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", anthropic(&claude))
        .build()
        .unwrap();
    let service = layer().layer(fallback.layer(openai(&failing)));
    for _ in 0..2 {
        let answer = service.clone().oneshot(ask("hi", 0.0)).await.unwrap();
        assert_eq!(answer.provider, "anthropic");
    }
    assert_eq!((failing.hits(), claude.hits()), (2, 2));
}

#[tokio::test]
async fn failures_are_never_stored() {
    let upstream = Upstream::sequence(vec![
        Reply::status(500, r#"{"error":{"message":"boom"}}"#),
        Reply::ok_json(&fixture("openai/chat_response.json")),
    ])
    .await;
    let service = layer().layer(openai(&upstream));
    service.clone().oneshot(ask("hi", 0.0)).await.unwrap_err();
    service.clone().oneshot(ask("hi", 0.0)).await.unwrap();
    service.oneshot(ask("hi", 0.0)).await.unwrap();
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn content_filtered_answers_are_never_stored() {
    let body = fixture("openai/chat_response.json").replace(
        r#""finish_reason": "stop""#,
        r#""finish_reason": "content_filter""#,
    );
    let upstream = Upstream::always(Reply::ok_json(&body)).await;
    let service = layer().layer(openai(&upstream));
    service.clone().oneshot(ask("hi", 0.0)).await.unwrap();
    service.oneshot(ask("hi", 0.0)).await.unwrap();
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn when_the_shared_call_fails_each_waiter_calls_itself() {
    let upstream = Upstream::always(Reply::status(500, r#"{"error":{"message":"x"}}"#)).await;
    let cache = layer();
    let service = cache.layer(openai(&upstream));
    let answers = join_all((0..5).map(|_| service.clone().oneshot(ask("same", 0.0)))).await;
    assert!(answers.iter().all(Result::is_err));
    assert_eq!(upstream.hits(), 5, "one leader, then each of the 4 waiters");
    assert_eq!(cache.in_flight(), 0);
}

/// An answer that records how it was served.
#[derive(Clone, Debug, PartialEq)]
struct Traced(Option<CacheStatus>);

impl CacheableResponse for Traced {
    fn storable(&self) -> bool {
        true
    }

    fn set_cache_status(&mut self, status: CacheStatus) {
        self.0 = Some(status);
    }
}

#[tokio::test]
async fn answers_learn_how_they_were_served() {
    let service = CacheLayer::builder(|bypass: &bool| (!bypass).then(|| "k".to_owned()))
        .store(MemoryStore::new(1))
        .build()
        .unwrap()
        .layer(tower::service_fn(|_: bool| async {
            tokio::task::yield_now().await;
            Ok::<_, std::convert::Infallible>(Traced(None))
        }));
    let (first, second) = tokio::join!(
        service.clone().oneshot(false),
        service.clone().oneshot(false)
    );
    assert_eq!(first.unwrap().0, Some(CacheStatus::Miss));
    assert_eq!(second.unwrap().0, Some(CacheStatus::Coalesced));
    assert_eq!(
        service.clone().oneshot(false).await.unwrap().0,
        Some(CacheStatus::Hit)
    );
    assert_eq!(
        service.oneshot(true).await.unwrap().0,
        Some(CacheStatus::Bypass)
    );
}

#[test]
fn bad_settings_are_build_errors() {
    let zero = CacheLayer::<_, Traced>::builder(|_: &()| None::<String>)
        .ttl(Duration::ZERO)
        .build();
    assert_eq!(zero.unwrap_err(), BuildError::ZeroTtl);
    let unnamed = CacheLayer::<_, Traced>::builder(|_: &()| None::<String>)
        .name("")
        .build();
    assert_eq!(unnamed.unwrap_err().to_string(), "cache: the name is empty");
}
