//! Shutdown and vanished clients leave nobody waiting in silence: on SIGTERM a
//! request waiting for a human gets an OpenAI-format error with its escalation
//! id and resume token before the grace period ends, a stream still open gets
//! an error event, and after a restart the decision is picked up with the
//! token; an escalation whose waiting client went away reads `abandoned`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::raw::{
    completion, json_answer, sse_chunk, two_tier_config, two_tier_text, RawUpstream, Reply,
    ADMIN_KEY, CLIENT_KEY, SSE_HEAD,
};
use serde_json::{json, Value};

use super::{run_binary, Running};
use crate::common::{get_json, wait_pending};

/// `llm-proxy --config PATH`; its base URL.
fn run(path: &std::path::Path) -> (Running, String) {
    let (running, url, _) = run_binary(&["--config", path.to_str().unwrap(), "--workers", "1"]);
    (running, url)
}

/// Answers a stream with one chunk and then holds it open; other requests whole.
async fn upstream() -> RawUpstream {
    RawUpstream::start(|_, body| {
        let streamed = serde_json::from_slice::<Value>(body).is_ok_and(|v| v["stream"] == true);
        if streamed {
            Reply::Hold(format!("{SSE_HEAD}{}", sse_chunk("Hel")).into_bytes())
        } else {
            Reply::Close(json_answer(&completion("approved answer")))
        }
    })
    .await
}

fn ask(stream: bool) -> Value {
    json!({"model": "two", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_waiters_with_their_token_ends_streams_and_the_decision_survives() {
    let first = upstream().await;
    let second = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("escalations.db");
    let text = two_tier_text(
        &first.base_url(),
        &second.base_url(),
        "[limits]\nshutdown_grace_secs = 2\n",
        &format!(
            "store = \"sqlite\"\nsqlite_path = {:?}\ntimeout_secs = 120\npoll_interval_secs = 0.1",
            db.display().to_string()
        ),
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let (mut running, base) = run(&path);
    let http = reqwest::Client::new();
    let chat = |stream: bool| {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&ask(stream))
    };

    // A request waiting for a human, and a stream in flight.
    let waiter = tokio::spawn(chat(false).header("x-require-approval", "true").send());
    let escalation = wait_pending(&http, &base, 1).await.remove(0);
    let id = escalation["id"].as_str().unwrap().to_owned();
    let mut stream = chat(true).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let first_chunk = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first_chunk).contains("Hel"));

    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // The waiter is answered at once, well before the 2 s grace period ends.
    let answer = waiter.await.unwrap().expect("the waiter is answered");
    let waited = signalled.elapsed();
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");
    assert_eq!(answer.status(), 503);
    let token = answer.headers()["x-resume-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let error: Value = answer.json().await.unwrap();
    assert_eq!(error["error"]["code"], "proxy_restarting");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("restarting"));
    assert_eq!(error["escalation"]["id"], id.as_str());
    assert_eq!(error["escalation"]["resume_token"], token.as_str());

    // The stream still open ends with an error event, not a silent cut.
    let mut rest = String::new();
    while let Ok(Some(chunk)) = stream.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.contains("event: error"), "{rest:?}");
    assert!(rest.contains("restarting"), "{rest:?}");
    assert!(!rest.contains("[DONE]"), "{rest:?}");

    let status = tokio::task::spawn_blocking(move || running.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");

    // After a restart: still pending, resolvable, and the client picks it up.
    let (_running, base) = run(&path);
    let record: Value = get_json(&http, &format!("{base}/v1/escalations/{id}"), ADMIN_KEY).await;
    assert_eq!(record["status"], "pending", "{record}");
    let resolved = http
        .post(format!("{base}/v1/escalations/{id}/resolve"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"decision": "approve", "by": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status(), 200);
    let resumed = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-resume-token", &token)
        .json(&ask(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let body: Value = resumed.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], "approved answer",
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_whose_waiting_client_went_away_reads_abandoned() {
    let first = upstream().await;
    let second = upstream().await;
    let proxy =
        llm_proxy::Proxy::start(&two_tier_config(&first.base_url(), &second.base_url(), ""))
            .unwrap();
    let base = proxy.url();
    let http = reqwest::Client::new();
    let waiter = tokio::spawn(
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-require-approval", "true")
            .json(&ask(false))
            .send(),
    );
    let id = wait_pending(&http, &base, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The client goes away: its connection closes.
    waiter.abort();
    let _ = waiter.await;
    let mut status = Value::Null;
    for _ in 0..500 {
        let record: Value =
            get_json(&http, &format!("{base}/v1/escalations/{id}"), ADMIN_KEY).await;
        status = record["status"].clone();
        if status == "abandoned" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "abandoned");
    // Nobody waits: it is not listed as pending, and the list says so.
    let list: Value = get_json(
        &http,
        &format!("{base}/v1/escalations?status=abandoned"),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(list["data"][0]["id"], id.as_str());
    let list: Value = get_json(&http, &format!("{base}/v1/escalations"), ADMIN_KEY).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");
    // Resolving it is refused, clearly.
    let resolved = http
        .post(format!("{base}/v1/escalations/{id}/resolve"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status(), 409);
    let error: Value = resolved.json().await.unwrap();
    assert_eq!(error["error"]["code"], "escalation_abandoned");
    proxy.stop();
}
