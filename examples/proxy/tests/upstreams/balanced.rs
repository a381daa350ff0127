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
    // p2c decides how soon the broken upstream is tried: call until its
    // circuit is open (two failures), bounded.
    let mut calls = 0;
    while second.requests() < 2 {
        assert!(
            calls < 200,
            "p2c never tried the second upstream twice in {calls} calls"
        );
        ask(&http, &proxy).await;
        calls += 1;
    }
    let states = crate::common::circuits(&http, &proxy.url()).await;
    assert!(
        states
            .iter()
            .any(|c| c["upstream"] == "second" && c["state"] == "open"),
        "{states:?}"
    );
    // From then on it gets none of the tier's calls, and every call is answered.
    let before = first.requests();
    for _ in 0..30 {
        assert_eq!(ask(&http, &proxy).await.status(), 200);
    }
    assert_eq!(second.requests(), 2, "an open circuit gets no calls");
    assert_eq!(first.requests(), before + 30);
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
