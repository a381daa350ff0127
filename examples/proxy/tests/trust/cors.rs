//! CORS: off by default; listed origins, for the client endpoints only.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_lists_origins_for_client_endpoints_only() {
    let preflight = |env: &Env, path: &str, origin: &str| {
        env.http
            .request(reqwest::Method::OPTIONS, env.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let off = Env::start_edited(|t| t).await;
    let response = preflight(&off, "/v1/chat/completions", "https://app.example.com")
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let on = Env::start_edited(|t| {
        t.replace(
            "[auth]",
            "[auth]\ncors_allowed_origins = [\"https://app.example.com\"]",
        )
    })
    .await;
    let response = preflight(&on, "/v1/chat/completions", "https://app.example.com")
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(response
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    let other = preflight(&on, "/v1/chat/completions", "https://evil.example")
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let admin = preflight(&on, "/v1/escalations/x/resolve", "https://app.example.com")
        .await
        .unwrap();
    assert!(admin.headers().get("access-control-allow-origin").is_none());
    // An actual request from the allowed origin works and says so.
    let response = on
        .chat_with(ask("smart"), &[("origin", "https://app.example.com")])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&response, "access-control-expose-headers").contains("x-llm-proxy-tier"));
}
