//! A hand-written upstream on loopback: it records each request body and sends
//! exactly the bytes a test scripts, however broken (short bodies, streams that
//! end early or never, endless bodies, silence).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use super::{ADMIN_KEY, CLIENT_KEY};

/// What the upstream does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Send these bytes (head and body), then close the connection.
    Close(Vec<u8>),
    /// Send these bytes, then keep the connection open and silent.
    Hold(Vec<u8>),
    /// Send `head`, then `chunk` again and again until the peer goes away.
    Endless { head: Vec<u8>, chunk: Vec<u8> },
}

type Script = dyn Fn(usize, &[u8]) -> Reply + Send + Sync;

/// A scripted upstream; stops when dropped.
pub struct RawUpstream {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Bytes written by `Endless` replies.
    pub written: Arc<AtomicU64>,
    /// Endless replies that ended because the peer went away.
    pub endless_stopped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    /// Start; `script(n, body)` answers the `n`-th request (from 0).
    pub async fn start(script: impl Fn(usize, &[u8]) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicU64::new(0));
        let endless_stopped = Arc::new(AtomicU64::new(0));
        let script: Arc<Script> = Arc::new(script);
        let task = {
            let (bodies, written, stopped) =
                (bodies.clone(), written.clone(), endless_stopped.clone());
            tokio::spawn(async move {
                // Dropped with this task: every connection ends with the upstream.
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    let (bodies, written, stopped, script) = (
                        bodies.clone(),
                        written.clone(),
                        stopped.clone(),
                        script.clone(),
                    );
                    connections.spawn(async move {
                        serve(socket, &bodies, &written, &stopped, &*script).await;
                    });
                    while connections.try_join_next().is_some() {}
                }
            })
        };
        Self {
            addr,
            bodies,
            written,
            endless_stopped,
            task,
        }
    }

    /// `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The request bodies received so far.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

async fn serve(
    mut socket: TcpStream,
    bodies: &Mutex<Vec<Vec<u8>>>,
    written: &AtomicU64,
    stopped: &AtomicU64,
    script: &Script,
) {
    let Some(body) = read_request(&mut socket).await else {
        return;
    };
    let index = {
        let mut bodies = bodies.lock().unwrap();
        bodies.push(body.clone());
        bodies.len() - 1
    };
    match script(index, &body) {
        Reply::Close(bytes) => {
            let _ = socket.write_all(&bytes).await;
            let _ = socket.shutdown().await;
        }
        Reply::Hold(bytes) => {
            let _ = socket.write_all(&bytes).await;
            // Silent until the peer closes.
            let mut sink = [0u8; 64];
            while let Ok(n) = socket.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
        Reply::Endless { head, chunk } => {
            if socket.write_all(&head).await.is_err() {
                return;
            }
            while socket.write_all(&chunk).await.is_ok() {
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            stopped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Read one request; its body (by Content-Length).
pub async fn read_request(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some(buffer[head_end..head_end + length].to_vec())
}

/// A `200` JSON answer with a correct length.
pub fn json_answer(json: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    )
    .into_bytes()
}

/// A `chat.completion` with this text.
pub fn completion(text: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": "raw",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
    })
    .to_string()
}

/// A `500` with an OpenAI error body.
pub fn server_error() -> Vec<u8> {
    let body = r#"{"error":{"message":"boom","type":"server_error"}}"#;
    format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The head of an event stream without a length (ended by closing).
pub const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

/// One OpenAI stream chunk event carrying `text` (no finish reason).
pub fn sse_chunk(text: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 0, "model": "raw",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

/// A proxy config with upstreams `first` and `second` (their base URLs), the
/// model `two` (first/model-a, then second/model-b), the model `one` (first
/// only), a memory escalation store, [`CLIENT_KEY`] and [`ADMIN_KEY`], and
/// `extra` TOML appended.
/// Circuits never open (the tests count calls).
pub fn two_tier_config(first: &str, second: &str, extra: &str) -> llm_proxy::Config {
    llm_proxy::Config::from_toml(&two_tier_text(first, second, extra, "store = \"memory\""))
        .expect("test config is valid")
}

/// The TOML of [`two_tier_config`], with `escalation` as the `[escalation]` table's keys.
pub fn two_tier_text(first: &str, second: &str, extra: &str, escalation: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
workers = 1

[[upstreams]]
name = "first"
kind = "openai"
base_url = "{first}"
timeout_secs = 5

[[upstreams]]
name = "second"
kind = "openai"
base_url = "{second}"
timeout_secs = 5

[[models]]
name = "two"
tiers = [ {{ upstream = "first", model = "model-a" }},
          {{ upstream = "second", model = "model-b" }} ]

[[models]]
name = "one"
tiers = [ {{ upstream = "first", model = "model-a" }} ]

[auth]
client_keys = ["{CLIENT_KEY}"]
admin_keys = ["{ADMIN_KEY}"]

[circuit]
consecutive_failures = 1000000
cooldown_secs = 1

[escalation]
{escalation}
{extra}
"#
    )
}
