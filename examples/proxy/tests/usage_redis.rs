//! Two proxies on one Redis enforce one budget per client key, see one
//! usage record set, and share one response cache.

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
         [usage]\nenabled = true\n[usage.prices.\"gpt-4o\"]\ninput = 2.5\noutput = 10.0\n\
         [budgets.default]\nbudget_usd = 0.0001\n[cache]\nmode = \"deterministic\"\n",
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

/// Two proxies, A and B, on one Redis, in front of the same mocks.
struct Pair {
    a: Proxy,
    b: Proxy,
    primary: llm_proxy::mock::MockUpstream,
    _secondary: llm_proxy::mock::MockUpstream,
    http: reqwest::Client,
    _dirs: [tempfile::TempDir; 2],
    // Last: stopped after the proxies.
    _redis: RedisServer,
}

impl Pair {
    async fn start() -> Pair {
        let redis = RedisServer::start();
        let (primary, secondary) = (mock("primary").await, mock("secondary").await);
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let a = proxy(&dirs[0], &primary.base_url(), &secondary.base_url(), &redis);
        let b = proxy(&dirs[1], &primary.base_url(), &secondary.base_url(), &redis);
        Pair {
            a,
            b,
            primary,
            _secondary: secondary,
            http: reqwest::Client::new(),
            _dirs: dirs,
            _redis: redis,
        }
    }
}

async fn chat(http: &reqwest::Client, proxy: &Proxy) -> reqwest::StatusCode {
    post_chat(http, &proxy.url(), &ask("solo")).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_on_one_proxy_counts_against_the_budget_on_the_other() {
    // Every field bound: `..` would drop Redis at once.
    let Pair {
        a,
        b,
        primary,
        http,
        _secondary,
        _dirs,
        _redis,
    } = Pair::start().await;

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
    // Every field bound: `..` would drop Redis at once.
    let Pair {
        a,
        b,
        primary: _primary,
        http,
        _secondary,
        _dirs,
        _redis,
    } = Pair::start().await;
    assert_eq!(chat(&http, &a).await, 200);
    assert_eq!(chat(&http, &b).await, 200);
    for proxy in [&a, &b] {
        // A query flushes its own proxy's writer, not the other's: poll for it.
        let url = format!("{}/v1/usage", proxy.url());
        let started = Instant::now();
        let usage = loop {
            let usage = get_json(&http, &url, CLIENT_KEY).await;
            if usage["totals"]["requests"] == 2 || started.elapsed() > Duration::from_secs(5) {
                break usage;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cached_through_one_proxy_is_a_hit_on_the_other() {
    // Every field bound: `..` would drop Redis at once.
    let Pair {
        a,
        b,
        primary,
        http,
        _secondary,
        _dirs,
        _redis,
    } = Pair::start().await;
    let mut body = ask("solo");
    body["temperature"] = 0.into();
    let first = post_chat(&http, &a.url(), &body).await;
    assert_eq!(header(&first, "x-llm-proxy-cache"), "miss");
    let first = first.text().await.unwrap();
    let second = post_chat(&http, &b.url(), &body).await;
    assert_eq!(header(&second, "x-llm-proxy-cache"), "hit");
    assert_eq!(second.text().await.unwrap(), first);
    assert_eq!(primary.requests(), 1);
    for proxy in [a, b] {
        tokio::task::spawn_blocking(move || proxy.stop())
            .await
            .unwrap();
    }
}
