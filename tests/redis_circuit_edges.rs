//! Circuit state through a real redis-server, at the key limit: another instance's
//! "open" for a key that does not fit never lands on the overflow circuit.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use redis_server::RedisServer;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_llm_resilience::classify::ErrorOnlyClassifier;
use tower_llm_resilience::redis::RedisCircuitSync;
use tower_llm_resilience::BoxError;

/// Generous: these wait on real processes and sockets, never on the breaker's timers.
const DEADLINE: Duration = Duration::from_secs(15);

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

type ByModel = tower_llm_resilience::circuit_breaker::KeyBy<fn(&String) -> String, String>;

fn layer(max_keys: usize) -> CircuitBreakerLayer<ErrorOnlyClassifier, ByModel> {
    CircuitBreakerLayer::builder()
        .name("models")
        .consecutive_failures(2)
        .cooldown(Duration::from_secs(60))
        .max_keys(max_keys)
        .classifier(ErrorOnlyClassifier)
        .key_by((|model: &String| model.clone()) as fn(&String) -> String)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_remote_open_for_a_key_that_does_not_fit_spares_the_overflow_circuit() {
    let redis = RedisServer::start();
    let (layer_a, layer_b) = (layer(16), layer(1));
    let sync_a = RedisCircuitSync::builder(redis.client())
        .without_shared_failure_rate()
        .attach(&layer_a.handle())
        .unwrap();
    let sync_b = RedisCircuitSync::builder(redis.client())
        .without_shared_failure_rate()
        .attach(&layer_b.handle())
        .unwrap();
    eventually("both instances subscribed", || {
        sync_a.is_connected() && sync_b.is_connected()
    })
    .await;
    let failing = |model: String| async move {
        if model == "mistral" {
            Ok::<String, BoxError>(model)
        } else {
            Err("down".into())
        }
    };
    let mut svc_a = layer_a.layer(tower::service_fn(failing));
    let mut svc_b = layer_b.layer(tower::service_fn(failing));

    // B's only slot holds "claude", with a failure streak: it cannot be evicted.
    assert!(svc_b
        .ready()
        .await
        .unwrap()
        .call("claude".into())
        .await
        .is_err());
    let handle_b = layer_b.handle();
    assert_eq!(handle_b.keyed().len(), 1);

    // A opens "gpt" (which B has no room for), then "claude" (which B keeps).
    for model in ["gpt", "gpt", "claude", "claude"] {
        assert!(svc_a
            .ready()
            .await
            .unwrap()
            .call(model.into())
            .await
            .is_err());
    }
    // Messages arrive in order: once B sees "claude" open, it has seen "gpt" too.
    eventually("B's claude circuit open", || {
        handle_b
            .get(&"claude".to_owned())
            .is_some_and(|c| c.state() == CircuitState::Open)
    })
    .await;
    assert!(handle_b.get(&"gpt".to_owned()).is_none());
    assert_eq!(
        handle_b.circuit().state(),
        CircuitState::Closed,
        "the overflow circuit was not opened for gpt"
    );
    // A healthy key that shares the overflow circuit still gets through.
    assert_eq!(
        svc_b
            .ready()
            .await
            .unwrap()
            .call("mistral".into())
            .await
            .unwrap(),
        "mistral"
    );
}
