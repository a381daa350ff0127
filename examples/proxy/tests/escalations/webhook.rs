//! `[escalation.webhook]`: a receiver on 127.0.0.1 is told of each new
//! escalation with a signed body, and its link leads to the review page; a
//! receiver that refuses shows in `/metrics`; bad settings stop the start.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use http::{HeaderMap, StatusCode};
use llm_proxy::{Config, Proxy};
use serde_json::Value;
use tokio::sync::mpsc;
use tower_llm_resilience::escalation::notify::{verify_signature, SIGNATURE_HEADER};

use crate::common::*;

const APPROVAL: (&str, &str) = ("x-require-approval", "true");
const SECRET: &str = "webhook-signing-secret";
const PUBLIC: &str = "https://llm-proxy.example.test";

/// A webhook receiver on loopback: each POST's signature header and body go
/// to `received`; it answers `status`.
struct Receiver {
    url: String,
    received: mpsc::UnboundedReceiver<(Option<String>, Bytes)>,
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Sink {
    tx: mpsc::UnboundedSender<(Option<String>, Bytes)>,
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

async fn receive(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> StatusCode {
    sink.calls.fetch_add(1, Ordering::SeqCst);
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = sink.tx.send((signature, body));
    StatusCode::from_u16(sink.status.load(Ordering::SeqCst)).unwrap()
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let (tx, received) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(status));
        let calls = Arc::new(AtomicUsize::new(0));
        let sink = Sink {
            tx,
            status: status.clone(),
            calls: calls.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/escalations",
            listener.local_addr().unwrap()
        );
        let app = Router::new()
            .route("/hooks/escalations", post(receive))
            .with_state(sink);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            received,
            status,
            calls,
        }
    }

    async fn next(&mut self) -> (Option<String>, Bytes) {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("a notification within 10 s")
            .expect("the receiver runs")
    }
}

/// Environment variable names unique to this process and `tag` (the tests of
/// this binary run at once).
fn vars(tag: &str) -> (String, String) {
    let pid = std::process::id();
    (
        format!("LLM_PROXY_TEST_WEBHOOK_URL_{tag}_{pid}"),
        format!("LLM_PROXY_TEST_WEBHOOK_SECRET_{tag}_{pid}"),
    )
}

fn webhook_table(url_var: &str, secret_var: &str, extra: &str) -> String {
    format!(
        "mode = \"detach\"\n[escalation.webhook]\nurl_env = \"{url_var}\"\n\
         secret_env = \"{secret_var}\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_escalation_is_posted_signed_and_its_link_opens_the_review_page() {
    let mut receiver = Receiver::start(200).await;
    let (url_var, secret_var) = vars("ok");
    std::env::set_var(&url_var, &receiver.url);
    std::env::set_var(&secret_var, SECRET);
    let env = Env::with_escalation(&webhook_table(
        &url_var,
        &secret_var,
        &format!("public_base_url = \"{PUBLIC}/\""),
    ))
    .await;

    let prompt = "a prompt that must not leave the proxy";
    let response = env
        .chat_with(
            serde_json::json!({"model": "smart", "messages": [{"role": "user", "content": prompt}]}),
            &[APPROVAL],
        )
        .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let id = answer["escalation"]["id"].as_str().unwrap().to_owned();
    let token = answer["escalation"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let (signature, body) = receiver.next().await;
    let signature = signature.expect("a signature header");
    assert!(verify_signature(SECRET.as_bytes(), &body, &signature));
    assert!(!verify_signature(b"another secret", &body, &signature));
    let text = String::from_utf8(body.to_vec()).unwrap();
    for secret in [prompt, &token, SECRET, CLIENT_KEY, ADMIN_KEY] {
        assert!(
            !text.contains(secret),
            "the notification leaks {secret:?}: {text}"
        );
    }
    let payload: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(payload["event"], "escalation.created");
    assert_eq!(payload["escalation_id"], id.as_str());
    assert_eq!(payload["reason"], "the client asked for human approval");
    let link = payload["review_url"].as_str().unwrap();
    assert_eq!(link, format!("{PUBLIC}/escalations/{id}"));
    assert!(
        payload["text"].as_str().unwrap().contains(link),
        "{payload}"
    );

    // The link, on the proxy: the review page for an admin, the sign-in form
    // for anyone else.
    let path = &link[PUBLIC.len()..];
    let page = env.admin_get(path).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Pending escalations") && html.contains("linked"));
    let anonymous = env.http.get(env.url(path)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.text().await.unwrap().contains("admin-key"));
    // The escalation itself is there to review.
    let pending = env.pending(1).await;
    assert_eq!(pending[0]["id"], id.as_str());
    let record = delivery_recorded(&env, &id).await;
    assert_eq!(record["notification"]["delivered"], true, "{record}");
    assert_eq!(record["notification"]["attempts"], 1, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delivery_is_counted_in_metrics() {
    let mut receiver = Receiver::start(500).await;
    let (url_var, secret_var) = vars("refused");
    std::env::set_var(&url_var, &receiver.url);
    std::env::set_var(&secret_var, SECRET);
    let env = Env::with_escalation(&webhook_table(&url_var, &secret_var, "attempts = 1")).await;
    let failed_before = failed_deliveries(&env).await;
    let response = env.chat_with(ask("smart"), &[APPROVAL]).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let id = answer["escalation"]["id"].as_str().unwrap().to_owned();
    let (_, body) = receiver.next().await;
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["review_url"], Value::Null, "no public_base_url");

    // One attempt, refused: counted, and on the record.
    let record = delivery_recorded(&env, &id).await;
    assert_eq!(record["notification"]["delivered"], false, "{record}");
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 1);
    assert!(failed_deliveries(&env).await > failed_before);
    receiver.status.store(200, Ordering::SeqCst);
}

/// The escalation's record once the outcome of its notification is on it
/// (bounded wait: the proxy records it after the receiver answered).
async fn delivery_recorded(env: &Env, id: &str) -> Value {
    let mut record = Value::Null;
    for _ in 0..200 {
        record = env
            .admin_get(&format!("/v1/escalations/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if !record["notification"]["delivered"].is_null() {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no delivery outcome recorded within 10 s: {record}");
}

/// `escalation_notifications_total{outcome="failed"}` (0 before the first).
async fn failed_deliveries(env: &Env) -> u64 {
    let text = env
        .http
        .get(env.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("escalation_notifications_total{outcome=\"failed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn bad_webhook_settings_stop_the_start_without_echoing_the_url() {
    let (url_var, secret_var) = vars("bad");
    let db = tempfile::tempdir().unwrap();
    let config = |extra: &str| {
        Config::from_toml(&config_text(
            "http://127.0.0.1:9/v1",
            "http://127.0.0.1:9/v1",
            &db.path().join("e.db"),
            &webhook_table(&url_var, &secret_var, extra),
        ))
    };
    // Unset variables: named.
    let err = Proxy::start(&config("").unwrap()).unwrap_err().to_string();
    assert!(err.contains(&url_var), "{err}");
    // A plain-http URL off loopback: refused, the URL (a secret) not shown.
    let hook = "http://hooks.example.com/services/T000/B000/XXXXSECRETXXXX";
    std::env::set_var(&url_var, hook);
    std::env::set_var(&secret_var, SECRET);
    let err = Proxy::start(&config("").unwrap()).unwrap_err().to_string();
    assert!(err.contains("https") && err.contains(&url_var), "{err}");
    assert!(!err.contains("XXXXSECRETXXXX"), "{err}");
    // Settings checked when the file is read.
    for (extra, what) in [
        ("attempts = 0", "attempts"),
        ("attempt_timeout_secs = 0", "attempt_timeout_secs"),
        ("public_base_url = \"ftp://x\"", "public_base_url"),
        ("public_base_url = \"https://x/?a=b\"", "public_base_url"),
        ("surprise = 1", "surprise"),
    ] {
        let err = config(extra).unwrap_err().to_string();
        assert!(err.contains(what), "{extra}: {err}");
    }
}
