//! `llm-proxy mock-upstream`: an upstream that fails on demand, speaking the
//! OpenAI chat completions API (`POST .../chat/completions`, the default) or the
//! Anthropic Messages API (`--format anthropic`: `POST .../messages`, see
//! [`anthropic`]).
//!
//! Each request draws one number from a seeded generator and, in this order,
//! answers 429 with `Retry-After` (`rate_limit_rate`), 500 (`fail_rate`), 503
//! (OpenAI) or 529 (Anthropic) overloaded (`overload_rate`), never answers
//! (`stall_rate`), or (streams only) cuts the stream after `cut_after` events
//! (`cut_rate`); otherwise it answers, after `latency_ms`. The same seed and the
//! same order of requests give the same answers. In-process users (tests, the
//! demo) change the behaviour at run time through [`MockUpstream::set`].
//!
//! With `tool_call` set, a request that offers that tool is answered with a call
//! of it, in either format (see `mock/tools.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_llm_resilience::BoxError;

pub mod anthropic;
mod tools;

/// The API the mock speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MockFormat {
    /// OpenAI chat completions: `POST .../chat/completions`.
    #[default]
    Openai,
    /// The Anthropic Messages API: `POST .../messages`.
    Anthropic,
}

/// How the mock behaves.
#[derive(Clone, Debug, clap::Args)]
pub struct MockOptions {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Its name, in answers ("Hello from NAME.").
    #[arg(long, default_value = "mock")]
    pub name: String,
    /// The API it speaks.
    #[arg(long, value_enum, default_value_t = MockFormat::Openai)]
    pub format: MockFormat,
    /// Seed of the failure draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// Share of requests answered overloaded: 503 (OpenAI), 529 overloaded_error
    /// (Anthropic).
    #[arg(long, default_value_t = 0.0)]
    pub overload_rate: f64,
    /// The Retry-After of 429s, in seconds.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Delay before each answer (and between stream events), in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of requests that never get an answer (or, streams, no event).
    #[arg(long, default_value_t = 0.0)]
    pub stall_rate: f64,
    /// Share of streams cut (connection broken) after `cut_after` events.
    #[arg(long, default_value_t = 0.0)]
    pub cut_rate: f64,
    /// Events sent before a cut (0: cut before the first event).
    #[arg(long, default_value_t = 2)]
    pub cut_after: usize,
    /// The answer text (default "Hello from NAME.").
    #[arg(long)]
    pub reply: Option<String>,
    /// Answer a request that offers this tool (and does not end with tool
    /// results) with a call of it; a request ending with tool results gets the
    /// reply and " (tool results: N)".
    #[arg(long)]
    pub tool_call: Option<String>,
    /// The arguments of those tool calls (JSON text).
    #[arg(long, default_value = "{}")]
    pub tool_arguments: String,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            name: "mock".into(),
            format: MockFormat::Openai,
            seed: 1,
            fail_rate: 0.0,
            rate_limit_rate: 0.0,
            overload_rate: 0.0,
            retry_after_secs: 1,
            latency_ms: 0,
            stall_rate: 0.0,
            cut_rate: 0.0,
            cut_after: 2,
            reply: None,
            tool_call: None,
            tool_arguments: "{}".into(),
        }
    }
}

/// The largest request body the mock reads.
const MAX_REQUEST_BYTES: usize = 16 << 20;

struct State {
    options: Mutex<Arc<MockOptions>>,
    rng: Mutex<fastrand::Rng>,
    requests: AtomicU64,
    /// Anthropic mode: what the last request carried.
    last: Mutex<Option<SeenRequest>>,
}

/// What the mock saw of a chat request (kept in Anthropic mode only, so the
/// OpenAI mode's hot path stays as lean as it is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeenRequest {
    /// The request's path.
    pub path: String,
    /// The `model` of its body.
    pub model: Option<String>,
    /// Its `x-api-key` header.
    pub api_key: Option<String>,
    /// Its `anthropic-version` header.
    pub anthropic_version: Option<String>,
    /// The `max_tokens` of its body.
    pub max_tokens: Option<u64>,
    /// The `system` prompt of its body.
    pub system: Option<String>,
    /// The roles of its `messages`, in order.
    pub roles: Vec<String>,
    /// Its `stop_sequences`.
    pub stop_sequences: Vec<String>,
    /// Whether it asked for a stream.
    pub stream: bool,
    /// The names of its `tools`.
    pub tools: Vec<String>,
    /// The ids of the `tool_use` blocks of its messages, in order.
    pub tool_use_ids: Vec<String>,
    /// The `tool_use_id`s of the `tool_result` blocks of its messages, in order.
    pub tool_result_ids: Vec<String>,
    /// How many `image` blocks its messages have.
    pub images: usize,
}

/// A running mock upstream.
#[derive(Clone)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Bind `options.listen` and serve on the current runtime.
    pub async fn start(options: MockOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind(options.listen).await?;
        Ok(Self::serve(listener, options))
    }

    /// Serve on `listener`, on the current runtime.
    pub fn serve(listener: TcpListener, options: MockOptions) -> Self {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(State {
            rng: Mutex::new(fastrand::Rng::with_seed(options.seed)),
            options: Mutex::new(Arc::new(options)),
            requests: AtomicU64::new(0),
            last: Mutex::new(None),
        });
        let accepting = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = accepting.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL (`http://ADDR/v1`), for either format: an Anthropic client
    /// given it posts to `http://ADDR/v1/messages`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Change the behaviour from now on.
    pub fn set(&self, change: impl FnOnce(&mut MockOptions)) {
        let mut options = self.state.options.lock().unwrap_or_else(|p| p.into_inner());
        change(Arc::make_mut(&mut options));
    }

    /// Chat completion (or, Anthropic, messages) requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Anthropic mode: what the last messages request carried (`None` before
    /// the first one, and always in OpenAI mode).
    pub fn last_request(&self) -> Option<SeenRequest> {
        self.state
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

type MockBody = UnsyncBoxBody<Bytes, BoxError>;

fn full(status: StatusCode, content_type: &'static str, body: String) -> http::Response<MockBody> {
    let mut response = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// A `chat.completion`, written without building a JSON tree (the mock answers
/// load tests).
#[derive(Serialize)]
struct Completion<'a> {
    choices: [Choice<'a>; 1],
    created: u64,
    id: &'a str,
    model: &'a str,
    object: &'static str,
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    finish_reason: &'static str,
    index: u32,
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    content: &'a str,
    role: &'static str,
}

#[derive(Serialize)]
struct Usage {
    completion_tokens: u32,
    prompt_tokens: u32,
    total_tokens: u32,
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
}

enum Draw {
    RateLimited,
    Fail,
    Overloaded,
    Stall,
    Cut,
    Answer,
}

/// The options in force now.
fn options(state: &State) -> Arc<MockOptions> {
    state
        .options
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Draw what this request gets (one number from the seeded generator).
fn draw(state: &State, options: &MockOptions, stream: bool) -> Draw {
    let roll = state.rng.lock().unwrap_or_else(|p| p.into_inner()).f64();
    let mut edge = options.rate_limit_rate;
    if roll < edge {
        return Draw::RateLimited;
    }
    edge += options.fail_rate;
    if roll < edge {
        return Draw::Fail;
    }
    edge += options.overload_rate;
    if roll < edge {
        return Draw::Overloaded;
    }
    edge += options.stall_rate;
    if roll < edge {
        Draw::Stall
    } else if stream && roll < edge + options.cut_rate {
        Draw::Cut
    } else {
        Draw::Answer
    }
}

/// The answer text.
fn reply(options: &MockOptions) -> std::borrow::Cow<'_, str> {
    match &options.reply {
        Some(reply) => std::borrow::Cow::Borrowed(reply.as_str()),
        None => std::borrow::Cow::Owned(format!("Hello from {}.", options.name)),
    }
}

async fn handle(state: Arc<State>, request: http::Request<Incoming>) -> http::Response<MockBody> {
    let options = options(&state);
    if options.format == MockFormat::Anthropic {
        return anthropic::handle(&state, options, request).await;
    }
    let path = request.uri().path();
    if request.method() == Method::GET && path.ends_with("/models") {
        let body =
            serde_json::json!({"object": "list", "data": [{"id": "mock", "object": "model"}]});
        return full(StatusCode::OK, "application/json", body.to_string());
    }
    if request.method() != Method::POST || !path.ends_with("/chat/completions") {
        return full(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"message":"not found","type":"invalid_request_error"}}"#.into(),
        );
    }
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    // A mock still reads at most `MAX_REQUEST_BYTES` of a request.
    let Ok(body) = Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    else {
        return full(
            StatusCode::BAD_REQUEST,
            "application/json",
            r#"{"error":{"message":"unreadable or too large body","type":"invalid_request_error"}}"#.into(),
        );
    };
    let body = body.to_bytes();
    let Ok(chat) = serde_json::from_slice::<ChatBody>(&body) else {
        return full(
            StatusCode::BAD_REQUEST,
            "application/json",
            r#"{"error":{"message":"malformed JSON","type":"invalid_request_error"}}"#.into(),
        );
    };
    let draw = draw(&state, &options, chat.stream);
    let latency = Duration::from_millis(options.latency_ms);
    match draw {
        Draw::RateLimited => {
            let mut response = full(
                StatusCode::TOO_MANY_REQUESTS,
                "application/json",
                r#"{"error":{"message":"Rate limit reached (mock)","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#.into(),
            );
            response.headers_mut().insert(
                RETRY_AFTER,
                http::HeaderValue::from(options.retry_after_secs),
            );
            return response;
        }
        Draw::Fail => {
            return full(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                r#"{"error":{"message":"The server had an error (mock)","type":"server_error"}}"#
                    .into(),
            )
        }
        Draw::Overloaded => {
            return full(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                r#"{"error":{"message":"The server is overloaded or not ready yet (mock)","type":"server_error"}}"#
                    .into(),
            )
        }
        Draw::Stall if !chat.stream => std::future::pending().await,
        _ => {}
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let model = chat.model.as_deref().unwrap_or("mock");
    let id = format!("chatcmpl-{}-{n}", options.name);
    let plan = match options.tool_call {
        Some(_) => serde_json::from_slice::<tools::OpenAiTools>(&body)
            .map_or(tools::Plan::Text { results: 0 }, |t| t.plan(&options)),
        None => tools::Plan::Text { results: 0 },
    };
    if let tools::Plan::Call { name, arguments } = &plan {
        if !chat.stream {
            let body = tools::openai_answer(&id, model, name, arguments);
            return full(StatusCode::OK, "application/json", body);
        }
        let events = tools::openai_events(&id, model, name, arguments);
        return event_stream(events, &draw, latency, options.cut_after);
    }
    let base = reply(&options);
    let reply = plan.text(&base);
    if !chat.stream {
        let body = Completion {
            choices: [Choice {
                finish_reason: "stop",
                index: 0,
                message: Message {
                    content: &reply,
                    role: "assistant",
                },
            }],
            created: crate::body::unix_now(),
            id: &id,
            model,
            object: "chat.completion",
            usage: Usage {
                completion_tokens: 5,
                prompt_tokens: 5,
                total_tokens: 10,
            },
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        return full(StatusCode::OK, "application/json", body);
    }
    event_stream(
        stream_events(&id, model, &reply),
        &draw,
        latency,
        options.cut_after,
    )
}

/// An event stream of `events`, one frame each, `latency` apart; cut after
/// `cut_after` events or held open without any for a [`Draw::Cut`] or
/// [`Draw::Stall`].
fn event_stream(
    events: Vec<Bytes>,
    draw: &Draw,
    latency: Duration,
    cut_after: usize,
) -> http::Response<MockBody> {
    let (cut_at, stall) = match draw {
        Draw::Cut => (Some(cut_after), false),
        Draw::Stall => (None, true),
        _ => (None, false),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tokio::spawn(async move {
        if stall {
            // Hold the stream open without a single event until the client leaves.
            tx.closed().await;
            return;
        }
        for (i, event) in events.into_iter().enumerate() {
            if cut_at == Some(i) {
                if i > 0 {
                    // Let the server flush the events sent so far: hyper drops
                    // its write buffer when a body fails.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = tx.send(Err("stream cut (mock)".into())).await;
                return;
            }
            if i > 0 && !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if tx.send(Ok(Frame::data(event))).await.is_err() {
                return;
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    let mut response = http::Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

fn stream_events(id: &str, model: &str, reply: &str) -> Vec<Bytes> {
    let created = crate::body::unix_now();
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let event = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {event}\n\n"))
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        None,
    )];
    for word in reply.split_inclusive(' ') {
        events.push(chunk(serde_json::json!({"content": word}), None));
    }
    events.push(chunk(serde_json::json!({}), Some("stop")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}
