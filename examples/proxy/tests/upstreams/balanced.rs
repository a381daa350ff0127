//! A tier over several upstreams (`balance_with`): calls are spread over them,
//! none goes to one whose circuit is open, and when every circuit of the tier
//! is open the next tier answers at once.

use std::time::Duration;

use crate::common::raw::{
    completion, json_answer, server_error, two_tier_text, RawUpstream, Reply, CLIENT_KEY,
};
use llm_proxy::{Config, Proxy};

/// The test config with the model `bal`: one tier over `first` and `second`
/// (then `template`, if given); `second_table` lines are added to upstream
/// `second` and `first_table` to `first`.
fn proxy(
    first: &RawUpstream,
    second: &RawUpstream,
    first_table: &str,
    second_table: &str,
    template: &str,
) -> Proxy {
    let model = format!(
        "[[models]]\nname = \"bal\"\ntiers = [ {{ upstream = \"first\", model = \"m\", balance_with = [\"second\"] }} ]\n{template}\n"
    );
    let text = two_tier_text(
        &first.base_url(),
        &second.base_url(),
        &model,
        "store = \"memory\"",
    )
    .replacen(
        "name = \"first\"\n",
        &format!("name = \"first\"\n{first_table}\n"),
        1,
    )
    .replacen(
        "name = \"second\"\n",
        &format!("name = \"second\"\n{second_table}\n"),
        1,
    );
    Proxy::start(&Config::from_toml(&text).expect("test config is valid")).expect("proxy starts")
}

async fn ask(http: &reqwest::Client, proxy: &Proxy) -> reqwest::Response {
    let call = http
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"model": "bal", "messages": [{"role": "user", "content": "hi"}]}))
        .send();
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the proxy answers without waiting for a cooldown")
        .expect("proxy answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_whose_circuit_is_open_gets_none_of_the_tiers_calls() {
    let first = RawUpstream::start(|_, _| Reply::Close(json_answer(&completion("first")))).await;
    let second = RawUpstream::start(|_, _| Reply::Close(server_error())).await;
    let broken = "circuit = { consecutive_failures = 2, cooldown_secs = 120 }";
    let proxy = proxy(&first, &second, "", broken, "");
    let http = reqwest::Client::new();
    let mut ok = 0;
    for _ in 0..30 {
        if ask(&http, &proxy).await.status() == 200 {
            ok += 1;
        }
    }
    assert_eq!(second.requests(), 2, "two failures open its circuit");
    assert_eq!(first.requests(), 28);
    assert_eq!(ok, 28);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_circuit_of_the_tier_open_the_next_tier_answers_at_once() {
    let first = RawUpstream::start(|_, _| Reply::Close(server_error())).await;
    let second = RawUpstream::start(|_, _| Reply::Close(server_error())).await;
    let broken = "circuit = { consecutive_failures = 1, cooldown_secs = 120 }";
    let proxy = proxy(&first, &second, broken, broken, "template = \"sorry\"");
    let http = reqwest::Client::new();
    for _ in 0..6 {
        let response = ask(&http, &proxy).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-llm-proxy-tier"], "template");
    }
    assert_eq!(first.requests() + second.requests(), 2, "one failure each");
    proxy.stop();
}
