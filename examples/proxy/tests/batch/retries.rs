//! `POST /v1/batch` retries an item whose only tier failed with a retryable
//! error, up to `[batch] max_attempts`, and never retries a caller error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::raw::{
    self, completion, json_answer, server_error, two_tier_config, RawUpstream, Reply,
};
use serde_json::{json, Value};

async fn post_batch(base: &str, body: &Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/batch"))
        .bearer_auth(raw::CLIENT_KEY)
        .json(body)
        .send()
        .await
        .expect("proxy answers");
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn item(key: &str, content: &str) -> Value {
    json!({"key": key, "body": {"model": "one", "messages": [{"role": "user", "content": content}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_tier_item_whose_upstream_500s_is_retried_up_to_max_attempts() {
    // "flaky" items fail twice then answer; "down" items always fail; "bad"
    // items are a caller error (400).
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let calls = flaky_calls.clone();
    let first = RawUpstream::start(move |_, body| {
        let text = String::from_utf8_lossy(body);
        if text.contains("flaky") && calls.fetch_add(1, Ordering::SeqCst) >= 2 {
            Reply::Close(json_answer(&completion("finally")))
        } else if text.contains("bad") {
            let error = r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#;
            Reply::Close(
                format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{error}",
                    error.len()
                )
                .into_bytes(),
            )
        } else {
            Reply::Close(server_error())
        }
    })
    .await;
    let second = RawUpstream::start(|_, _| Reply::Close(server_error())).await;
    let config = two_tier_config(
        &first.base_url(),
        &second.base_url(),
        "[batch]\nmax_attempts = 3\nseed = 7\nconcurrency = 1\n",
    );
    let proxy = llm_proxy::Proxy::start(&config).unwrap();
    let report = post_batch(
        &proxy.url(),
        &json!({"requests": [item("a", "flaky"), item("b", "down"), item("c", "bad")]}),
    )
    .await;
    let items = report["items"].as_array().unwrap();
    assert_eq!(items[0]["status"], "ok", "{report}");
    assert_eq!(items[0]["attempts"], 3, "{report}");
    assert_eq!(
        items[0]["response"]["choices"][0]["message"]["content"],
        "finally"
    );
    assert_eq!(items[1]["status"], "failed", "{report}");
    assert_eq!(items[1]["attempts"], 3, "{report}");
    assert_eq!(items[1]["error"]["type"], "server_error", "{report}");
    assert_eq!(items[1]["error"]["fatal"], false, "{report}");
    assert_eq!(items[2]["status"], "failed", "{report}");
    assert_eq!(items[2]["attempts"], 1, "{report}");
    assert_eq!(items[2]["error"]["fatal"], true, "{report}");
    // 3 for the flaky item, 3 for the down one, 1 for the bad one.
    assert_eq!(first.requests(), 7);
    assert_eq!(second.requests(), 0);
    proxy.stop();
}
