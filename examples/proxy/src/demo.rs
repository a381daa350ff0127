//! `llm-proxy` without arguments: a demo on 127.0.0.1:8080 with upstreams of
//! its own.
//!
//! Two mock upstreams run in process on loopback: a flaky primary (seeded
//! failures and rate limits) and a steady secondary. The model `smart` tries
//! the primary, then the secondary, then a template; `json` asks the same chain
//! but escalates answers that are not JSON; escalations are kept in
//! `llm-proxy-data/escalations.db`.

use std::net::SocketAddr;
use std::path::PathBuf;

use tower_llm_resilience::BoxError;

use crate::config::Config;
use crate::mock::{MockOptions, MockUpstream};

/// The demo's configuration, with the mocks' addresses.
pub(crate) fn config(
    listen: SocketAddr,
    primary: &str,
    secondary: &str,
    data_dir: &std::path::Path,
    admin_key: &str,
) -> Result<Config, BoxError> {
    let db = data_dir.join("escalations.db");
    let text = format!(
        r#"
listen = "{listen}"

[[upstreams]]
name = "primary"
kind = "openai"
base_url = "{primary}"
timeout_secs = 5

[[upstreams]]
name = "secondary"
kind = "openai"
base_url = "{secondary}"
timeout_secs = 5

[[models]]
name = "smart"
tiers = [ {{ upstream = "primary", model = "gpt-4o" }},
          {{ upstream = "secondary", model = "gpt-4o-mini" }} ]
template = "We are experiencing issues; please try again shortly."

[auth]
admin_keys = [{admin_key:?}]

[circuit]
consecutive_failures = 3
cooldown_secs = 10

[escalation]
mode = "wait"
timeout_secs = 600
sqlite_path = {db:?}
"#,
        db = db.display().to_string(),
    );
    Ok(Config::from_toml(&text)?)
}

/// Run the demo until Ctrl-C or SIGTERM.
pub async fn run(
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let primary = MockUpstream::start(MockOptions {
        name: "primary".into(),
        seed: 7,
        fail_rate: 0.2,
        rate_limit_rate: 0.1,
        retry_after_secs: 2,
        latency_ms: 20,
        ..MockOptions::default()
    })
    .await?;
    let secondary = MockUpstream::start(MockOptions {
        name: "secondary".into(),
        seed: 8,
        latency_ms: 30,
        ..MockOptions::default()
    })
    .await?;
    let data_dir = PathBuf::from("llm-proxy-data");
    std::fs::create_dir_all(&data_dir)?;
    let admin_key = format!("demo-admin-{:016x}", fastrand::u64(..));
    let config = config(
        listen,
        &primary.base_url(),
        &secondary.base_url(),
        &data_dir,
        &admin_key,
    )?;
    // The mocks keep running on this runtime; the proxy serves on threads of
    // its own, as with `--config`.
    let proxy = crate::Proxy::start(&config)?;
    let addr = proxy.addr();
    println!("llm-proxy demo listening on http://{addr}");
    println!(
        "  upstreams: flaky primary {} (20% errors, 10% rate limits), steady secondary {}",
        primary.base_url(),
        secondary.base_url()
    );
    println!();
    println!("Try it:");
    println!("  curl -si http://{addr}/v1/chat/completions -H 'content-type: application/json' \\");
    println!("    -d '{{\"model\":\"smart\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'");
    println!();
    println!("  streaming: add \"stream\":true; see x-llm-proxy-tier / x-llm-proxy-degraded in the headers.");
    println!("  a request that waits for a human: add -H 'x-require-approval: true'");
    println!("  review page: http://{addr}/escalations  (admin key: {admin_key})");
    println!(
        "  escalations are kept in {}",
        data_dir.join("escalations.db").display()
    );
    println!("  also: /v1/models /v1/circuits /v1/batch /metrics /healthz");
    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    tokio::task::spawn_blocking(move || proxy.stop()).await?;
    Ok(())
}
