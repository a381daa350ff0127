//! Two instances share one response cache through a real redis-server.
#![cfg(all(feature = "redis", feature = "reqwest"))]
#[path = "support/llm.rs"]
mod llm;
#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::time::Duration;

use llm::openai;
use redis_server::RedisServer;
use support::{fixture, Reply, Upstream};
use tower::{Layer, ServiceExt};
use tower_llm_resilience::cache::{deterministic_chat_key, CacheLayer};
use tower_llm_resilience::client::{ChatRequest, ChatResponse, Message};
use tower_llm_resilience::redis::RedisCacheStore;

/// One instance: its own layer and connection, the shared Redis.
fn instance(
    redis: &RedisServer,
    upstream: &Upstream,
    max_value_bytes: usize,
) -> impl tower::Service<ChatRequest, Response = ChatResponse, Error = impl std::fmt::Debug> + Clone
{
    let store = RedisCacheStore::<ChatResponse>::new(redis.client())
        .unwrap()
        .prefix("test")
        .max_value_bytes(max_value_bytes);
    CacheLayer::builder(deterministic_chat_key)
        .store(store)
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap()
        .layer(openai(upstream))
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::new(vec![Message::user(text)]).temperature(0.0)
}

#[tokio::test]
async fn an_answer_stored_by_one_instance_is_served_by_the_other() {
    let redis = RedisServer::start();
    let upstream = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    let (a, b) = (
        instance(&redis, &upstream, 1 << 20),
        instance(&redis, &upstream, 1 << 20),
    );
    let first = a.oneshot(ask("hi")).await.unwrap();
    let second = b.clone().oneshot(ask("hi")).await.unwrap();
    assert_eq!(upstream.hits(), 1);
    assert_eq!(first, second);
    b.oneshot(ask("other")).await.unwrap();
    assert_eq!(upstream.hits(), 2);

    // The entry carries the TTL as a Redis expiry.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("test:cache:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=60_000).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn values_past_the_bound_are_not_stored_and_calls_still_answer() {
    let redis = RedisServer::start();
    let upstream = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    let tiny = instance(&redis, &upstream, 16);
    tiny.clone().oneshot(ask("hi")).await.unwrap();
    tiny.oneshot(ask("hi")).await.unwrap();
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn redis_down_means_misses_never_failures() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    let service = instance(&redis, &upstream, 1 << 20);
    redis.kill();
    service.clone().oneshot(ask("hi")).await.unwrap();
    service.oneshot(ask("hi")).await.unwrap();
    assert_eq!(upstream.hits(), 2);
}
