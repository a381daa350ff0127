//! Test upstreams: real HTTP/1.1 servers on 127.0.0.1, random port, that answer,
//! fail, stall, rate-limit, or cut streams on demand.
//!
//! Start them from inside the test's runtime (`#[tokio::test(start_paused = true)]`):
//! the server then runs on the same current-thread runtime as the client, so a
//! response on loopback is ready whenever the runtime polls for it, and paused time
//! only auto-advances when everything waits on a timer (for example a `Stall`).
//!
//! One caveat, seen with reqwest: tokio's auto-advance does not count I/O wake-ups of
//! *spawned* tasks (hyper's connection tasks) as work, so while a request travels
//! over loopback the clock can jump to the next pending timer. With a pooled
//! keep-alive connection and a timeout pending, every other request then "times
//! out". So: pause time only in tests whose point is a timer firing, make that timer
//! the earliest one pending (e.g. a connect timeout longer than the call timeout),
//! or call `tokio::time::pause()` after the I/O part, once every task waits.
#![allow(dead_code)]

pub mod client;
pub mod raw;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One step of a streamed (SSE) answer.
#[derive(Clone, Debug)]
pub enum Step {
    /// Send these bytes as one chunk.
    Chunk(String),
    /// Wait (paused-time friendly).
    Wait(Duration),
    /// Break the connection mid-body (no terminal chunk).
    Cut,
    /// Stop sending, keep the connection open forever.
    Stall,
}

impl Step {
    /// A `data: ...\n\n` SSE event.
    pub fn data(payload: &str) -> Step {
        Step::Chunk(format!("data: {payload}\n\n"))
    }

    /// An SSE text (a `.sse` fixture) as one chunk per event.
    pub fn events(text: &str) -> Vec<Step> {
        text.split_inclusive("\n\n")
            .map(|event| Step::Chunk(event.to_owned()))
            .collect()
    }
}

/// The text of a file under `tests/fixtures/`.
pub fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("fixture {full}: {e}"))
}

/// A JSON file under `tests/fixtures/`, parsed.
pub fn json_fixture(path: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(path)).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// What the upstream does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A complete answer.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A streamed answer, sent step by step.
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        steps: Vec<Step>,
    },
    /// Never answer.
    Stall,
    /// Drop the connection without an answer.
    Close,
    /// Wait (paused-time friendly), then answer with the inner reply.
    After(Duration, Box<Reply>),
}

impl Reply {
    pub fn ok_json(body: &str) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Full { headers, .. } | Reply::Stream { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    /// This reply, after a wait before the response head.
    pub fn after(wait: Duration, reply: Reply) -> Reply {
        Reply::After(wait, Box::new(reply))
    }

    pub fn sse(steps: Vec<Step>) -> Reply {
        Reply::Stream {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            steps,
        }
    }
}

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

type Handler = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

/// A running test upstream. Dropping it does not stop the server task; the test's
/// runtime ends it.
#[derive(Clone)]
pub struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    /// Start a server whose handler sees each request and its 0-based index.
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (h, r) = (hits.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, hits, requests) = (handler.clone(), h.clone(), r.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let (handler, hits, requests) =
                            (handler.clone(), hits.clone(), requests.clone());
                        async move { respond(req, &*handler, &hits, &requests).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            requests,
        }
    }

    /// Replies in order; the last one repeats.
    pub async fn sequence(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty());
        Self::start(move |_, i| replies[i.min(replies.len() - 1)].clone()).await
    }

    /// Always the same reply.
    pub async fn always(reply: Reply) -> Self {
        Self::start(move |_, _| reply.clone()).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn respond(
    req: http::Request<Incoming>,
    handler: &Handler,
    hits: &AtomicUsize,
    requests: &Mutex<Vec<Recorded>>,
) -> Result<http::Response<StepBody>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    let index = hits.fetch_add(1, Ordering::SeqCst);
    let mut reply = handler(&recorded, index);
    requests.lock().unwrap().push(recorded);
    while let Reply::After(wait, inner) = reply {
        tokio::time::sleep(wait).await;
        reply = *inner;
    }
    let (status, headers, steps) = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => (status, headers, vec![Step::Chunk(body)]),
        Reply::Stream {
            status,
            headers,
            steps,
        } => (status, headers, steps),
        Reply::Stall => std::future::pending().await,
        Reply::Close => return Err(std::io::Error::other("closing the connection on purpose")),
        Reply::After(..) => unreachable!("unwrapped above"),
    };
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for step in steps {
            match step {
                Step::Chunk(s) => {
                    if tx.send(Ok(Bytes::from(s))).await.is_err() {
                        return;
                    }
                }
                Step::Wait(d) => tokio::time::sleep(d).await,
                Step::Cut => {
                    let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                    return;
                }
                Step::Stall => {
                    tx.closed().await;
                    return;
                }
            }
        }
    });
    let mut response = http::Response::builder().status(status);
    for (k, v) in headers {
        response = response.header(k, v);
    }
    Ok(response.body(StepBody(rx)).expect("valid test response"))
}

/// A body fed from a channel; an `Err` item breaks the connection.
pub struct StepBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for StepBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// Silences "unused" for helpers a given test file does not use.
pub fn _unused(_: Infallible) {}
