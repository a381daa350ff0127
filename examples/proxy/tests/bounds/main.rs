//! Bounds against hostile clients, each over a real socket with small limits:
//! the clear error, then a normal request that still works.
#[path = "../common/mod.rs"]
mod common;
mod escalations;
mod fds;
mod idle;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OTHER_KEY: &str = "other-client-key";

/// A proxy in front of two mocks, with `limits`, `batch` and `escalation`
/// lines added to those tables, and two client keys.
pub struct Bounded {
    _primary: llm_proxy::mock::MockUpstream,
    _secondary: llm_proxy::mock::MockUpstream,
    proxy: Proxy,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    config: Config,
}

impl Bounded {
    async fn start(limits: &str, batch: &str, escalation: &str) -> Self {
        Self::start_with("", limits, batch, escalation).await
    }

    /// With `top` lines before the tables (e.g. `workers = 1`).
    async fn start_with(top: &str, limits: &str, batch: &str, escalation: &str) -> Self {
        let primary = mock("primary").await;
        let secondary = mock("secondary").await;
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(
            &primary.base_url(),
            &secondary.base_url(),
            &dir.path().join("escalations.db"),
            escalation,
        )
        .replace(
            "shutdown_grace_secs = 1\n",
            &format!("shutdown_grace_secs = 1\n{limits}\n"),
        )
        .replace(
            "max_attempts = 2\n",
            &format!("max_attempts = 2\n{batch}\n"),
        )
        .replacen("\n", &format!("\n{top}\n"), 1)
        .replace(
            &format!("client_keys = [\"{CLIENT_KEY}\"]"),
            &format!("client_keys = [\"{CLIENT_KEY}\", \"{OTHER_KEY}\"]"),
        );
        // A `max_body_bytes` in `limits` replaces the shared one.
        let text = if limits.contains("max_body_bytes") {
            text.replace("max_body_bytes = 4096\n", "")
        } else {
            text
        };
        let config = Config::from_toml(&text).expect("test config is valid");
        let proxy = Proxy::start(&config).expect("proxy starts");
        Self {
            _primary: primary,
            _secondary: secondary,
            proxy,
            http: reqwest::Client::new(),
            _dir: dir,
            config,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    async fn chat_as(
        &self,
        key: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/chat/completions", self.proxy.url()))
            .bearer_auth(key)
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("proxy answers")
    }

    async fn batch_as(&self, key: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/batch", self.proxy.url()))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("proxy answers");
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A normal request answers.
    async fn still_works(&self) {
        let response = self.chat_as(CLIENT_KEY, &ask("smart"), &[]).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert!(!content(&body).is_empty());
    }
}

/// Everything the server sends until it closes the connection (bounded wait).
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `needle` arrives (bounded wait).
async fn read_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&out)))
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let env = Bounded::start("client_header_timeout_secs = 0.3", "", "").await;
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let answer = read_until_closed(&mut tcp).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    env.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_a_byte_is_cut_off() {
    let env = Bounded::start("client_header_timeout_secs = 0.3", "", "").await;
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    // Closed by the proxy (bounded: the helper gives up after its deadline).
    let answer = read_until_closed(&mut tcp).await;
    assert_eq!(answer, "", "nothing is answered to nothing");
    // One that talks is served.
    let mut late = TcpStream::connect(env.addr()).await.unwrap();
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut late).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    env.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_a_408() {
    let env = Bounded::start("client_body_timeout_secs = 0.3", "", "").await;
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until(&mut tcp, "client_body_timeout_secs").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"type\":\"invalid_request_error\""),
        "{answer}"
    );
    env.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed() {
    let env = Bounded::start(
        "client_header_timeout_secs = 30\nkeepalive_timeout_secs = 0.3",
        "",
        "",
    )
    .await;
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Answered, then closed for idleness well before the header timeout.
    let answer = read_until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    env.still_works().await;
}

/// A chat request whose body stalls after its head: in flight (the proxy is
/// reading its body) for as long as `client_body_timeout_secs`. Returns once
/// the proxy reads the body (its `100 Continue` arrived).
async fn stalled_request(env: &Bounded) -> TcpStream {
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n\
         {{\"model\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until(&mut tcp, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
    tcp
}

/// Whether the proxy closed `tcp` (EOF or reset) within a short wait.
async fn closed_soon(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_maximum_the_longest_idle_connection_makes_room() {
    // Timeouts far longer than the test: only a reclaim can close anything.
    let env = Bounded::start(
        "max_connections = 4\nclient_header_timeout_secs = 600\n\
         client_body_timeout_secs = 600\nkeepalive_timeout_secs = 600",
        "",
        "",
    )
    .await;
    let mut busy = stalled_request(&env).await;
    let mut kept_alive = TcpStream::connect(env.addr()).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(&mut kept_alive, "ok").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(env.addr()).await.unwrap());
    }
    // Four open: a request in flight, one kept alive, two that never talked.
    // Each new client's request closes one idle connection (the kept-alive one,
    // then the silent ones, longest silent first) and is answered promptly.
    let started = std::time::Instant::now();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = reqwest::Client::new();
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            client
                .post(format!("{}/v1/chat/completions", env.proxy.url()))
                .bearer_auth(CLIENT_KEY)
                .json(&ask("smart"))
                .send(),
        )
        .await
        .expect("answered at the maximum, long before any timeout")
        .expect("proxy answers");
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        // Its connection stays open (and idle) until the end.
        clients.push(client);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    for tcp in &mut silent {
        assert!(closed_soon(tcp).await, "a silent connection was reclaimed");
    }
    assert!(closed_soon(&mut kept_alive).await, "the kept-alive one too");
    // The request in flight was never reclaimed: it still completes.
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(Duration::from_millis(300), busy.read(&mut buf)).await;
    assert!(early.is_err(), "the request in flight was cut: {early:?}");
    busy.write_all(&[b' '; 91]).await.unwrap();
    let answer = read_until(&mut busy, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_busy_new_ones_wait_until_one_closes() {
    let env = Bounded::start(
        "max_connections = 2\nclient_header_timeout_secs = 600\n\
         client_body_timeout_secs = 600\nkeepalive_timeout_secs = 600",
        "",
        "",
    )
    .await;
    let busy_a = stalled_request(&env).await;
    let mut busy_b = stalled_request(&env).await;
    let mut third = TcpStream::connect(env.addr()).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(600), third.read(&mut buf)).await;
    assert!(early.is_err(), "answered over the maximum: {early:?}");
    let early = tokio::time::timeout(Duration::from_millis(10), busy_b.read(&mut buf)).await;
    assert!(early.is_err(), "a request in flight was cut: {early:?}");
    drop(busy_a);
    let answer = read_until_closed(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_the_address_stops_the_start() {
    use socket2::{Domain, Protocol, Socket, Type};
    // A stranger listening with SO_REUSEPORT, as the proxy's own workers do.
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let stranger = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    stranger.set_reuse_address(true).unwrap();
    stranger.set_reuse_port(true).unwrap();
    stranger.bind(&addr.into()).unwrap();
    stranger.listen(16).unwrap();
    let taken = stranger.local_addr().unwrap().as_socket().unwrap();
    let env = Bounded::start("", "", "").await;
    let mut config = env.config.clone();
    config.listen = taken;
    let e = Proxy::start(&config).unwrap_err().to_string();
    assert!(e.contains("another process already listens"), "{e}");
    assert!(e.contains(&taken.to_string()), "{e}");
    // Its own workers still share their port.
    assert!(env.proxy.workers() >= 1);
    env.still_works().await;
}

fn item(key: &str, text: &str) -> Value {
    json!({"key": key, "body": {"model": "smart", "messages": [{"role": "user", "content": text}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ids_and_keys_are_bounded() {
    let env = Bounded::start("", "max_id_bytes = 16", "").await;
    let too_long = "x".repeat(17);
    for body in [
        json!({"batch_id": too_long, "requests": [item("a", "hi")]}),
        json!({"batch_id": "no spaces", "requests": [item("a", "hi")]}),
        json!({"batch_id": "", "requests": [item("a", "hi")]}),
        json!({"batch_id": "ok", "requests": [item(&too_long, "hi")]}),
        json!({"batch_id": "ok", "requests": [item("a/b", "hi")]}),
    ] {
        let (status, answer) = env.batch_as(CLIENT_KEY, &body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("batch.max_id_bytes") || message.contains("letters, digits"),
            "{message}"
        );
    }
    let (status, answer) = env
        .batch_as(
            CLIENT_KEY,
            &json!({"batch_id": "nightly-1:a.b_c", "requests": [item("a", "hi")]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["batch_id"], "nightly-1:a.b_c");
    env.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_results_belong_to_their_client_and_their_request() {
    let env = Bounded::start("", "", "").await;
    let first = json!({"batch_id": "b1", "requests": [item("a", "one"), item("b", "two")]});
    let (status, run) = env.batch_as(CLIENT_KEY, &first).await;
    assert_eq!((status, run["ok"].as_u64()), (200, Some(2)), "{run}");
    // The same batch again: cached.
    let (_, again) = env.batch_as(CLIENT_KEY, &first).await;
    assert_eq!(again["cached"], 2, "{again}");
    assert_eq!(again["items"][0]["key"], "a");
    // Another client with the same id and keys: its own batch, nothing cached.
    let (_, other) = env.batch_as(OTHER_KEY, &first).await;
    assert_eq!(other["cached"], 0, "{other}");
    assert_eq!(other["ok"], 2, "{other}");
    // A changed item runs again and is reported not cached; the other is cached.
    let changed = json!({"batch_id": "b1", "requests": [item("a", "one!"), item("b", "two")]});
    let (_, rerun) = env.batch_as(CLIENT_KEY, &changed).await;
    let items = rerun["items"].as_array().unwrap();
    let by_key = |k: &str| items.iter().find(|i| i["key"] == k).unwrap().clone();
    assert_eq!(by_key("a")["cached"], false, "{rerun}");
    assert_eq!(by_key("b")["cached"], true, "{rerun}");
    assert_eq!(rerun["cached"], 1);
    env.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_records_are_bounded_in_total() {
    let env = Bounded::start("", "max_records = 2", "").await;
    for id in ["b1", "b2"] {
        let body = json!({"batch_id": id, "requests": [item("a", "one")]});
        let (status, run) = env.batch_as(CLIENT_KEY, &body).await;
        assert_eq!(status, 200, "{run}");
    }
    // A third batch makes room by dropping the one run longest ago.
    let b3 = json!({"batch_id": "b3", "requests": [item("a", "one")]});
    env.batch_as(CLIENT_KEY, &b3).await;
    let b1 = json!({"batch_id": "b1", "requests": [item("a", "one")]});
    let (_, rerun) = env.batch_as(CLIENT_KEY, &b1).await;
    assert_eq!(rerun["cached"], 0, "b1 was evicted: {rerun}");
    let (_, rerun) = env.batch_as(CLIENT_KEY, &b3).await;
    assert_eq!(rerun["cached"], 1, "{rerun}");
    env.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_upstream_reads_at_most_16_mib_of_a_request() {
    let upstream = mock("bounded").await;
    let http = reqwest::Client::new();
    let post = |bytes: usize| {
        let mut body = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
        body.resize(body.len() + bytes, b'a');
        body.extend_from_slice(br#""}]}"#);
        http.post(format!("{}/chat/completions", upstream.base_url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(post(1 << 20).await.unwrap().status(), 200);
    let refused = post(17 << 20).await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("too large"));

    // The Anthropic-format mock too.
    let anthropic = llm_proxy::mock::MockUpstream::start(llm_proxy::mock::MockOptions {
        name: "bounded-anthropic".into(),
        format: llm_proxy::mock::MockFormat::Anthropic,
        ..llm_proxy::mock::MockOptions::default()
    })
    .await
    .unwrap();
    let messages = |bytes: usize| {
        let mut body =
            br#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":""#.to_vec();
        body.resize(body.len() + bytes, b'a');
        body.extend_from_slice(br#""}]}"#);
        let base = format!("http://{}", anthropic.addr());
        http.post(format!("{base}/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(body)
            .send()
    };
    assert_eq!(messages(1 << 20).await.unwrap().status(), 200);
    let refused = messages(17 << 20).await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("too large"));
}
