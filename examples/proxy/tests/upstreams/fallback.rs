//! Non-streamed requests through the tiers, the circuits, and every error case.

use crate::common::*;
use llm_proxy::mock::MockUpstream;
use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_answers_when_it_is_healthy() {
    let env = Env::start().await;
    let response = env.chat(ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "primary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "false");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "Hello from primary.");
    // The tier's model name was sent upstream.
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(env.secondary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_falls_back_to_the_secondary() {
    let env = Env::start().await;
    env.primary.set(|o| o.fail_rate = 1.0);
    let response = env.chat(ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "Hello from secondary.");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(env.primary.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_primary_falls_back_to_the_secondary() {
    let env = Env::start().await;
    env.primary.set(|o| o.rate_limit_rate = 1.0);
    let response = env.chat(ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_skips_the_primary_without_calling_it() {
    let env = Env::start().await;
    env.primary.set(|o| o.fail_rate = 1.0);
    for _ in 0..2 {
        let response = env.chat(ask("smart")).await;
        assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    }
    let circuits = circuits(&env.http, &env.proxy.url()).await;
    assert_eq!(circuits[0]["upstream"], "primary");
    assert_eq!(circuits[0]["state"], "open");
    assert_eq!(circuits[1]["state"], "closed");
    let calls = env.primary.requests();
    assert_eq!(calls, 2);
    // The primary recovered, but its circuit is open: it is not asked.
    env.primary.set(|o| o.fail_rate = 0.0);
    let response = env.chat(ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(env.primary.requests(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_answers_when_every_tier_fails() {
    let env = Env::start().await;
    env.primary.set(|o| o.fail_rate = 1.0);
    env.secondary.set(|o| o.fail_rate = 1.0);
    let response = env.chat(ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "template");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), TEMPLATE);
}

/// A proxy whose primary is `primary_url`, with `primary_timeout` seconds to
/// answer; the secondary is a healthy mock.
async fn with_primary_at(primary_url: &str, primary_timeout: &str) -> (Proxy, MockUpstream) {
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        primary_url,
        &secondary.base_url(),
        &dir.path().join("escalations.db"),
        "",
    )
    .replacen(
        "timeout_secs = 5",
        &format!("timeout_secs = {primary_timeout}"),
        1,
    );
    let proxy = Proxy::start(&Config::from_toml(&text).unwrap()).unwrap();
    (proxy, secondary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_falls_back_and_its_circuit_opens() {
    // A port nothing listens on: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let (proxy, secondary) = with_primary_at(&url, "5").await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let response = post_chat(&http, &proxy.url(), &ask("smart")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    }
    // Refused connections are failures the circuit counts (2 in a row open it).
    assert_eq!(circuits(&http, &proxy.url()).await[0]["state"], "open");
    assert_eq!(secondary.requests(), 2);
    // A model without another tier now fails fast on the open circuit.
    let response = post_chat(&http, &proxy.url(), &ask("solo")).await;
    assert_eq!(response.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_does_not_answer_in_time_falls_back() {
    let primary = mock("primary").await;
    primary.set(|o| o.stall_rate = 1.0);
    let (proxy, _secondary) = with_primary_at(&primary.base_url(), "0.3").await;
    let http = reqwest::Client::new();
    let response = post_chat(&http, &proxy.url(), &ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(primary.requests(), 1);
}

async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert!(header(&response, "content-type").starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(body["error"]["type"].is_string());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400() {
    let env = Env::start().await;
    let response = env
        .http
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body("{\"model\": \"smart\", \"messages\": [")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_request").await;
    // Valid JSON that is not a chat request is a 400 as well.
    let response = env.chat(json!({"model": "smart"})).await;
    assert_error(response, 400, "invalid_request").await;
    let response = env.chat(json!(["not", "an", "object"])).await;
    assert_error(response, 400, "invalid_request").await;
    // The proxy is still up.
    assert_eq!(env.chat(ask("smart")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_404() {
    let env = Env::start().await;
    let response = env.chat(ask("gpt-9")).await;
    let body = assert_error(response, 404, "model_not_found").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("gpt-9"));
    assert_eq!(env.primary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let env = Env::start().await;
    let huge = "x".repeat(10_000);
    let body = json!({"model": "smart", "messages": [{"role": "user", "content": huge}]});
    let response = env.chat(body).await;
    assert_error(response, 413, "request_too_large").await;
    // Without a content-length (chunked), the limit holds too.
    let chunks =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let response = env
        .http
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "request_too_large").await;
    assert_eq!(env.primary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_in_pieces_is_read_whole() {
    let env = Env::start().await;
    let body = serde_json::to_vec(&ask("smart")).unwrap();
    let pieces: Vec<Vec<u8>> = body.chunks(7).map(<[u8]>::to_vec).collect();
    let chunks = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
    let response = env
        .http
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "Hello from primary.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_key_is_401() {
    let env = Env::start().await;
    let no_key = env
        .http
        .post(env.url("/v1/chat/completions"))
        .json(&ask("smart"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&no_key, "www-authenticate"), "Bearer");
    assert_error(no_key, 401, "invalid_api_key").await;
    let wrong = env
        .http
        .post(env.url("/v1/chat/completions"))
        .bearer_auth("not-the-key")
        .json(&ask("smart"))
        .send()
        .await
        .unwrap();
    assert_error(wrong, 401, "invalid_api_key").await;
    // An admin key is not a client key.
    let admin = env
        .http
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .json(&ask("smart"))
        .send()
        .await
        .unwrap();
    assert_error(admin, 401, "invalid_api_key").await;
    let models = env.http.get(env.url("/v1/models")).send().await.unwrap();
    assert_error(models, 401, "invalid_api_key").await;
    assert_eq!(env.primary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_rate_limited_is_429_with_retry_after() {
    let env = Env::start().await;
    env.primary.set(|o| {
        o.rate_limit_rate = 1.0;
        o.retry_after_secs = 9;
    });
    env.secondary.set(|o| {
        o.rate_limit_rate = 1.0;
        o.retry_after_secs = 7;
    });
    let response = env.chat(ask("strict")).await;
    assert_eq!(header(&response, "retry-after"), "7");
    assert_error(response, 429, "rate_limited").await;
    // A single-tier model reports its tier's rate limit the same way.
    let response = env.chat(ask("solo")).await;
    assert_eq!(header(&response, "retry-after"), "9");
    assert_error(response, 429, "rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_circuit_open_is_503_with_retry_after() {
    let env = Env::start().await;
    env.primary.set(|o| o.fail_rate = 1.0);
    env.secondary.set(|o| o.fail_rate = 1.0);
    // Two failures each trip both circuits; those calls are upstream errors.
    for _ in 0..2 {
        let response = env.chat(ask("strict")).await;
        assert_error(response, 502, "all_tiers_failed").await;
    }
    let calls = (env.primary.requests(), env.secondary.requests());
    let response = env.chat(ask("strict")).await;
    let retry_after: u64 = header(&response, "retry-after").parse().unwrap();
    // The cooldown (60 s) plus up to 10% jitter.
    assert!((1..=67).contains(&retry_after), "{retry_after}");
    assert_error(response, 503, "circuit_open").await;
    assert_eq!((env.primary.requests(), env.secondary.requests()), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let env = Env::start().await;
    let models: Value = env
        .http
        .get(env.url("/v1/models"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smart", "solo", "strict"]);
    assert_eq!(
        models["data"][0]["tiers"],
        json!(["primary/gpt-4o", "secondary/gpt-4o-mini", "template"])
    );
    let health = env.http.get(env.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    env.primary.set(|o| o.fail_rate = 1.0);
    assert_eq!(env.chat(ask("smart")).await.status(), 200);
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for name in [
        "llm_proxy_requests_total",
        "llm_proxy_request_duration_seconds_bucket",
        "llm_proxy_answers_total{tier=\"secondary\",degraded=\"true\"}",
        "llm_proxy_circuit_state{upstream=\"primary\"}",
        "llm_fallback_degraded_total",
        "llm_proxy_escalations_pending",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    let missing = env.http.get(env.url("/nope")).send().await.unwrap();
    assert_error(missing, 404, "not_found").await;
}
