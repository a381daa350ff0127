//! `[telemetry] otlp_endpoint`: a request that fell back is one trace, sent
//! over OTLP/HTTP to a receiver on 127.0.0.1 (decoded with
//! `opentelemetry-proto`): the server span continues the client's
//! `traceparent`, one client span per tier attempted with the GenAI
//! attributes, and each upstream received a `traceparent` of the same trace.
//! No prompt, answer or key in any span. With `sentry_dsn_env`, a request
//! where every tier failed is reported to a Sentry receiver on 127.0.0.1 with
//! its trace id, without the prompt or the upstream key.
//!
//! Its own test binary: the subscriber is process-wide.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use llm_proxy::config::TelemetryConfig;
use llm_proxy::telemetry::Telemetry;
use llm_proxy::{Config, Proxy};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const FAILED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "00f067aa0ba902b7";
const CLAUDE_TRACE_ID: &str = "5c1d6e2f3a4b5c6d7e8f90a1b2c3d4e5";
const PROMPT: &str = "what the client asked, never in a span";
const ANSWER: &str = "what the model said, never in a span";
const UPSTREAM_KEY: &str = "sk-upstream-key-never-in-a-span";

/// Every span the receiver got.
type Spans = Arc<Mutex<Vec<Span>>>;

async fn receive_traces(State(spans): State<Spans>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut all = spans.lock().unwrap();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            all.extend(scope.spans);
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    (StatusCode::OK, answer)
}

/// Every envelope a Sentry receiver got.
type Envelopes = Arc<Mutex<Vec<String>>>;

async fn receive_envelope(State(envelopes): State<Envelopes>, body: Bytes) -> StatusCode {
    envelopes
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&body).into_owned());
    StatusCode::OK
}

/// The `traceparent` each upstream call carried.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// An Anthropic Messages upstream, recording the `traceparent` it got.
async fn anthropic_upstream(State(seen): State<Seen>, headers: HeaderMap) -> axum::Json<Value> {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push(traceparent);
    axum::Json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1}
    }))
}

/// An OpenAI-compatible upstream: 500 when `fail`, else an answer with usage.
async fn upstream(
    State((seen, fail)): State<(Seen, bool)>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push(traceparent);
    if fail {
        let error = json!({"error": {"message": "boom", "type": "server_error"}});
        return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string());
    }
    let answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
        "model": "small-2025-01-01",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": ANSWER}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    });
    (StatusCode::OK, answer.to_string())
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> &'a str {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => s,
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(AnyValue::IntValue(n)) => *n,
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_is_one_trace_continuing_the_clients_and_reaching_the_upstreams() {
    let spans = Spans::default();
    let receiver = serve(
        Router::new()
            .route("/v1/traces", post(receive_traces))
            .with_state(spans.clone()),
    )
    .await;
    let envelopes = Envelopes::default();
    let sentry = serve(
        Router::new()
            .route("/api/42/envelope/", post(receive_envelope))
            .with_state(envelopes.clone()),
    )
    .await;
    let dsn = sentry.replace("http://", "http://publickey@") + "/42";
    std::env::set_var("TELEMETRY_TEST_SENTRY_DSN", dsn);
    let telemetry = Telemetry::install(&TelemetryConfig {
        otlp_endpoint: Some(format!("{receiver}/v1/traces")),
        sentry_dsn_env: Some("TELEMETRY_TEST_SENTRY_DSN".into()),
        ..TelemetryConfig::default()
    })
    .expect("the subscriber installs");

    let seen_primary = Seen::default();
    let seen_secondary = Seen::default();
    let primary = serve(
        Router::new()
            .route("/v1/chat/completions", post(upstream))
            .with_state((seen_primary.clone(), true)),
    )
    .await;
    let secondary = serve(
        Router::new()
            .route("/v1/chat/completions", post(upstream))
            .with_state((seen_secondary.clone(), false)),
    )
    .await;
    let seen_claude = Seen::default();
    let claude = serve(
        Router::new()
            .route("/v1/messages", post(anthropic_upstream))
            .with_state(seen_claude.clone()),
    )
    .await;
    std::env::set_var("TELEMETRY_TEST_UPSTREAM_KEY", UPSTREAM_KEY);
    let config = Config::from_toml(&format!(
        r#"
listen = "127.0.0.1:0"
[[upstreams]]
name = "primary"
kind = "openai"
base_url = "{primary}/v1"
api_key_env = "TELEMETRY_TEST_UPSTREAM_KEY"
[[upstreams]]
name = "secondary"
kind = "openai"
base_url = "{secondary}/v1"
[[models]]
name = "smart"
tiers = [ {{ upstream = "primary", model = "big" }}, {{ upstream = "secondary", model = "small" }} ]
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{claude}"
[[models]]
name = "solo"
tiers = [ {{ upstream = "primary", model = "big" }} ]
[[models]]
name = "sonnet"
tiers = [ {{ upstream = "claude", model = "claude-test" }} ]
[escalation]
store = "memory"
"#
    ))
    .expect("a valid config");
    let proxy = Proxy::start(&config).expect("the proxy starts");

    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .json(&json!({"model": "smart", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-llm-proxy-tier"], "secondary");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], ANSWER);

    // Each upstream got a traceparent of the client's trace, each with its
    // own parent span (the call's span).
    let traceparents: Vec<String> = [&seen_primary, &seen_secondary]
        .iter()
        .map(|seen| seen.lock().unwrap()[0].clone().expect("a traceparent"))
        .collect();
    for tp in &traceparents {
        assert!(tp.starts_with(&format!("00-{TRACE_ID}-")), "{tp}");
        assert!(
            !tp.contains(PARENT_ID),
            "the upstream's parent is the proxy's span: {tp}"
        );
    }
    assert_ne!(traceparents[0], traceparents[1]);

    // An Anthropic tier's call carries the trace too.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header(
            "traceparent",
            format!("00-{CLAUDE_TRACE_ID}-{PARENT_ID}-01"),
        )
        .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let claude_tp = seen_claude.lock().unwrap()[0]
        .clone()
        .expect("a traceparent at the Anthropic upstream");
    assert!(
        claude_tp.starts_with(&format!("00-{CLAUDE_TRACE_ID}-")),
        "{claude_tp}"
    );

    // The spans arrive once flushed (the exporter batches); bounded wait.
    let mut got = Vec::new();
    for _ in 0..100 {
        telemetry.flush();
        got = spans.lock().unwrap().clone();
        if got.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trace: Vec<&Span> = got
        .iter()
        .filter(|s| hex(&s.trace_id) == TRACE_ID)
        .collect();
    assert_eq!(
        trace.len(),
        3,
        "one server span and two tier spans: {got:#?}"
    );
    let server = trace
        .iter()
        .find(|s| s.name == "POST /v1/chat/completions")
        .expect("the server span");
    assert_eq!(hex(&server.parent_span_id), PARENT_ID);
    assert_eq!(text(server, "llm.tier"), "secondary");
    assert_eq!(int(server, "http.response.status_code"), 200);
    let tiers: Vec<&&Span> = trace
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    assert_eq!(tiers.len(), 2);
    for tier in &tiers {
        assert_eq!(tier.parent_span_id, server.span_id, "{}", tier.name);
        assert_eq!(text(tier, "gen_ai.operation.name"), "chat");
        assert_eq!(text(tier, "gen_ai.system"), "openai");
        let span_id = hex(&tier.span_id);
        assert!(
            traceparents.iter().any(|tp| tp.contains(&span_id)),
            "the upstream's traceparent names this call's span"
        );
    }
    let failed = tiers
        .iter()
        .find(|s| text(s, "llm.tier") == "primary")
        .unwrap();
    assert_eq!(failed.name, "chat big");
    assert_eq!(text(failed, "gen_ai.request.model"), "big");
    assert_eq!(text(failed, "error.type"), "server_error");
    assert_eq!(int(failed, "http.response.status_code"), 500);
    let answered = tiers
        .iter()
        .find(|s| text(s, "llm.tier") == "secondary")
        .unwrap();
    assert_eq!(answered.name, "chat small");
    assert_eq!(text(answered, "gen_ai.request.model"), "small");
    assert_eq!(text(answered, "gen_ai.response.model"), "small-2025-01-01");
    assert_eq!(int(answered, "gen_ai.usage.input_tokens"), 11);
    assert_eq!(int(answered, "gen_ai.usage.output_tokens"), 7);
    assert!(attr(answered, "error.type").is_none());

    // Nothing the client or the model said, and no key, in any span.
    let dump = format!("{got:?}");
    for secret in [PROMPT, ANSWER, UPSTREAM_KEY] {
        assert!(!dump.contains(secret), "a span holds {secret:?}");
    }
    // The fallback answered: nothing for Sentry.
    telemetry.flush();
    assert!(
        envelopes.lock().unwrap().is_empty(),
        "{:?}",
        envelopes.lock().unwrap()
    );

    // Every tier fails: a 502, reported with the request's trace id.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header(
            "traceparent",
            format!("00-{FAILED_TRACE_ID}-{PARENT_ID}-01"),
        )
        .json(&json!({"model": "solo", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let mut event = None;
    for _ in 0..100 {
        telemetry.flush();
        let all = envelopes.lock().unwrap().clone();
        event = all
            .iter()
            .find(|e| e.contains("\"type\":\"event\""))
            .cloned();
        if event.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let envelope = event.expect("a Sentry event");
    let payload: Value = envelope
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|item| item.get("event_id").is_some() && item.get("message").is_some())
        .unwrap_or_else(|| panic!("the event item: {envelope}"));
    // `error` is Sentry's default level: not written.
    assert!(payload["level"].is_null() || payload["level"] == "error");
    assert_eq!(payload["contexts"]["trace"]["trace_id"], FAILED_TRACE_ID);
    assert_eq!(
        payload["message"],
        "llm-proxy answered 502 (all_tiers_failed)"
    );
    assert_eq!(payload["tags"]["trace_id"], FAILED_TRACE_ID, "{payload}");
    assert_eq!(payload["tags"]["error.code"], "all_tiers_failed");
    for secret in [PROMPT, UPSTREAM_KEY, "publickey"] {
        assert!(
            !envelope.contains(secret),
            "the report holds {secret:?}: {envelope}"
        );
    }
    proxy.stop();
}
