//! The real binary, `llm-proxy --config FILE`, stopped with SIGTERM while a
//! request is in flight: the request finishes, new connections are refused, and
//! the process exits cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    // Long enough that SIGTERM arrives while the request is upstream.
    primary.set(|o| o.latency_ms = 700);
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(
        &primary.base_url(),
        &secondary.base_url(),
        &dir.path().join("escalations.db"),
        "",
    )
    .replace("shutdown_grace_secs = 1", "shutdown_grace_secs = 10");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
        .arg("--config")
        .arg(&path)
        .arg("--workers")
        .arg("2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("llm-proxy starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("2 worker threads"), "{line}");
    let base = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .expect("the address is printed")
        .to_owned();

    let http = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/v1/chat/completions"))
                .bearer_auth(CLIENT_KEY)
                .json(&ask("smart"))
                .send()
                .await
        }
    });
    // Wait (bounded) until the request reached the upstream.
    for _ in 0..500 {
        if primary.requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        primary.requests(),
        1,
        "the request never reached the upstream"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // The request in flight is answered, by the tier it was sent to.
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "primary");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "Hello from primary.");

    // Then the process exits, successfully, and nothing listens any more.
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let after = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "still answering after shutdown");
}
