//! Escalations: rules, the admin API, and restarts.

use crate::common::*;
use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};

const APPROVAL: (&str, &str) = ("x-require-approval", "true");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_approval_and_gets_the_human_answer() {
    let env = Env::start().await;
    let waiting = env.waiting_for_approval(ask("smart"));
    let pending = env.pending(1).await;
    let escalation = &pending[0];
    assert_eq!(escalation["reason"], "the client asked for human approval");
    assert_eq!(escalation["model"], "smart");
    assert_eq!(escalation["stage"], "request");
    assert_eq!(
        escalation["request"]["body"]["messages"][0]["content"],
        "Say hello"
    );
    // No credential reached the store.
    assert!(!escalation.to_string().contains(CLIENT_KEY));
    assert!(escalation.get("token_hash").is_none());
    assert_eq!(env.primary.requests(), 0, "the gate holds the call");

    let id = escalation["id"].as_str().unwrap();
    let one: Value = env
        .admin_get(&format!("/v1/escalations/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["status"], "pending");

    let resolved = env
        .resolve(
            id,
            json!({"decision": "answer", "answer": "A human says hi.", "by": "alice"}),
        )
        .await;
    assert_eq!(resolved.status(), 200);
    let record: Value = resolved.json().await.unwrap();
    assert_eq!(record["status"], "answered");
    assert_eq!(record["resolution"]["resolved_by"], "alice");

    let response = waiting.await.unwrap().expect("proxy answers");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "human");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "A human says hi.");
    assert_eq!(env.primary.requests(), 0);

    // Resolving twice is a conflict; an unknown id is a 404.
    assert_eq!(
        env.resolve(id, json!({"decision": "approve"}))
            .await
            .status(),
        409
    );
    assert_eq!(
        env.resolve("esc_nope", json!({"decision": "approve"}))
            .await
            .status(),
        404
    );
    assert_eq!(
        env.resolve(id, json!({"decision": "maybe"})).await.status(),
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_lets_the_call_go_on_and_rejection_is_403() {
    let env = Env::start().await;
    let send = || {
        let http = env.http.clone();
        let url = env.url("/v1/chat/completions");
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(CLIENT_KEY)
                .header(APPROVAL.0, APPROVAL.1)
                .json(&ask("smart"))
                .send()
                .await
                .unwrap()
        })
    };
    let approved = send();
    let id = env.pending(1).await[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        env.resolve(&id, json!({"decision": "approve"}))
            .await
            .status(),
        200
    );
    let response = approved.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "primary");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "Hello from primary.");

    let rejected = send();
    let id = env.pending(1).await[0]["id"].as_str().unwrap().to_owned();
    let reject = json!({"decision": "reject", "reason": "not today"});
    assert_eq!(env.resolve(&id, reject).await.status(), 200);
    let response = rejected.await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not today"));
    assert_eq!(env.primary.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_json_when_json_was_asked_for_is_reviewed() {
    let env = Env::start().await;
    let mut request = ask("smart");
    request["response_format"] = json!({"type": "json_object"});
    // The same request without the JSON ask is answered at once.
    assert_eq!(env.chat(ask("smart")).await.status(), 200);
    let waiting = {
        let http = env.http.clone();
        let url = env.url("/v1/chat/completions");
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(CLIENT_KEY)
                .json(&request)
                .send()
                .await
                .unwrap()
        })
    };
    let pending = env.pending(1).await;
    assert_eq!(pending[0]["stage"], "response");
    assert!(pending[0]["reason"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert_eq!(pending[0]["draft_answer"], "Hello from primary.");
    let id = pending[0]["id"].as_str().unwrap();
    let fixed = json!({"decision": "answer", "answer": "{\"greeting\": \"hello\"}"});
    assert_eq!(env.resolve(id, fixed).await.status(), 200);
    let response = waiting.await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let answer: Value = serde_json::from_str(content(&body)).unwrap();
    assert_eq!(answer["greeting"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_need_the_admin_key() {
    let env = Env::start().await;
    for key in [None, Some(CLIENT_KEY), Some("wrong")] {
        let mut request = env.http.get(env.url("/v1/escalations"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        assert_eq!(request.send().await.unwrap().status(), 401);
        let mut resolve = env
            .http
            .post(env.url("/v1/escalations/esc_x/resolve"))
            .json(&json!({"decision": "approve"}));
        if let Some(key) = key {
            resolve = resolve.bearer_auth(key);
        }
        assert_eq!(resolve.send().await.unwrap().status(), 401);
    }
    let page = env.http.get(env.url("/escalations")).send().await.unwrap();
    assert_eq!(page.status(), 401);
    let html = page.text().await.unwrap();
    assert!(html.contains("Admin key") && !html.contains("Pending escalations"));
    assert_eq!(env.admin_get("/v1/escalations").await.status(), 200);
    let page = env.admin_get("/escalations").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Pending escalations"));
}

fn restart(config: &Config) -> Proxy {
    Proxy::start(config).expect("the proxy starts again")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_escalations_survive_a_restart_and_can_be_resolved() {
    let env = Env::start().await;
    let waiting = env.waiting_for_approval(ask("smart"));
    let id = env.pending(1).await[0]["id"].as_str().unwrap().to_owned();
    let Env {
        proxy,
        config,
        http,
        dir,
        ..
    } = env;
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
    // The waiting client was told the proxy is restarting, with its token.
    let told = waiting.await.unwrap().expect("the waiter is answered");
    assert_eq!(told.status(), 503);
    assert!(!header(&told, "x-resume-token").is_empty());
    let told: Value = told.json().await.unwrap();
    assert_eq!(told["error"]["code"], "proxy_restarting");
    assert_eq!(told["escalation"]["id"], id.as_str());

    let proxy = restart(&config);
    let pending = wait_pending(&http, &proxy.url(), 1).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["id"], id.as_str());
    assert_eq!(pending[0]["reason"], "the client asked for human approval");
    let resolved = http
        .post(format!("{}/v1/escalations/{id}/resolve", proxy.url()))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"decision": "reject", "reason": "too late"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status(), 200);
    let record: Value = http
        .get(format!("{}/v1/escalations/{id}", proxy.url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "rejected");
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_escalations_resume_with_their_token_after_a_restart() {
    let env = Env::with_escalation("mode = \"detach\"").await;
    let response = env.chat_with(ask("smart"), &[APPROVAL]).await;
    assert_eq!(response.status(), 202);
    let token_header = header(&response, "x-resume-token");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "pending_human_review");
    let token = body["escalation"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(token, token_header);
    let id = body["escalation"]["id"].as_str().unwrap().to_owned();

    // Too early: still pending.
    let early = env
        .chat_with(ask("smart"), &[("x-resume-token", &token)])
        .await;
    assert_eq!(early.status(), 202);

    let Env {
        proxy,
        config,
        http,
        dir,
        primary,
        secondary,
        ..
    } = env;
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
    let proxy = restart(&config);
    let resolved = http
        .post(format!("{}/v1/escalations/{id}/resolve", proxy.url()))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"decision": "answer", "answer": "Resumed after a restart."}))
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status(), 200);
    let resume = || {
        http.post(format!("{}/v1/chat/completions", proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .header("x-resume-token", &token)
            .json(&ask("smart"))
            .send()
    };
    let response = resume().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "Resumed after a restart.");
    // A token resumes once.
    assert_eq!(resume().await.unwrap().status(), 409);
    let bogus = http
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .bearer_auth(CLIENT_KEY)
        .header("x-resume-token", "garbage")
        .json(&ask("smart"))
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), 400);
    assert_eq!(primary.requests() + secondary.requests(), 0);
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
    drop(dir);
}
