//! Escalations: caps, pages, poisoned bodies, redaction at any size.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::common::*;
use super::{Bounded, OTHER_KEY};

const APPROVAL: (&str, &str) = ("x-require-approval", "true");

impl Bounded {
    async fn admin(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.proxy.url()))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("proxy answers");
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn approve(&self, id: &str) -> u16 {
        self.http
            .post(format!("{}/v1/escalations/{id}/resolve", self.proxy.url()))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"decision": "approve"}))
            .send()
            .await
            .expect("proxy answers")
            .status()
            .as_u16()
    }

    /// Every escalation with `status`, following the pages `limit` at a time.
    async fn all_pages(&self, status: &str, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        for _ in 0..1000 {
            let (code, page) = self
                .admin(&format!(
                    "/v1/escalations?status={status}&limit={limit}&cursor={cursor}"
                ))
                .await;
            assert_eq!(code, 200, "{page}");
            let data = page["data"].as_array().unwrap();
            assert!(data.len() <= limit);
            out.extend(data.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => {
                    assert_eq!(page["has_more"], true);
                    cursor = next.to_owned();
                }
                None => return out,
            }
        }
        panic!("pages never ended");
    }

    /// Stop and start again on the same configuration (and SQLite file).
    async fn restart(&mut self) {
        let fresh = llm_proxy::Proxy::start(&self.config).expect("proxy restarts");
        let old = std::mem::replace(&mut self.proxy, fresh);
        tokio::task::spawn_blocking(move || old.stop())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_escalations_are_capped_per_client_and_in_total() {
    let env = Bounded::start(
        "",
        "",
        "mode = \"detach\"\nmax_pending = 2\nmax_pending_per_client = 1",
    )
    .await;
    let chat = ask("smart");
    let escalate = |key| env.chat_as(key, &chat, &[APPROVAL]);
    assert_eq!(escalate(CLIENT_KEY).await.status(), 202);
    let refused = escalate(CLIENT_KEY).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("escalation.max_pending_per_client"),
        "{body}"
    );
    assert_eq!(escalate(OTHER_KEY).await.status(), 202);
    let refused: Value = escalate(OTHER_KEY).await.json().await.unwrap();
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("escalation.max_pending)"),
        "{refused}"
    );
    // Nothing was stored for the refused ones.
    let (_, all) = env.admin("/v1/escalations?status=all").await;
    let data = all["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{all}");
    assert_eq!(all["pending_total"].as_u64(), None, "only on pending lists");
    let (_, pending) = env.admin("/v1/escalations").await;
    assert_eq!(pending["pending_total"], 2);
    // The client's id, never its key, is on its escalations.
    let text = all.to_string();
    assert!(!text.contains(CLIENT_KEY) && !text.contains(OTHER_KEY));
    assert!(text.contains(&llm_proxy::client_id::client_key_id(CLIENT_KEY)));
    // A resolution makes room again.
    let id = data[0]["id"].as_str().unwrap();
    assert_eq!(env.approve(id).await, 200);
    let owner_key = if data[0]["request"]["headers"]["x-llm-proxy-client"]
        == llm_proxy::client_id::client_key_id(CLIENT_KEY).as_str()
    {
        CLIENT_KEY
    } else {
        OTHER_KEY
    };
    assert_eq!(escalate(owner_key).await.status(), 202);
    env.still_works().await;
    let metrics = env
        .http
        .get(format!("{}/metrics", env.proxy.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("llm_proxy_escalations_pending 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_escalation_list_comes_in_pages() {
    let env = Bounded::start("", "", "mode = \"detach\"").await;
    for _ in 0..5 {
        let response = env.chat_as(CLIENT_KEY, &ask("smart"), &[APPROVAL]).await;
        assert_eq!(response.status(), 202);
    }
    for limit in [1, 2, 5, 50] {
        let all = env.all_pages("pending", limit).await;
        let ids: HashSet<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!((all.len(), ids.len()), (5, 5), "limit {limit}");
    }
    for bad in ["limit=0", "limit=501", "limit=x", "cursor=nonsense"] {
        let (code, answer) = env.admin(&format!("/v1/escalations?{bad}")).await;
        assert_eq!(code, 400, "{bad}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
    }
    env.still_works().await;
}

fn nested(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

/// Bodies that nest 120 to 130 levels parse going in (up to serde_json's limit)
/// but would no longer parse a few levels deeper inside a record; 10,000 levels
/// never parse. Whatever was stored is listed, resolvable, and still there after
/// a restart; nothing hides the other escalations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_bodies_never_poison_the_store() {
    let mut env = Bounded::start(
        "max_body_bytes = 65536",
        "",
        "mode = \"detach\"\nstore = \"sqlite\"",
    )
    .await;
    let http = reqwest::Client::new();
    let mut stored = 0;
    for levels in (120..=130).chain([10_000]) {
        let body = format!(
            r#"{{"model":"smart","messages":[{{"role":"user","content":"hi"}}],"extra":{}}}"#,
            nested(levels)
        );
        let response = http
            .post(format!("{}/v1/chat/completions", env.proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .header(APPROVAL.0, APPROVAL.1)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            202 => stored += 1,
            400 => {
                let answer: Value = response.json().await.unwrap();
                assert_eq!(answer["error"]["type"], "invalid_request_error");
                assert!(levels >= 127, "{levels} levels refused: {answer}");
            }
            other => panic!("{levels} levels: {other}"),
        }
    }
    assert!(stored >= 5, "only {stored} stored");
    // A plain one next to them.
    assert_eq!(
        env.chat_as(CLIENT_KEY, &ask("smart"), &[APPROVAL])
            .await
            .status(),
        202
    );
    let pending = env.all_pages("pending", 3).await;
    assert_eq!(pending.len(), stored + 1);
    let text = serde_json::to_string(&pending).unwrap();
    assert!(text.contains("nested deeper than"), "the cut is marked");
    for escalation in &pending {
        let id = escalation["id"].as_str().unwrap();
        let (code, one) = env.admin(&format!("/v1/escalations/{id}")).await;
        assert_eq!(code, 200, "{one}");
        assert_eq!(env.approve(id).await, 200);
    }
    env.restart().await;
    let all = env.all_pages("all", 4).await;
    assert_eq!(all.len(), stored + 1);
    assert!(all.iter().all(|e| e["status"] == "approved"), "{all:?}");
    env.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_redacted_from_bodies_of_any_size() {
    let env = Bounded::start("max_body_bytes = 400000", "", "mode = \"detach\"").await;
    let filler = "lorem ipsum ".repeat(20_000);
    let body = json!({
        "model": "smart",
        "messages": [{"role": "user", "content": filler}],
        "metadata": {"api_key": "sk-hidden-secret", "password": "hunter2"},
    });
    assert!(body.to_string().len() > 200_000);
    let response = env.chat_as(CLIENT_KEY, &body, &[APPROVAL]).await;
    assert_eq!(response.status(), 202);
    let (_, list) = env.admin("/v1/escalations").await;
    let text = list.to_string();
    assert!(!text.contains("sk-hidden-secret") && !text.contains("hunter2"));
    assert!(
        text.contains("[redacted]"),
        "{}",
        &text[..text.len().min(2000)]
    );
    assert!(text.contains("[cut: "), "what is cut is marked");
    assert!(
        text.len() < 100_000,
        "the snapshot is bounded: {}",
        text.len()
    );
    env.still_works().await;
}
