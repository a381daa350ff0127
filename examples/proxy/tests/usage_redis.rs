//! Two proxies on one Redis enforce one budget per client key.

mod common;
#[path = "../../../tests/support/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::*;
use llm_proxy::{Config, Proxy};
use redis_server::RedisServer;

/// A proxy in front of the mocks, on `redis`, with a budget of 100 000
/// nano-dollars a key (an answer of the mock costs 62 500 at these prices).
fn proxy(
    env_dir: &tempfile::TempDir,
    primary: &str,
    secondary: &str,
    redis: &RedisServer,
) -> Proxy {
    let text = format!(
        "{}\n[state]\nredis_url = \"{}\"\nprefix = \"budget-test\"\n\
         [usage.prices.\"gpt-4o\"]\ninput = 2.5\noutput = 10.0\n\
         [budgets.default]\nbudget_usd = 0.0001\n",
        config_text(
            primary,
            secondary,
            &env_dir.path().join("escalations.db"),
            ""
        ),
        redis.url(),
    );
    Proxy::start(&Config::from_toml(&text).expect("valid config")).expect("proxy starts")
}

async fn chat(http: &reqwest::Client, proxy: &Proxy) -> reqwest::StatusCode {
    post_chat(http, &proxy.url(), &ask("solo")).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_on_one_proxy_counts_against_the_budget_on_the_other() {
    let redis = RedisServer::start();
    let (primary, secondary) = (mock("primary").await, mock("secondary").await);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = proxy(&dirs[0], &primary.base_url(), &secondary.base_url(), &redis);
    let b = proxy(&dirs[1], &primary.base_url(), &secondary.base_url(), &redis);
    let http = reqwest::Client::new();

    // Two answers through A: 125 000 of 100 000 spent.
    assert_eq!(chat(&http, &a).await, 200);
    assert_eq!(chat(&http, &a).await, 200);
    // The spend reaches Redis off the answer's path: B refuses once it landed.
    let started = Instant::now();
    let mut calls_before_refusal = primary.requests();
    loop {
        let status = chat(&http, &b).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        calls_before_refusal = primary.requests();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B never refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        primary.requests(),
        calls_before_refusal,
        "refused before the upstream"
    );
    assert_eq!(chat(&http, &a).await, 429);
    for proxy in [a, b] {
        tokio::task::spawn_blocking(move || proxy.stop())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_recorded_on_both_proxies_is_read_on_either() {
    let redis = RedisServer::start();
    let (primary, secondary) = (mock("primary").await, mock("secondary").await);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = proxy(&dirs[0], &primary.base_url(), &secondary.base_url(), &redis);
    let b = proxy(&dirs[1], &primary.base_url(), &secondary.base_url(), &redis);
    let http = reqwest::Client::new();
    assert_eq!(chat(&http, &a).await, 200);
    assert_eq!(chat(&http, &b).await, 200);
    for proxy in [&a, &b] {
        let usage = get_json(&http, &format!("{}/v1/usage", proxy.url()), CLIENT_KEY).await;
        let totals = &usage["totals"];
        assert_eq!(totals["requests"], 2, "{usage}");
        assert_eq!(
            (
                totals["input_tokens"].clone(),
                totals["output_tokens"].clone()
            ),
            (10.into(), 10.into())
        );
        assert_eq!(totals["cost_nano_usd"], 125_000);
        assert_eq!(usage["groups"][0]["model"], "solo");
    }
    let admin = get_json(&http, &format!("{}/v1/admin/usage", a.url()), ADMIN_KEY).await;
    assert_eq!(
        admin["groups"][0]["client"],
        llm_proxy::client_id::client_key_id(CLIENT_KEY)
    );
    for proxy in [a, b] {
        tokio::task::spawn_blocking(move || proxy.stop())
            .await
            .unwrap();
    }
}
