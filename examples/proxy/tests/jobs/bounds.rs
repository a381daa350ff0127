//! Asynchronous batches' bounds and boundaries: no Redis, too many items, a
//! body over its limit, malformed JSONL, bad ids and pages, another client's
//! batch, an unreachable store; the worker's start-up errors and its graceful
//! stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};

use super::redis_server::RedisServer;
use super::upstream::{prompt, Upstream};
use super::{batch_body, config_text, redis_state, serve, Client, Served, Worker, KEY_A, KEY_B};

fn jsonl(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| {
            json!({"key": key, "body": {"model": "m",
                "messages": [{"role": "user", "content": prompt(0)}]}})
            .to_string()
                + "\n"
        })
        .collect()
}

fn code(error: &Value) -> &str {
    error["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_async_mode_is_a_clear_400_and_in_process_batches_still_work() {
    let upstream = Upstream::start().await;
    let text = config_text(&upstream.base_url(), "", "");
    let proxy = Proxy::start(&Config::from_toml(&text).unwrap()).unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        base: proxy.url(),
    };
    let (status, error) = client
        .post(KEY_A, &[("prefer", "respond-async")], batch_body("x", 1))
        .await;
    assert_eq!(status, 400, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("redis_url"), "{message}");
    let (status, error) = client
        .post(
            KEY_A,
            &[("content-type", "application/jsonl")],
            jsonl(&["a"]),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = client.get(KEY_A, "/v1/batch/x").await;
    assert_eq!(status, 400, "{error}");
    // The in-process mode answers as before.
    let (status, report) = client.post(KEY_A, &[], batch_body("x", 1)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["items"][0]["status"], "ok", "{report}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_and_reports_are_bounded_and_scoped_to_their_client() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let text = config_text(
        &upstream.base_url(),
        &redis_state(&redis),
        "max_async_items = 5\nmax_async_body_bytes = 4000",
    )
    .replace("[limits]\n", "[limits]\nmax_body_bytes = 1500\n");
    let proxy = Proxy::start(&Config::from_toml(&text).unwrap()).unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        base: proxy.url(),
    };
    let async_json = [("prefer", "respond-async")];
    let jsonl_type = [("content-type", "application/jsonl")];

    // Bounds: items, body bytes, JSONL lines, keys, ids.
    let (status, error) = client.post(KEY_A, &async_json, batch_body("big", 6)).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_async_items"));
    let padded = json!({"batch_id": "big", "requests": [], "pad": "x".repeat(5000)}).to_string();
    let (status, error) = client.post(KEY_A, &async_json, padded).await;
    assert_eq!(status, 413, "{error}");
    // Batch bodies have their own, larger limit; every other request keeps
    // limits.max_body_bytes.
    let mut roomy: Value = serde_json::from_str(&batch_body("roomy", 1)).unwrap();
    roomy["pad"] = "x".repeat(2000).into();
    let (status, error) = client.post(KEY_A, &[], roomy.to_string()).await;
    assert_eq!(status, 413, "in-process: {error}");
    let (status, accepted) = client.post(KEY_A, &async_json, roomy.to_string()).await;
    assert_eq!(status, 202, "{accepted}");
    let (status, error) = client
        .post(
            KEY_A,
            &jsonl_type,
            format!("{}{{\"key\": 1}}\n", jsonl(&["a"])),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("line 2"));
    let (status, error) = client
        .post(KEY_A, &jsonl_type, jsonl(&["a", "b", "c", "d", "e", "f"]))
        .await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = client.post(KEY_A, &jsonl_type, jsonl(&["a", "a"])).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("twice"));
    let (status, error) = client.post(KEY_A, &jsonl_type, jsonl(&["a/b"])).await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = client.post(KEY_A, &async_json, "{".into()).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]["message"].is_string(), "{error}");

    // A JSONL batch named in the query; without a name, one is made.
    let path_jsonl = [("content-type", "application/jsonl")];
    let response = client
        .http
        .post(format!("{}/v1/batch?batch_id=lines", client.base))
        .bearer_auth(KEY_A)
        .header("content-type", "application/jsonl")
        .body(jsonl(&["a", "b", "c"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["location"], "/v1/batch/lines");
    assert_eq!(response.headers()["preference-applied"], "respond-async");
    let accepted: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (&accepted["id"], &accepted["pushed"]),
        (&json!("lines"), &json!(3))
    );
    let (status, named) = client.post(KEY_A, &path_jsonl, jsonl(&["a"])).await;
    assert_eq!(status, 202, "{named}");
    assert!(named["id"].as_str().unwrap().starts_with("b-"), "{named}");

    // The report while no worker runs: every item pending, paged.
    let (status, report) = client.get(KEY_A, "/v1/batch/lines?limit=2").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["status"], "in_progress");
    assert_eq!(
        report["progress"],
        json!({"total": 3, "done": 0, "failed": 0, "pending": 3, "in_flight": 0})
    );
    assert_eq!(report["items"][0]["status"], "pending");
    assert_eq!(report["next_after"], "b");
    let (status, rest) = client.get(KEY_A, "/v1/batch/lines?after=b").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_after"], Value::Null);
    for bad in ["limit=0", "limit=1001", "limit=x", "after=a%2Fb"] {
        let (status, error) = client.get(KEY_A, &format!("/v1/batch/lines?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {error}");
    }
    let (status, error) = client.get(KEY_A, "/v1/batch/nothing").await;
    assert_eq!((status, code(&error)), (404, "batch_not_found"));

    // Another client: not found, and its same id is another batch.
    let (status, error) = client.get(KEY_B, "/v1/batch/lines").await;
    assert_eq!((status, code(&error)), (404, "batch_not_found"));
    let (status, theirs) = client.post(KEY_B, &jsonl_type, jsonl(&["a"])).await;
    assert_eq!(status, 202, "{theirs}");
    let response = client
        .http
        .post(format!("{}/v1/batch?batch_id=lines", client.base))
        .bearer_auth(KEY_B)
        .header("content-type", "application/jsonl")
        .body(jsonl(&["a", "b", "c"]))
        .send()
        .await
        .unwrap();
    let theirs: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(theirs["pushed"], 3, "{theirs}");
    // No key at all: refused before anything is read.
    let response = client
        .http
        .get(format!("{}/v1/batch/lines", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The store gone: 503 store_unavailable, nothing else breaks.
    drop(redis);
    let (status, error) = client.get(KEY_A, "/v1/batch/lines").await;
    assert_eq!(
        (status, code(&error)),
        (503, "store_unavailable"),
        "{error}"
    );
    let (status, error) = client.post(KEY_A, &jsonl_type, jsonl(&["z"])).await;
    assert_eq!(
        (status, code(&error)),
        (503, "store_unavailable"),
        "{error}"
    );
    let chat = client
        .http
        .post(format!("{}/v1/chat/completions", client.base))
        .bearer_auth(KEY_A)
        .body(r#"{"model": "m", "messages": [{"role": "user", "content": "item-0000"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    proxy.stop();
}

#[tokio::test]
async fn the_worker_needs_redis_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let without = dir.path().join("no-redis.toml");
    std::fs::write(&without, config_text(&upstream.base_url(), "", "")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
        .args(["worker", "--config"])
        .arg(&without)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis_url"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
        .arg("worker")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--config"));

    let redis = RedisServer::start();
    let with = dir.path().join("redis.toml");
    let text = config_text(&upstream.base_url(), &redis_state(&redis), "");
    std::fs::write(&with, &text).unwrap();
    let proxy = Proxy::start(&Config::from_toml(&text).unwrap()).unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        base: proxy.url(),
    };
    let mut worker = Worker::start(&with, dir.path().join("worker.log"));
    // An item in flight when SIGTERM comes (held at the upstream's gate) is
    // finished before the worker exits.
    upstream.close_gate();
    let (status, accepted) = client
        .post(KEY_A, &[("prefer", "respond-async")], batch_body("term", 1))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let started = Instant::now();
    while upstream.held_now() == 0 {
        assert!(
            worker.child.try_wait().unwrap().is_none(),
            "the worker exited: {}",
            std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default()
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no call arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Command::new("kill")
        .args(["-TERM", &worker.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Once it says it is stopping, the held call answers (a 500: retried
    // once, within the grace period).
    let log = dir.path().join("worker.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("stopping")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no stop logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    upstream.open_gate();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default()
    );
    let (status, report) = client.get(KEY_A, "/v1/batch/term").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["items"][0]["status"], "ok", "{report}");
    assert_eq!(upstream.successes()[&prompt(0)], 1);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_answers_are_recorded_in_usage_for_the_submitting_key() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[usage]\nenabled = true\n",
        config_text(&upstream.base_url(), &redis_state(&redis), "")
    );
    let Served {
        proxy,
        client,
        path,
    } = serve(dir.path(), &text);
    let _worker = Worker::start(&path, dir.path().join("worker.log"));
    // Items 0, 1 and 2 answer; 3 is refused (fatal): three records.
    let (status, accepted) = client
        .post(KEY_A, &[("prefer", "respond-async")], batch_body("used", 4))
        .await;
    assert_eq!(status, 202, "{accepted}");
    client
        .wait_progress("used", Duration::from_secs(60), super::finished)
        .await;
    let started = Instant::now();
    let usage = loop {
        let (status, usage) = client.get(KEY_A, "/v1/usage").await;
        assert_eq!(status, 200, "{usage}");
        if usage["totals"]["requests"] == 3 {
            break usage;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{usage}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(usage["totals"]["output_tokens"], 12, "{usage}");
    let (_, theirs) = client.get(KEY_B, "/v1/usage").await;
    assert_eq!(theirs["totals"]["requests"], 0, "{theirs}");
    proxy.stop();
}
