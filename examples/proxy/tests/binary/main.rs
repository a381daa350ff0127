//! The real binary: the demo (`llm-proxy` without a config) and the curl line
//! it prints, `llm-proxy mock-upstream` instances as upstreams, and
//! `llm-proxy --config FILE` stopped with SIGTERM while a request is in flight
//! (the request finishes, new connections are refused, the process exits
//! cleanly).

#[path = "../common/mod.rs"]
mod common;
mod shutdown;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Run the binary with `args`; returns the child (killed on drop), the first
/// `http://...` it prints, and the whole line.
pub(crate) struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn run_binary(args: &[&str]) -> (Running, String, String) {
    run_binary_in(args, None).0
}

/// As [`run_binary`], in `dir`; also returns the rest of its standard output.
pub(crate) fn run_binary_in(
    args: &[&str],
    dir: Option<&std::path::Path>,
) -> (
    (Running, String, String),
    BufReader<std::process::ChildStdout>,
) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llm-proxy"));
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("llm-proxy starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    ((Running(child), url, line), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_and_the_curl_line_it_prints_works() {
    let dir = tempfile::tempdir().unwrap();
    let ((_demo, url, line), mut stdout) =
        run_binary_in(&["--listen", "127.0.0.1:0"], Some(dir.path()));
    assert!(line.starts_with("llm-proxy demo listening on"), "{line}");
    // The curl command: the line starting with `curl`, continued on the next.
    let mut curl = String::new();
    for _ in 0..20 {
        let mut next = String::new();
        stdout.read_line(&mut next).unwrap();
        if next.trim_start().starts_with("curl") || !curl.is_empty() {
            curl.push_str(next.trim().trim_end_matches('\\'));
            curl.push(' ');
            if !next.trim_end().ends_with('\\') {
                break;
            }
        }
    }
    assert!(curl.contains(&url), "{curl}");
    let out = tokio::task::spawn_blocking(move || Command::new("sh").arg("-c").arg(curl).output())
        .await
        .unwrap()
        .expect("curl runs");
    let out = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(out.starts_with("http/1.1 200"), "{out}");
    assert!(out.contains("x-llm-proxy-tier:"), "{out}");
    assert!(out.contains("chat.completion"), "{out}");
    // The escalation store is a local data file.
    assert!(dir.path().join("llm-proxy-data/escalations.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_upstream_processes_fail_on_demand_and_the_proxy_falls_back() {
    let (_primary, primary, _) = run_binary(&[
        "mock-upstream",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "primary",
        "--fail-rate",
        "1.0",
    ]);
    let (_secondary, secondary, _) = run_binary(&[
        "mock-upstream",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "secondary",
    ]);
    assert!(primary.ends_with("/v1") && secondary.ends_with("/v1"));
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&primary, &secondary, &dir.path().join("e.db"), "");
    let proxy = llm_proxy::Proxy::start(&llm_proxy::Config::from_toml(&config).unwrap()).unwrap();
    let http = reqwest::Client::new();
    let response = post_chat(&http, &proxy.url(), &ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "Hello from secondary.");
}

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
    let path = path.to_str().unwrap();
    let (mut running, base, line) = run_binary(&["--config", path, "--workers", "2"]);
    assert!(line.contains("(2 worker threads)"), "{line}");
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
        .args(["-TERM", &running.0.id().to_string()])
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
    let status = tokio::task::spawn_blocking(move || running.0.wait())
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
