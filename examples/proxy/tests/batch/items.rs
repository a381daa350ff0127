//! `POST /v1/batch`: per-item reports and cached re-runs.

use crate::common::*;
use serde_json::{json, Value};

async fn post_batch(env: &Env, body: Value) -> reqwest::Response {
    env.http
        .post(env.url("/v1/batch"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_each_item_and_a_rerun_is_cached() {
    let env = Env::start().await;
    let batch = json!({
        "batch_id": "nightly-1",
        "requests": [
            {"key": "a", "body": ask("smart")},
            {"key": "b", "body": ask("smart")},
            {"key": "c", "body": ask("no-such-model")},
            {"key": "d", "body": {"model": "smart"}},
        ]
    });
    let response = post_batch(&env, batch.clone()).await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["batch_id"], "nightly-1");
    assert_eq!(
        (report["ok"].as_u64(), report["failed"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(report["cached"], 0);
    let items = report["items"].as_array().unwrap();
    assert_eq!(items[0]["key"], "a");
    assert_eq!(items[0]["status"], "ok");
    assert_eq!(items[0]["tier"], "primary");
    assert_eq!(content(&items[0]["response"]), "Hello from primary.");
    assert_eq!(items[2]["status"], "failed");
    assert_eq!(items[2]["error"]["type"], "bad_request");
    assert_eq!(items[2]["error"]["fatal"], true);
    assert_eq!(items[2]["attempts"], 1);
    assert_eq!(items[3]["status"], "failed");
    assert_eq!(env.primary.requests(), 2);

    // The same batch again: the successes come from the store, nothing is sent.
    let again: Value = post_batch(&env, batch).await.json().await.unwrap();
    assert_eq!(
        (again["ok"].as_u64(), again["cached"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(again["items"][0]["cached"], true);
    assert_eq!(again["items"][0]["attempts"], 0);
    assert_eq!(
        content(&again["items"][1]["response"]),
        "Hello from primary."
    );
    assert_eq!(again["items"][2]["status"], "failed");
    assert_eq!(env.primary.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_items_fall_back_like_single_requests() {
    let env = Env::start().await;
    env.primary.set(|o| o.fail_rate = 1.0);
    env.secondary.set(|o| o.fail_rate = 1.0);
    let report: Value = post_batch(
        &env,
        json!({"requests": [{"key": "x", "body": ask("smart")}, {"key": "y", "body": ask("strict")}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(report["items"][0]["status"], "ok");
    assert_eq!(report["items"][0]["tier"], "template");
    assert_eq!(report["items"][0]["degraded"], true);
    assert_eq!(report["items"][1]["status"], "failed");
    // Server errors are retryable: the item was tried max_attempts times.
    assert_eq!(report["items"][1]["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_are_400() {
    let env = Env::start().await;
    let duplicate = post_batch(
        &env,
        json!({"requests": [{"key": "a", "body": ask("smart")}, {"key": "a", "body": ask("smart")}]}),
    )
    .await;
    assert_eq!(duplicate.status(), 400);
    let body: Value = duplicate.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("twice"));
    let malformed = post_batch(&env, json!({"items": []})).await;
    assert_eq!(malformed.status(), 400);
    let unauthorized = env
        .http
        .post(env.url("/v1/batch"))
        .json(&json!({"requests": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(env.primary.requests(), 0);
}
