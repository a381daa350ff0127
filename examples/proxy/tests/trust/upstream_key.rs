//! An upstream's rejected key neither leaks to the client nor blocks the next
//! tier.

use super::*;

/// An upstream that refuses every key, and echoes it in its body and a header.
async fn key_echoing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move |headers: http::HeaderMap| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = json!({"error": {
                "message": format!("Incorrect API key provided: {auth}"),
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }});
            (
                http::StatusCode::UNAUTHORIZED,
                [
                    ("x-echo-authorization", auth),
                    ("content-type", "application/json".to_owned()),
                ],
                body.to_string(),
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), hits)
}

const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_falls_back_counts_and_never_reaches_the_client() {
    std::env::set_var("TRUST_TEST_UPSTREAM_KEY", UPSTREAM_KEY);
    let (refusing, refused) = key_echoing_upstream().await;
    let env = Env::start_edited(|text| {
        text.replacen(
            "kind = \"openai\"",
            "kind = \"openai\"\napi_key_env = \"TRUST_TEST_UPSTREAM_KEY\"",
            1,
        )
        .replacen(
            &text[text.find("base_url = \"").unwrap()..]
                .lines()
                .next()
                .unwrap()
                .to_owned(),
            &format!("base_url = \"{refusing}\""),
            1,
        )
    })
    .await;

    // The next tier, with its own key, answers.
    let response = env.chat(ask("strict")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
    assert_eq!(refused.load(Ordering::SeqCst), 1);

    // A second refusal opens the primary's circuit (consecutive_failures = 2).
    assert_eq!(env.chat(ask("strict")).await.status(), 200);
    let circuits = circuits(&env.http, &env.proxy.url()).await;
    let primary = circuits
        .iter()
        .find(|c| c["upstream"] == "primary")
        .unwrap();
    assert_eq!(primary["state"], "open", "{primary}");
    assert_eq!(refused.load(Ordering::SeqCst), 2);

    // Its circuit open, a single-tier model fails fast; nothing of the
    // upstream's answer reaches the client.
    let response = env.chat(ask("solo")).await;
    assert_eq!(response.status(), 503);
    let headers = format!("{:?}", response.headers());
    let body = response.text().await.unwrap();
    assert!(!body.contains(UPSTREAM_KEY) && !headers.contains(UPSTREAM_KEY));
    assert!(!headers.contains("x-echo-authorization"), "{headers}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "circuit_open", "{body}");

    // Every tier refusing its key: a 502 naming each failure's kind.
    let (refusing_too, _) = key_echoing_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&refusing, &refusing_too, &dir.path().join("e.db"), "").replacen(
        "kind = \"openai\"",
        "kind = \"openai\"\napi_key_env = \"TRUST_TEST_UPSTREAM_KEY\"",
        2,
    );
    let proxy = Proxy::start(&Config::from_toml(&text).unwrap()).unwrap();
    let response = post_chat(&env.http, &proxy.url(), &ask("strict")).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "all_tiers_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("primary: auth"), "{message}");
    assert!(message.contains("secondary: auth"), "{message}");
    // Right after: a model with a template still answers.
    let response = post_chat(&env.http, &proxy.url(), &ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "template");
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
}
