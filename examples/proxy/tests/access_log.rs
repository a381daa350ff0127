//! The access log and the auth log, captured: one line per request with who
//! and what (never a key or a prompt), failed authentications with the
//! client's address.
//!
//! A test binary of its own: it installs the process-wide tracing subscriber,
//! which in a shared binary would turn on the access log of every other test
//! and capture their lines too.

mod common;

use std::sync::{Mutex, OnceLock};

use common::*;
use llm_proxy::client_id::client_key_id;

/// Everything the proxy logs in this test binary.
fn captured() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Writer;
        impl std::io::Write for Writer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                captured().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter("llm_proxy::access=info,llm_proxy::auth=warn,llm_proxy::audit=info")
            .with_writer(|| Writer)
            .with_ansi(false)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn log_lines(containing: &str) -> Vec<String> {
    let log = captured().lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(containing))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_line_per_request_and_failed_logins_logged_without_secrets() {
    captured();
    const KEY: &str = "access-log-client-key";
    let env = Env::start_edited(|t| t.replace(CLIENT_KEY, KEY)).await;
    let id = client_key_id(KEY);
    env.primary.set(|m| m.fail_rate = 1.0);
    let response = env
        .http
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&ask("smart"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await;
    let wrong = env
        .http
        .get(env.url("/v1/models"))
        .bearer_auth("a-wrong-key-never-logged")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let models = env
        .http
        .get(env.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let lines = log_lines(&format!("client={id}"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("path=/v1/models") && lines[1].contains("status=200"));
    let line = &lines[0];
    for field in [
        "llm_proxy::access",
        "method=POST",
        "path=/v1/chat/completions",
        "status=200",
        "model=smart",
        "tier=secondary",
        "degraded=true",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field}: {line}");
    }
    let failures = log_lines("wrong client key");
    assert!(!failures.is_empty());
    assert!(failures[0].contains("llm_proxy::auth") && failures[0].contains("127.0.0.1"));
    let all = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
    assert!(!all.contains("a-wrong-key-never-logged") && !all.contains(KEY));
    assert!(!all.contains("Say hello"), "no prompt in any log");
}
