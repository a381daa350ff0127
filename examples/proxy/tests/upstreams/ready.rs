//! `GET /readyz`: ready while every model has a tier whose circuit is not
//! open; a model whose every upstream is open makes the proxy not ready (its
//! template does not count). The store check is in `redis_state.rs` (an
//! unreachable Redis).

use http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

async fn readyz(env: &Env) -> (StatusCode, Value) {
    // Open: no key.
    let response = env.http.get(env.url("/readyz")).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_until_a_model_has_no_tier_left() {
    let env = Env::start().await;
    assert_eq!(
        readyz(&env).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_only_upstream_is_open_is_not_ready() {
    let env = Env::start().await;
    // `consecutive_failures = 2`: two failures open the primary's circuit.
    env.primary.set(|o| o.fail_rate = 1.0);
    for _ in 0..2 {
        assert_ne!(env.chat(ask("solo")).await.status(), StatusCode::OK);
    }
    let open = |states: &[Value], name: &str| {
        states
            .iter()
            .any(|c| c["upstream"] == name && c["state"] == "open")
    };
    let states = circuits(&env.http, &env.proxy.url()).await;
    assert!(open(&states, "primary"), "{states:?}");
    // `solo` has only the primary; `smart` and `strict` still have the
    // secondary (and `smart`'s template would not count).
    let (status, body) = readyz(&env).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"status": "not_ready", "failing": ["model:solo"]})
    );
    // The secondary opens too: every model is out.
    env.secondary.set(|o| o.fail_rate = 1.0);
    for _ in 0..2 {
        env.chat(ask("strict")).await;
    }
    let states = circuits(&env.http, &env.proxy.url()).await;
    assert!(open(&states, "secondary"), "{states:?}");
    let (status, body) = readyz(&env).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["failing"],
        json!(["model:smart", "model:solo", "model:strict"])
    );
}
