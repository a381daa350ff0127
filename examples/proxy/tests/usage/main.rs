//! Usage records and `GET /v1/usage`: exact numbers after a mix of requests,
//! checked against the mock's usage (5 prompt and 5 completion tokens an
//! answer) and the configured prices.

mod budgets;
mod cache;
#[path = "../common/mod.rs"]
mod common;

use common::{ask, get_json, Env, ADMIN_KEY, CLIENT_KEY};
use llm_proxy::client_id::client_key_id;
use serde_json::{json, Value};

/// The test config with prices for the mock's models ($ per million tokens).
async fn env() -> Env {
    Env::start_edited(|text| {
        format!(
            "{text}\n[usage]\nenabled = true\n[usage.prices.\"gpt-4o\"]\ninput = 2.5\noutput = 10.0\n\
             [usage.prices.\"gpt-4o-mini\"]\ninput = 0.15\noutput = 0.6\n"
        )
    })
    .await
}

fn group<'a>(answer: &'a Value, model: &str) -> &'a Value {
    answer["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["model"] == model)
        .unwrap_or_else(|| panic!("no group for {model}: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_after_a_mix_of_requests_is_exact() {
    let env = env().await;
    for _ in 0..2 {
        assert_eq!(env.chat(ask("smart")).await.status(), 200);
    }
    assert_eq!(env.chat(ask("solo")).await.status(), 200);
    // A degraded answer: the secondary's model, priced as such.
    env.primary.set(|o| o.fail_rate = 1.0);
    let degraded = env.chat(ask("strict")).await;
    assert_eq!(common::header(&degraded, "x-llm-proxy-degraded"), "true");
    // A failure is not a record.
    assert_ne!(env.chat(ask("solo")).await.status(), 200);

    let own = get_json(&env.http, &env.url("/v1/usage"), CLIENT_KEY).await;
    let smart = group(&own, "smart");
    // 2 × (5 × 2500 + 5 × 10000) nano-dollars
    assert_eq!(
        (
            smart["requests"].clone(),
            smart["input_tokens"].clone(),
            smart["output_tokens"].clone()
        ),
        (json!(2), json!(10), json!(10))
    );
    assert_eq!(smart["cost_nano_usd"], 125_000);
    assert_eq!(group(&own, "solo")["cost_nano_usd"], 62_500);
    let strict = group(&own, "strict");
    // 5 × 150 + 5 × 600 at gpt-4o-mini's prices
    assert_eq!(
        (strict["degraded"].clone(), strict["cost_nano_usd"].clone()),
        (json!(1), json!(3_750))
    );
    assert_eq!(own["totals"]["requests"], 4);
    assert_eq!(own["totals"]["cost_nano_usd"], 125_000 + 62_500 + 3_750);
    assert!(
        own["groups"][0].get("client").is_none(),
        "grouped by model and day"
    );

    let all = get_json(
        &env.http,
        &env.url("/v1/admin/usage?group_by=client"),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(all["groups"].as_array().unwrap().len(), 1);
    assert_eq!(all["groups"][0]["client"], client_key_id(CLIENT_KEY));
    assert_eq!(all["groups"][0]["requests"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_range_and_a_client_filter_narrow_the_answer() {
    let env = env().await;
    assert_eq!(env.chat(ask("solo")).await.status(), 200);
    let past = get_json(&env.http, &env.url("/v1/usage?from=0&to=1000"), CLIENT_KEY).await;
    assert_eq!(past["totals"]["requests"], 0);
    let other = get_json(
        &env.http,
        &env.url("/v1/admin/usage?client=0000000000000000"),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(other["totals"]["requests"], 0);
    let rfc = get_json(
        &env.http,
        &env.url("/v1/usage?from=2000-01-01T00:00:00Z"),
        CLIENT_KEY,
    )
    .await;
    assert_eq!(rfc["totals"]["requests"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_and_wrong_keys_are_refused() {
    let env = env().await;
    let get = |path: &str, key: &str| env.http.get(env.url(path)).bearer_auth(key).send();
    assert_eq!(
        get("/v1/usage?group_by=tier", CLIENT_KEY)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get("/v1/usage?from=yesterday", CLIENT_KEY)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get("/v1/usage?from=10&to=5", CLIENT_KEY)
            .await
            .unwrap()
            .status(),
        400
    );
    // A client cannot read another client's usage, nor the admin view.
    assert_eq!(
        get("/v1/usage?client=x", CLIENT_KEY)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get("/v1/admin/usage", CLIENT_KEY).await.unwrap().status(),
        401
    );
    assert_eq!(get("/v1/usage", "wrong").await.unwrap().status(), 401);
    // Normal requests still work.
    assert_eq!(get("/v1/usage", CLIENT_KEY).await.unwrap().status(), 200);
}

/// An OpenAI-compatible upstream whose streams end with the usage chunk when
/// (and only when) the request asks for it.
async fn usage_streaming_upstream() -> common::raw::RawUpstream {
    use common::raw::{sse_chunk, Reply, SSE_HEAD};
    common::raw::RawUpstream::start(|_, body| {
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let mut stream = format!("{SSE_HEAD}{}", sse_chunk("Hello"));
        stream.push_str(
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"model-a\",\
             \"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        );
        if request["stream_options"]["include_usage"] == true {
            stream.push_str(
                "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"model-a\",\
                 \"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":4}}\n\n",
            );
        }
        stream.push_str("data: [DONE]\n\n");
        Reply::Close(stream.into_bytes())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_asked_for_usage_and_the_chunk_reaches_only_clients_who_asked() {
    let upstream = usage_streaming_upstream().await;
    let config = common::raw::two_tier_config(
        &upstream.base_url(),
        &upstream.base_url(),
        // Priced by the model the stream reports (`raw`, its first chunk).
        "[usage]\nenabled = true\n[usage.prices.\"raw\"]\ninput = 1.0\noutput = 2.0\n",
    );
    let proxy = llm_proxy::Proxy::start(&config).unwrap();
    let http = reqwest::Client::new();
    let stream = |body: Value| {
        http.post(format!("{}/v1/chat/completions", proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
    };
    let plain = stream(json!({"model": "one", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(!plain.contains("usage"), "not asked for: {plain}");
    assert!(
        plain.contains("Hello") && plain.ends_with("data: [DONE]\n\n"),
        "{plain}"
    );
    let asked = stream(json!({"model": "one", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]}))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(asked.contains("\"prompt_tokens\":11"), "asked for: {asked}");
    // The upstream was asked both times; the client's own request unchanged.
    let bodies = upstream.bodies();
    for body in &bodies {
        let sent: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
    }

    let usage = get_json(&http, &format!("{}/v1/usage", proxy.url()), CLIENT_KEY).await;
    let one = group(&usage, "one");
    assert_eq!(
        (one["requests"].clone(), one["input_tokens"].clone()),
        (json!(2), json!(22))
    );
    assert_eq!(one["output_tokens"], 8);
    // 2 × (11 × 1000 + 4 × 2000) nano-dollars
    assert_eq!(one["cost_nano_usd"], 38_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_off_by_default_and_says_so() {
    let env = Env::start().await;
    assert_eq!(env.chat(ask("solo")).await.status(), 200);
    let response = env
        .http
        .get(env.url("/v1/usage"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "usage_disabled");
}
