//! `[telemetry] sentry_dsn_env`: a panic anywhere in the process is reported
//! to Sentry (the `panic` integration the proxy installs), without secrets.
//!
//! Its own test binary: the subscriber and the Sentry client are process-wide.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use llm_proxy::config::TelemetryConfig;
use llm_proxy::telemetry::Telemetry;

type Envelopes = Arc<Mutex<Vec<String>>>;

async fn receive_envelope(State(envelopes): State<Envelopes>, body: Bytes) -> StatusCode {
    envelopes
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&body).into_owned());
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_reported_to_sentry() {
    let envelopes = Envelopes::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/api/7/envelope/", post(receive_envelope))
        .with_state(envelopes.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    std::env::set_var(
        "SENTRY_PANIC_TEST_DSN",
        format!("http://publickey@{addr}/7"),
    );
    let telemetry = Telemetry::install(&TelemetryConfig {
        sentry_dsn_env: Some("SENTRY_PANIC_TEST_DSN".into()),
        ..TelemetryConfig::default()
    })
    .expect("the subscriber installs");

    let crashed = std::thread::spawn(|| panic!("PANIC-MARK a bug in a handler")).join();
    assert!(crashed.is_err());

    let mut event = None;
    for _ in 0..100 {
        telemetry.flush();
        event = envelopes
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.contains("PANIC-MARK"))
            .cloned();
        if event.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let envelope = event.expect("a Sentry event for the panic");
    assert!(envelope.contains("\"type\":\"panic\""), "{envelope}");
    assert!(!envelope.contains("publickey"), "{envelope}");
}
