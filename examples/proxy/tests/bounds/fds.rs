//! Out of file descriptors: the listener keeps going.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::*;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn healthz(addr: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The binary with 64 file descriptors and 200 connections thrown at it: it
/// logs once, keeps serving the connections it has, and accepts again once
/// descriptors free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_never_stops_the_listener() {
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &primary.base_url(),
        &secondary.base_url(),
        &dir.path().join("e.db"),
        "store = \"memory\"",
    )
    .replace(
        "shutdown_grace_secs = 1\n",
        "shutdown_grace_secs = 1\nclient_header_timeout_secs = 30\n",
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let script = format!(
        "ulimit -n 64 && exec {} --config {} --workers 1",
        env!("CARGO_BIN_EXE_llm-proxy"),
        path.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("llm-proxy starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let running = Killed(child);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    assert!(healthz(&addr).await.starts_with("HTTP/1.1 200"));
    // Far more connections than it has descriptors; they connect (the kernel
    // queues them) but most cannot be accepted.
    let mut silent = Vec::new();
    for _ in 0..200 {
        if let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await
        {
            silent.push(tcp);
        }
    }
    assert!(silent.len() > 64, "only {} connected", silent.len());
    drop(silent);
    // Once they are gone, it serves again.
    let mut answered = false;
    for _ in 0..50 {
        if healthz(&addr).await.starts_with("HTTP/1.1 200") {
            answered = true;
            break;
        }
    }
    assert!(answered, "the proxy never served again");
    drop(running);
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert_eq!(
        log.matches("out of file descriptors").count(),
        1,
        "logged once: {log}"
    );
}
