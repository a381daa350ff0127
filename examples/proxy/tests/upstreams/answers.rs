//! Every upstream answer is whole or clearly broken, and bounded: streams that
//! end without their terminal event, answers shorter than announced, JSON cut by
//! a close, answers over `limits.max_upstream_body_bytes`, bodies that never
//! end, and silence, each from a hand-written upstream on loopback.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::raw::{
    self, completion, json_answer, sse_chunk, two_tier_config, RawUpstream, Reply, SSE_HEAD,
};
use serde_json::{json, Value};

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

async fn post(base: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(raw::CLIENT_KEY)
        .json(body)
        .send()
        .await
        .expect("proxy answers")
}

fn tier(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-llm-proxy-tier")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The text of an event stream's chunks, whether it ended with `[DONE]`, and
/// its error event's payload if it had one.
fn read_stream(body: &str) -> (String, bool, Option<Value>) {
    let (mut text, mut done, mut error) = (String::new(), false, None);
    for event in body.split("\n\n") {
        let is_error = event.lines().any(|l| l == "event: error");
        for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                done = true;
            } else if let Ok(value) = serde_json::from_str::<Value>(data) {
                if is_error {
                    error = Some(value);
                } else if let Some(piece) = value["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(piece);
                }
            }
        }
    }
    (text, done, error)
}

/// The second tier: a whole answer, streamed or not.
async fn healthy() -> RawUpstream {
    RawUpstream::start(|_, body| {
        let streamed = serde_json::from_slice::<Value>(body).is_ok_and(|v| v["stream"] == true);
        if streamed {
            let events = format!(
                "{SSE_HEAD}{}data: {}\n\ndata: [DONE]\n\n",
                sse_chunk("whole"),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            );
            Reply::Close(events.into_bytes())
        } else {
            Reply::Close(json_answer(&completion("whole")))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_closed_cleanly_without_its_terminal_event_is_an_error_for_the_client() {
    // Two chunks, then `Connection: close`: no finish_reason, no [DONE].
    let first = RawUpstream::start(|_, _| {
        Reply::Close(format!("{SSE_HEAD}{}{}", sse_chunk("Hel"), sse_chunk("lo")).into_bytes())
    })
    .await;
    let second = healthy().await;
    let proxy =
        llm_proxy::Proxy::start(&two_tier_config(&first.base_url(), &second.base_url(), ""))
            .unwrap();
    let response = post(&proxy.url(), &ask("two", true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(tier(&response), "first");
    let body = response.text().await.unwrap();
    let (text, done, error) = read_stream(&body);
    assert_eq!(text, "Hello");
    assert!(!done, "a short stream must not look complete: {body}");
    let error = error.unwrap_or_else(|| panic!("no error event in {body}"));
    assert_eq!(error["error"]["code"], "stream_interrupted");
    // The client already had part of the answer: no other tier was asked.
    assert_eq!(second.requests(), 0);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_closed_before_any_data_falls_back_with_nothing_sent() {
    let first =
        RawUpstream::start(|_, _| Reply::Close(format!("{SSE_HEAD}: keep-alive\n\n").into_bytes()))
            .await;
    let second = healthy().await;
    let proxy =
        llm_proxy::Proxy::start(&two_tier_config(&first.base_url(), &second.base_url(), ""))
            .unwrap();
    let response = post(&proxy.url(), &ask("two", true)).await;
    assert_eq!(tier(&response), "second");
    let body = response.text().await.unwrap();
    let (text, done, error) = read_stream(&body);
    assert_eq!(
        (text.as_str(), done, error),
        ("whole", true, None),
        "{body}"
    );
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_with_a_finish_reason_but_no_done_is_whole() {
    let first = RawUpstream::start(|_, _| {
        let finish = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        // The last event is not even followed by its blank line.
        Reply::Close(format!("{SSE_HEAD}{}data: {finish}\n", sse_chunk("Hi")).into_bytes())
    })
    .await;
    let second = healthy().await;
    let proxy =
        llm_proxy::Proxy::start(&two_tier_config(&first.base_url(), &second.base_url(), ""))
            .unwrap();
    let response = post(&proxy.url(), &ask("two", true)).await;
    assert_eq!(tier(&response), "first");
    let body = response.text().await.unwrap();
    let (text, _, error) = read_stream(&body);
    assert_eq!(text, "Hi");
    assert!(error.is_none(), "a whole answer reported as cut: {body}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_stream_without_message_stop_is_an_error_for_the_client() {
    let upstream = RawUpstream::start(|_, _| {
        let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut out = String::from(SSE_HEAD);
        out += &event(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [], "stop_reason": null, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        );
        out += &event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        );
        for word in ["Bon", "jour"] {
            out += &event(
                "content_block_delta",
                json!({"type": "content_block_delta",
                "index": 0, "delta": {"type": "text_delta", "text": word}}),
            );
        }
        Reply::Close(out.into_bytes())
    })
    .await;
    let text = format!(
        r#"
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{}"
[[models]]
name = "c"
tiers = [ {{ upstream = "claude", model = "claude-x" }} ]
[auth]
client_keys = ["{}"]
[escalation]
store = "memory"
"#,
        upstream.base_url(),
        raw::CLIENT_KEY
    );
    let proxy = llm_proxy::Proxy::start(&llm_proxy::Config::from_toml(&text).unwrap()).unwrap();
    let response = post(&proxy.url(), &ask("c", true)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let (text, done, error) = read_stream(&body);
    assert_eq!(text, "Bonjour");
    assert!(
        !done,
        "a translated short stream must not look complete: {body}"
    );
    assert!(error.is_some(), "no error event in {body}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_or_cut_json_answer_is_invalid_and_falls_back() {
    let whole = completion("cut");
    for cut in [
        // Shorter than its Content-Length.
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            whole.len(),
            &whole[..whole.len() / 2]
        ),
        // Close-delimited, and cut.
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{}",
            &whole[..whole.len() / 2]
        ),
    ] {
        let first = RawUpstream::start(move |_, _| Reply::Close(cut.clone().into_bytes())).await;
        let second = healthy().await;
        let proxy =
            llm_proxy::Proxy::start(&two_tier_config(&first.base_url(), &second.base_url(), ""))
                .unwrap();
        let response = post(&proxy.url(), &ask("two", false)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(tier(&response), "second");
        // The last tier: a 502 that names an invalid response.
        let response = post(&proxy.url(), &ask("one", false)).await;
        assert_eq!(response.status(), 502);
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("invalid"), "{message}");
        proxy.stop();
    }
}

const SMALL_LIMIT: &str = "[limits]\nmax_upstream_body_bytes = 65536\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_the_upstream_body_limit_fail_their_tier() {
    let huge = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2147483648\r\n\r\n{\"id\":";
    let endless = |_: usize, _: &[u8]| Reply::Endless {
        head: b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n["
            .to_vec(),
        chunk: vec![b' '; 16 * 1024],
    };
    let announced = RawUpstream::start(move |_, _| Reply::Hold(huge.as_bytes().to_vec())).await;
    let unannounced = RawUpstream::start(endless).await;
    for first in [&announced, &unannounced] {
        let second = healthy().await;
        let proxy = llm_proxy::Proxy::start(&two_tier_config(
            &first.base_url(),
            &second.base_url(),
            SMALL_LIMIT,
        ))
        .unwrap();
        let response = post(&proxy.url(), &ask("two", false)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(tier(&response), "second");
        let response = post(&proxy.url(), &ask("one", false)).await;
        assert_eq!(response.status(), 502);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "upstream_error");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("invalid"), "{message}");
        proxy.stop();
    }
    // Reading stopped at the limit: the endless writer saw its peer go away
    // (both requests), having written little more than socket buffers hold.
    for _ in 0..200 {
        if unannounced.endless_stopped.load(Ordering::Relaxed) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(unannounced.endless_stopped.load(Ordering::Relaxed), 2);
    assert!(unannounced.written.load(Ordering::Relaxed) < 64 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_stream_ends_with_an_error_event_at_the_limit() {
    let first = RawUpstream::start(|_, _| Reply::Endless {
        head: SSE_HEAD.as_bytes().to_vec(),
        chunk: sse_chunk("more ").into_bytes(),
    })
    .await;
    let second = healthy().await;
    let proxy = llm_proxy::Proxy::start(&two_tier_config(
        &first.base_url(),
        &second.base_url(),
        SMALL_LIMIT,
    ))
    .unwrap();
    let response = post(&proxy.url(), &ask("two", true)).await;
    assert_eq!(tier(&response), "first");
    let body = response.text().await.unwrap();
    assert!(body.len() < 2 * 65536, "{} bytes passed", body.len());
    let (text, done, error) = read_stream(&body);
    assert!(text.starts_with("more more "));
    assert!(!done);
    let error = error.unwrap_or_else(|| panic!("no error event at the end of the stream"));
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("65536"), "{message}");
    // And the proxy still answers.
    let response = post(&proxy.url(), &ask("two", false)).await;
    assert_eq!(response.status(), 200);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_forever_is_bounded_by_the_upstream_timeout() {
    let first = RawUpstream::start(|_, _| Reply::Hold(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":".to_vec(),
    ))
    .await;
    let second = healthy().await;
    let mut config = two_tier_config(&first.base_url(), &second.base_url(), "");
    config.upstreams[0].timeout_secs = Duration::from_millis(300);
    let proxy = llm_proxy::Proxy::start(&config).unwrap();
    let response = post(&proxy.url(), &ask("one", false)).await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("timeout"), "{message}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_opens_then_stays_silent_is_a_timeout_not_a_connect_failure() {
    let first = RawUpstream::start(|_, _| Reply::Hold(SSE_HEAD.as_bytes().to_vec())).await;
    let second = healthy().await;
    let mut config = two_tier_config(&first.base_url(), &second.base_url(), "");
    config.upstreams[0].stream_idle_timeout_secs = Duration::from_millis(200);
    config.limits.first_event_timeout_secs = Duration::from_secs(30);
    let proxy = llm_proxy::Proxy::start(&config).unwrap();
    let response = post(&proxy.url(), &ask("one", true)).await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("first: timeout"), "{message}");
    assert!(!message.contains("connect"), "{message}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_line_that_never_ends_is_cut_at_the_event_limit() {
    // One whole event, then a `data:` line that goes on without a newline.
    let first = RawUpstream::start(|_, _| Reply::Endless {
        head: format!("{SSE_HEAD}{}data: ", sse_chunk("Hi")).into_bytes(),
        chunk: vec![b'a'; 16 * 1024],
    })
    .await;
    let second = healthy().await;
    let proxy = llm_proxy::Proxy::start(&two_tier_config(
        &first.base_url(),
        &second.base_url(),
        // Events are bounded by the smaller of this and 1 MiB.
        "[limits]\nmax_upstream_body_bytes = 4194304\n",
    ))
    .unwrap();
    let response = post(&proxy.url(), &ask("two", true)).await;
    assert_eq!(tier(&response), "first");
    let body = response.text().await.unwrap();
    assert!(body.len() < 2 * 1024 * 1024, "{} bytes passed", body.len());
    let (text, done, error) = read_stream(&body);
    assert_eq!(text, "Hi");
    assert!(!done);
    let error = error.unwrap_or_else(|| panic!("no error event at the end of the stream"));
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("larger than 1048576 bytes"), "{message}");
    let response = post(&proxy.url(), &ask("two", false)).await;
    assert_eq!(response.status(), 200);
    proxy.stop();
}
