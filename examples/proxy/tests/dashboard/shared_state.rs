//! With `[state] redis_url`: what the circuit controls do to the other proxies
//! on the same Redis. The library's circuit sync keeps a forced state on the
//! proxy that forced it; a reset that closes the circuit is published.

#[path = "../../../../tests/support/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use crate::common::*;
use llm_proxy::{Config, Proxy};
use redis_server::RedisServer;
use serde_json::Value;

/// Slack for a shared change to reach the other proxy on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(5);

async fn state_of(http: &reqwest::Client, proxy: &Proxy, upstream: &str) -> Value {
    circuits(http, &proxy.url())
        .await
        .into_iter()
        .find(|c| c["upstream"] == upstream)
        .expect("the upstream is listed")
}

async fn until(what: &str, http: &reqwest::Client, proxy: &Proxy, upstream: &str, state: &str) {
    let started = Instant::now();
    while state_of(http, proxy, upstream).await["state"] != state {
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn admin_post(http: &reqwest::Client, proxy: &Proxy, path: &str) {
    let response = http
        .post(format!("{}{path}", proxy.url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_circuit_stays_on_its_proxy_and_a_reset_is_published() {
    let redis = RedisServer::start();
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let [a, b] = [0, 1].map(|i| {
        let text = format!(
            "{}\n[state]\nredis_url = {:?}\nprefix = \"dashboard-test\"\n",
            config_text(
                &primary.base_url(),
                &secondary.base_url(),
                &dirs[i].path().join("escalations.db"),
                "",
            ),
            redis.url()
        );
        Proxy::start(&Config::from_toml(&text).unwrap()).expect("the proxy starts")
    });
    let started = Instant::now();
    while ![&a, &b]
        .iter()
        .all(|p| p.circuit_syncs().iter().all(|(_, s)| s.is_connected()))
    {
        assert!(
            started.elapsed() < DEADLINE,
            "the circuit syncs reach Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let http = reqwest::Client::new();
    let smart = ask("smart");
    let chat_on = |proxy: &Proxy| {
        let (http, smart, url) = (&http, &smart, proxy.url());
        async move { post_chat(http, &url, smart).await }
    };

    // A forces the primary open.
    admin_post(&http, &a, "/v1/admin/circuits/primary/force-open").await;
    // Then the secondary trips on A on its own (2 failures): that is published.
    secondary.set(|o| o.fail_rate = 1.0);
    for _ in 0..2 {
        assert_eq!(header(&chat_on(&a).await, "x-llm-proxy-tier"), "template");
    }
    until(
        "B sees A's tripped secondary",
        &http,
        &b,
        "secondary",
        "open",
    )
    .await;
    // The forced state, which came before, was not.
    let on_b = state_of(&http, &b, "primary").await;
    assert_eq!(
        on_b["state"], "closed",
        "a forced state is not shared: {on_b}"
    );

    // The primary trips on B on its own; A, forced, keeps its own state.
    primary.set(|o| o.fail_rate = 1.0);
    for _ in 0..2 {
        chat_on(&b).await;
    }
    assert_eq!(state_of(&http, &b, "primary").await["state"], "open");
    let on_a = state_of(&http, &a, "primary").await;
    assert_eq!(
        (on_a["state"].as_str(), on_a["forced"].as_bool()),
        (Some("open"), Some(true))
    );

    // A's reset closes the circuit, and is published: B closes too.
    admin_post(&http, &a, "/v1/admin/circuits/primary/reset").await;
    until("B sees A's reset", &http, &b, "primary", "closed").await;
    for proxy in [a, b] {
        tokio::task::spawn_blocking(move || proxy.stop())
            .await
            .unwrap();
    }
}
