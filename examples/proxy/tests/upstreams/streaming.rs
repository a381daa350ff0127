//! Streamed (SSE) requests: first-event fallback and interrupted streams.

use crate::common::*;
use serde_json::json;

fn ask_stream(model: &str) -> serde_json::Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Say hello"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_the_primary() {
    let env = Env::start().await;
    let response = env.chat(ask_stream("smart")).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&response, "x-llm-proxy-tier"), "primary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "false");
    let (text, done, error) = sse_text(&response.text().await.unwrap());
    assert_eq!(text, "Hello from primary.");
    assert!(done && !error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_stream_that_breaks_before_its_first_event_falls_back_cleanly() {
    let env = Env::start().await;
    env.primary.set(|o| {
        o.cut_rate = 1.0;
        o.cut_after = 0;
    });
    let response = env.chat(ask_stream("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
    let body = response.text().await.unwrap();
    let (text, done, error) = sse_text(&body);
    // One clean stream, all from the secondary.
    assert_eq!(text, "Hello from secondary.");
    assert!(done && !error, "{body}");
    assert!(!body.contains("primary"));
    assert_eq!(env.primary.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_stream_that_stalls_before_its_first_event_falls_back() {
    let env = Env::start().await;
    env.primary.set(|o| o.stall_rate = 1.0);
    let response = env.chat(ask_stream("smart")).await;
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    let (text, done, error) = sse_text(&response.text().await.unwrap());
    assert_eq!(text, "Hello from secondary.");
    assert!(done && !error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_midway_ends_with_an_error_event() {
    let env = Env::start().await;
    env.primary.set(|o| {
        o.cut_rate = 1.0;
        o.cut_after = 2;
    });
    let response = env.chat(ask_stream("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "primary");
    let body = response.text().await.unwrap();
    let (text, done, error) = sse_text(&body);
    assert_eq!(text, "Hello ");
    assert!(error, "no error event in {body}");
    assert!(!done, "a cut stream must not look complete: {body}");
    assert!(body.contains("stream_interrupted"));
    // The secondary was not asked: the client already had part of the answer.
    assert_eq!(env.secondary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_streams_when_every_tier_fails() {
    let env = Env::start().await;
    env.primary.set(|o| o.fail_rate = 1.0);
    env.secondary.set(|o| o.rate_limit_rate = 1.0);
    let response = env.chat(ask_stream("smart")).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&response, "x-llm-proxy-tier"), "template");
    let (text, done, error) = sse_text(&response.text().await.unwrap());
    assert_eq!(text, TEMPLATE);
    assert!(done && !error);
}
