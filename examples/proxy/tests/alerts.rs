//! The alert rules of `deploy/prometheus/alerts.yml` in a real Prometheus
//! (Debian's `prometheus` package) that scrapes a running proxy: every rule
//! evaluates without error against the proxy's real series, and the circuit
//! alert fires once the proxy opened a circuit.
//!
//! Prometheus runs on a free port with its storage in a temporary directory,
//! scraping and evaluating every second; the test polls its HTTP API (real time:
//! Prometheus is another process), bounded by a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/alerts.yml")
}

impl Prometheus {
    /// Scraping `target` (`host:port`) every second, with the repository's rules.
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: llm-proxy\n    static_configs:\n      - targets: [{target:?}]\n",
                rules = rules_file().canonicalize().expect("the rules file").display().to_string(),
            ),
        )
        .expect("write the Prometheus config");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {PROMETHEUS} ({e}): apt-get install prometheus")
            });
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `data` of a GET on the HTTP API, or `None` while Prometheus is not up.
    async fn api(&self, http: &reqwest::Client, path: &str) -> Option<Value> {
        let response = http.get(format!("{}{path}", self.base)).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        assert_eq!(body["status"], "success", "{path}: {body}");
        Some(body["data"].clone())
    }

    /// Poll `path` until `done` accepts its data; panics with the last data
    /// after 60 s.
    async fn until(
        &self,
        http: &reqwest::Client,
        path: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(data) = self.api(http, path).await {
                if done(&data) {
                    return data;
                }
                last = data;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("Prometheus: {what} within 60 s; last {path}: {last}");
    }
}

/// Every rule of every group.
fn rules(data: &Value) -> Vec<&Value> {
    data["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect()
}

/// The alert names of `alerts.yml`, read from the file.
fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(rules_file()).expect("the rules file");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_evaluate_against_a_scraped_proxy_and_the_circuit_alert_fires() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let target = env.proxy.url().trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(dir.path(), &target);
    let http = reqwest::Client::new();

    // Served once before the circuit opens, so the scrapes see the proxy's
    // series; then the primary fails until its circuit opens
    // (`consecutive_failures = 2`), and the answers come from the secondary.
    assert_eq!(env.chat(ask("smart")).await.status(), StatusCode::OK);
    prometheus
        .until(&http, "/api/v1/targets", "the proxy scraped", |d| {
            d["activeTargets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["health"] == "up"))
        })
        .await;
    env.primary.set(|o| o.fail_rate = 1.0);
    for _ in 0..3 {
        let answer = env.chat(ask("smart")).await;
        assert_eq!(header(&answer, "x-llm-proxy-tier"), "secondary");
    }
    let circuits = circuits(&env.http, &env.proxy.url()).await;
    assert!(
        circuits
            .iter()
            .any(|c| c["upstream"] == "primary" && c["state"] == "open"),
        "{circuits:?}"
    );

    // The proxy's series the rules read exist under the names they use.
    for series in [
        "llm_proxy_circuit_state",
        "llm_proxy_answers_total",
        "llm_proxy_escalation_oldest_pending_seconds",
        "llm_fallback_tier_failures_total",
        "llm_circuit_transitions_total",
    ] {
        prometheus
            .until(
                &http,
                &format!("/api/v1/query?query={series}"),
                series,
                |d| d["result"].as_array().is_some_and(|r| !r.is_empty()),
            )
            .await;
    }

    // The opening is an alert, with the upstream's name and its runbook.
    let alerts = prometheus
        .until(&http, "/api/v1/alerts", "LlmCircuitOpened firing", |d| {
            d["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|a| {
                    a["labels"]["alertname"] == "LlmCircuitOpened" && a["state"] == "firing"
                })
            })
        })
        .await;
    let fired = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "LlmCircuitOpened")
        .expect("the alert");
    assert_eq!(fired["labels"]["circuit"], "primary", "{fired}");
    assert_eq!(
        fired["annotations"]["runbook_url"],
        "docs/runbooks.md#llmcircuitopened"
    );

    // The rules are one group, evaluated together: after the evaluation that
    // fired the alert, every rule of the file has been evaluated against the
    // proxy's series, and none failed.
    let names = alert_names();
    assert!(names.len() >= 8, "{names:?}");
    let data = prometheus
        .api(&http, "/api/v1/rules")
        .await
        .expect("Prometheus answers");
    let rules = rules(&data);
    assert_eq!(rules.len(), names.len(), "{data}");
    for rule in rules {
        assert!(names.iter().any(|n| rule["name"] == n.as_str()), "{rule}");
        assert_eq!(
            rule["health"], "ok",
            "rule {} failed to evaluate: {}",
            rule["name"], rule["lastError"]
        );
    }
    let runbook = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks.md"),
    )
    .expect("the runbook");
    for name in &names {
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "docs/runbooks.md has no section for {name}"
        );
    }
}
