//! The seeded upstream of these tests: a real HTTP server on 127.0.0.1 that
//! answers each chat request by its prompt (`item-0042`: what item 42's plan
//! says), counts calls and successes per prompt, and can hold every request
//! at a gate (then answer the held ones with a 500).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the upstream does with an item, by its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Ok,
    /// A 400: fatal, never retried.
    Fatal,
    /// A 429 with `Retry-After` on the first call, then an answer.
    RateLimitedOnce,
    /// A 500 on the first call, then an answer.
    ServerErrorOnce,
}

pub fn plan(index: usize) -> Plan {
    match index % 10 {
        3 => Plan::Fatal,
        9 => Plan::ServerErrorOnce,
        7 if index % 50 == 7 => Plan::RateLimitedOnce,
        _ => Plan::Ok,
    }
}

pub fn prompt(index: usize) -> String {
    format!("item-{index:04}")
}

#[derive(Default)]
struct Counts {
    calls: HashMap<String, u32>,
    successes: HashMap<String, u32>,
    /// Prompts answered with a 500 because they were held at the gate.
    held_answers: HashMap<String, u32>,
    /// Prompts whose held request was dropped (its client died meanwhile).
    held_cut: HashMap<String, u32>,
    held_now: usize,
}

/// The running upstream (stops with the test's runtime).
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    gate: Arc<watch::Sender<bool>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            counts: Default::default(),
            gate: Arc::new(watch::channel(true).0),
        };
        let this = upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let this = this.clone();
                        async move { Ok::<_, Infallible>(this.answer(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Holds every request from now on (before it counts as answered).
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    /// Answers the held requests with a 500, and the next ones as planned.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn held_now(&self) -> usize {
        self.counts.lock().unwrap().held_now
    }

    pub fn calls(&self) -> HashMap<String, u32> {
        self.counts.lock().unwrap().calls.clone()
    }

    pub fn successes(&self) -> HashMap<String, u32> {
        self.counts.lock().unwrap().successes.clone()
    }

    pub fn held_answers(&self) -> HashMap<String, u32> {
        self.counts.lock().unwrap().held_answers.clone()
    }

    pub fn held_cut(&self) -> HashMap<String, u32> {
        self.counts.lock().unwrap().held_cut.clone()
    }

    async fn answer(&self, request: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        let Ok(body) = request.into_body().collect().await else {
            return reply(400, json!({"error": {"message": "unreadable body"}}));
        };
        let body: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
        let prompt = body
            .pointer("/messages/0/content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let Some(index) = prompt
            .strip_prefix("item-")
            .and_then(|i| i.parse::<usize>().ok())
        else {
            return reply(
                400,
                json!({"error": {"message": "not a test prompt", "type": "invalid_request_error"}}),
            );
        };
        // The plan counts the calls not held at the gate.
        let call = {
            let mut counts = self.counts.lock().unwrap();
            let n = counts.calls.entry(prompt.clone()).or_default();
            *n += 1;
            let n = *n;
            n - counts.held_answers.get(&prompt).copied().unwrap_or(0)
                - counts.held_cut.get(&prompt).copied().unwrap_or(0)
        };
        let mut gate = self.gate.subscribe();
        if !*gate.borrow_and_update() {
            self.counts.lock().unwrap().held_now += 1;
            let mut held = Held {
                counts: &self.counts,
                prompt: Some(prompt),
            };
            let _ = gate.wait_for(|open| *open).await;
            let prompt = held.prompt.take().unwrap_or_default();
            let mut counts = self.counts.lock().unwrap();
            counts.held_now -= 1;
            *counts.held_answers.entry(prompt).or_default() += 1;
            return reply(500, json!({"error": {"message": "held at the gate"}}));
        }
        match plan(index) {
            Plan::Fatal => {
                return reply(
                    400,
                    json!({"error": {"message": format!("{prompt} is refused"),
                                     "type": "invalid_request_error"}}),
                )
            }
            Plan::RateLimitedOnce if call == 1 => {
                let mut response = reply(
                    429,
                    json!({"error": {"message": "slow down", "type": "rate_limit_error",
                                     "code": "rate_limit_exceeded"}}),
                );
                let headers = response.headers_mut();
                headers.insert("retry-after", http::HeaderValue::from_static("1"));
                headers.insert("retry-after-ms", http::HeaderValue::from_static("200"));
                return response;
            }
            Plan::ServerErrorOnce if call == 1 => {
                return reply(500, json!({"error": {"message": "try again"}}))
            }
            _ => {}
        }
        *self
            .counts
            .lock()
            .unwrap()
            .successes
            .entry(prompt.clone())
            .or_default() += 1;
        reply(
            200,
            json!({
                "id": format!("chatcmpl-{index}"),
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-test",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": format!("answer to {prompt}")}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }),
        )
    }
}

/// A request held at the gate: counted as cut if dropped there.
struct Held<'a> {
    counts: &'a Mutex<Counts>,
    prompt: Option<String>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(prompt) = self.prompt.take() {
            let mut counts = self.counts.lock().unwrap();
            counts.held_now -= 1;
            *counts.held_cut.entry(prompt).or_default() += 1;
        }
    }
}

fn reply(status: u16, body: Value) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
