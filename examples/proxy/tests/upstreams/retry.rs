//! `[retry]` and an upstream's `rate_limit` table: an upstream retried before
//! its tier falls back (only for retryable failures), and an upstream whose
//! announced limit is exhausted skipped without being called; `/v1/circuits`
//! shows both per upstream.

use crate::common::circuits;
use crate::common::raw::{
    self, completion, json_answer, two_tier_text, RawUpstream, Reply, CLIENT_KEY,
};
use llm_proxy::{Config, Proxy};

/// A response head and JSON body, with extra header lines.
fn answer(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn overloaded() -> Vec<u8> {
    answer(
        "503 Service Unavailable",
        "retry-after: 0\r\n",
        r#"{"error":{"message":"busy","type":"server_error"}}"#,
    )
}

/// The test config, with `first_table` lines added to upstream `first` and
/// `extra` tables at the end.
fn proxy(first: &RawUpstream, second: &RawUpstream, first_table: &str, extra: &str) -> Proxy {
    let text = two_tier_text(
        &first.base_url(),
        &second.base_url(),
        extra,
        "store = \"memory\"",
    )
    .replacen(
        "name = \"first\"\n",
        &format!("name = \"first\"\n{first_table}\n"),
        1,
    );
    Proxy::start(&Config::from_toml(&text).expect("test config is valid")).expect("proxy starts")
}

async fn ask(http: &reqwest::Client, proxy: &Proxy) -> reqwest::Response {
    http.post(format!("{}/v1/chat/completions", proxy.url()))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"model": "two", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("proxy answers")
}

fn tier(response: &reqwest::Response) -> &str {
    response.headers()["x-llm-proxy-tier"].to_str().unwrap()
}

/// `first` fails twice (503, `retry-after: 0`), then answers; `second` answers.
async fn flaky_first() -> (RawUpstream, RawUpstream) {
    let first = RawUpstream::start(|n, _| {
        Reply::Close(if n < 2 {
            overloaded()
        } else {
            json_answer(&completion("first"))
        })
    })
    .await;
    let second = RawUpstream::start(|_, _| Reply::Close(json_answer(&completion("second")))).await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_is_retried_before_its_tier_falls_back() {
    let (first, second) = flaky_first().await;
    let proxy = proxy(&first, &second, "", "[retry]\nmax_attempts = 3\n");
    let http = reqwest::Client::new();
    let response = ask(&http, &proxy).await;
    assert_eq!(response.status(), 200);
    assert_eq!(tier(&response), "first", "answered by the retried upstream");
    assert_eq!((first.requests(), second.requests()), (3, 0));
    let listed = circuits(&http, &proxy.url()).await;
    assert_eq!(listed[0]["upstream"], "first");
    assert_eq!(listed[0]["retry"]["retries"], 2);
    assert_eq!(listed[0]["retry"]["requests"], 1);
    assert_eq!(
        listed[1]["retry"]["requests"], 0,
        "[retry] applies to every upstream"
    );
    assert!(
        listed[0]["rate_limit"].is_null(),
        "no rate_limit table: {listed:?}"
    );
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retry_settings_the_next_tier_answers() {
    let (first, second) = flaky_first().await;
    let proxy = proxy(&first, &second, "", "");
    let response = ask(&reqwest::Client::new(), &proxy).await;
    assert_eq!(tier(&response), "second");
    assert_eq!((first.requests(), second.requests()), (1, 1));
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_bug_is_not_retried() {
    let first = RawUpstream::start(|_, _| {
        Reply::Close(answer(
            "400 Bad Request",
            "",
            r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
        ))
    })
    .await;
    let second = RawUpstream::start(|_, _| Reply::Close(json_answer(&completion("second")))).await;
    let proxy = proxy(&first, &second, "retry = { max_attempts = 5 }", "");
    let response = ask(&reqwest::Client::new(), &proxy).await;
    assert_eq!(response.status(), 400);
    assert_eq!(first.requests(), 1);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_upstream_is_skipped_without_a_call() {
    let first = RawUpstream::start(|_, _| {
        Reply::Close(answer(
            "200 OK",
            "x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: 60s\r\n",
            &completion("first"),
        ))
    })
    .await;
    let second = RawUpstream::start(|_, _| Reply::Close(json_answer(&completion("second")))).await;
    let proxy = proxy(&first, &second, "rate_limit = { max_wait_ms = 0 }", "");
    let http = reqwest::Client::new();
    assert_eq!(tier(&ask(&http, &proxy).await), "first");
    let response = ask(&http, &proxy).await;
    assert_eq!(response.status(), 200);
    assert_eq!(tier(&response), "second");
    assert_eq!(
        first.requests(),
        1,
        "nothing sent while the limit is exhausted"
    );
    let listed = circuits(&http, &proxy.url()).await;
    assert_eq!(
        listed[0]["failures"], 0,
        "a refusal of the limiter is not a failure of the upstream"
    );
    let limits = &listed[0]["rate_limit"];
    assert_eq!(limits["rejected"], 1);
    assert_eq!(
        limits["exhausted"][0]["limit"],
        "x-ratelimit-remaining-requests"
    );
    let resets_in = limits["exhausted"][0]["resets_in_ms"].as_u64().unwrap();
    assert!((50_000..=60_000).contains(&resets_in), "{resets_in}");
    let metrics = http
        .get(format!("{}/metrics", proxy.url()))
        .bearer_auth(raw::ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"llm_proxy_rate_limits_exhausted{upstream="first"} 1"#),
        "{metrics}"
    );
    proxy.stop();
}

#[test]
fn bad_retry_settings_stop_the_proxy_from_starting() {
    let text = two_tier_text(
        "http://127.0.0.1:1/v1",
        "http://127.0.0.1:2/v1",
        "[retry]\nmax_attempts = 3\nbackoff_secs = 5\nmax_backoff_secs = 1\n",
        "store = \"memory\"",
    );
    let config = Config::from_toml(&text).unwrap();
    let Err(err) = Proxy::start(&config) else {
        panic!("a backoff over its maximum is refused");
    };
    let err = err.to_string();
    assert!(
        err.contains("retry") && err.contains("max_backoff"),
        "{err}"
    );
}
