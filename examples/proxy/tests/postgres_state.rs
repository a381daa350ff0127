//! `[state] postgres_url`: two proxies on one PostgreSQL share circuits,
//! escalations and batch records; an outage keeps chat working and fails the
//! store's operations with a 503; `llm-proxy migrate` applies the schema once.
//! A real PostgreSQL (Debian's `postgresql`) per test binary, started as an
//! unprivileged user on a free port, one fresh database per test.

mod common;
// The proxy has no `postgres` feature of its own: the file's library helpers
// (behind the library's feature) are not compiled here.
#[allow(unexpected_cfgs)]
#[path = "../../../tests/support/postgres.rs"]
mod postgres_server;
#[path = "../../../tests/support/redis.rs"]
mod redis_server;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use llm_proxy::mock::MockUpstream;
use llm_proxy::{CircuitSync, Config, Proxy};
use postgres_server::{TableLock, TestDb};
use serde_json::{json, Value};

const APPROVAL: (&str, &str) = ("x-require-approval", "true");

/// How long a shared change may take to show on the other proxy before the test
/// fails (NOTIFY reaches the others in milliseconds; this is slack for a loaded
/// CI machine). Far below the escalation poll interval these tests set (an
/// hour): a wake-up within it came through `NOTIFY`.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(5);

/// The `[state]` of a proxy on `db`, with short timeouts (an outage is seen
/// quickly).
fn state(db: &TestDb) -> String {
    format!(
        "postgres_url = \"{}\"\nprefix = \"pg-test\"\n\
         postgres_connect_timeout_secs = 1\npostgres_op_timeout_secs = 2\n",
        db.url()
    )
}

fn config(
    primary: &MockUpstream,
    secondary: &MockUpstream,
    dir: &tempfile::TempDir,
    state: &str,
    escalation: &str,
) -> Config {
    let text = config_text(
        &primary.base_url(),
        &secondary.base_url(),
        &dir.path().join("escalations.db"),
        escalation,
    )
    // Polling too slow to wake anyone within a test: only NOTIFY does.
    .replace("poll_interval_secs = 0.1", "poll_interval_secs = 3600");
    Config::from_toml(&format!("{text}\n[state]\n{state}\n")).expect("test config is valid")
}

/// Two proxies, A and B, configured alike: same upstreams, same database.
struct Pair {
    primary: MockUpstream,
    secondary: MockUpstream,
    a: Proxy,
    b: Proxy,
    http: reqwest::Client,
    _dirs: [tempfile::TempDir; 2],
    // Last: dropped after the proxies.
    db: TestDb,
}

impl Pair {
    async fn start(escalation: &str) -> Pair {
        Pair::on(TestDb::fresh(), escalation).await
    }

    async fn on(db: TestDb, escalation: &str) -> Pair {
        let primary = mock("primary").await;
        let secondary = mock("secondary").await;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let state = state(&db);
        // Both migrate at startup, concurrently: one applies, the other waits.
        let starts: Vec<_> = dirs
            .iter()
            .map(|dir| config(&primary, &secondary, dir, &state, escalation))
            .map(|config| std::thread::spawn(move || Proxy::start(&config)))
            .collect();
        let mut proxies = starts
            .into_iter()
            .map(|start| start.join().unwrap().expect("the proxy starts"));
        let (a, b) = (proxies.next().unwrap(), proxies.next().unwrap());
        let pair = Pair {
            primary,
            secondary,
            a,
            b,
            http: reqwest::Client::new(),
            _dirs: dirs,
            db,
        };
        for proxy in [&pair.a, &pair.b] {
            let syncs = proxy.circuit_syncs();
            let names: Vec<&str> = syncs.iter().map(|(name, _)| &**name).collect();
            assert_eq!(names, ["primary", "secondary"], "one sync per upstream");
            assert!(syncs
                .iter()
                .all(|(_, sync)| matches!(sync, CircuitSync::Postgres(_))));
            poll_until("the circuit syncs listen on PostgreSQL", || {
                let connected = syncs.iter().all(|(_, sync)| sync.is_connected());
                async move { connected }
            })
            .await;
        }
        pair
    }

    async fn chat(&self, proxy: &Proxy, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .json(&ask("smart"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("proxy answers")
    }

    async fn circuit(&self, proxy: &Proxy, upstream: &str) -> Value {
        let list: Value = self
            .http
            .get(format!("{}/v1/circuits", proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .expect("proxy answers")
            .json()
            .await
            .expect("a JSON list");
        list["data"]
            .as_array()
            .expect("a list")
            .iter()
            .find(|c| c["upstream"] == upstream)
            .cloned()
            .expect("the upstream's circuit is listed")
    }

    async fn resolve(&self, proxy: &Proxy, id: &str, decision: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/escalations/{id}/resolve", proxy.url()))
            .bearer_auth(ADMIN_KEY)
            .json(&decision)
            .send()
            .await
            .expect("proxy answers")
    }

    async fn batch(&self, proxy: &Proxy, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/batch", proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .json(body)
            .send()
            .await
            .expect("proxy answers")
    }

    /// A chat through `proxy` that waits for a human, as a task.
    fn waiting_chat(&self, proxy: &Proxy) -> tokio::task::JoinHandle<reqwest::Response> {
        let http = self.http.clone();
        let url = format!("{}/v1/chat/completions", proxy.url());
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(CLIENT_KEY)
                .header(APPROVAL.0, APPROVAL.1)
                .json(&ask("smart"))
                .send()
                .await
                .unwrap()
        })
    }

    fn sql(&self, sql: &str) -> String {
        self.db.server.psql(&self.db.name, sql)
    }
}

/// Polls `check` every 10 ms until it holds; fails the test after
/// [`PROPAGATION_DEADLINE`].
async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < PROPAGATION_DEADLINE,
            "{what}: not within {PROPAGATION_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops a proxy off the async thread (its runtime's shutdown blocks).
async fn stop(proxy: Proxy) {
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opened_on_a_is_open_on_b_which_answers_from_the_secondary() {
    let pair = Pair::start("").await;
    assert_eq!(pair.circuit(&pair.b, "primary").await["state"], "closed");
    pair.primary.set(|o| o.fail_rate = 1.0);

    // `consecutive_failures = 2`: two failed calls through A open its circuit.
    for _ in 0..2 {
        let response = pair.chat(&pair.a, &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    }
    assert_eq!(pair.circuit(&pair.a, "primary").await["state"], "open");
    let primary_calls = pair.primary.requests();
    assert_eq!(primary_calls, 2);

    // B never called the primary, yet reports its circuit open.
    poll_until("B reports the primary's circuit open", || async {
        pair.circuit(&pair.b, "primary").await["state"] == "open"
    })
    .await;
    let on_b = pair.circuit(&pair.b, "primary").await;
    assert_eq!(on_b["failures"], 0, "B saw no failure itself: {on_b}");
    assert!(on_b["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert_eq!(pair.circuit(&pair.b, "secondary").await["state"], "closed");
    // The decision is in the table, under the prefixed name.
    assert_eq!(
        pair.sql("SELECT name FROM tower_llm_circuits"),
        "pg-test/primary"
    );

    // B answers from the secondary without calling the primary.
    for _ in 0..3 {
        let response = pair.chat(&pair.b, &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
        assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
    }
    assert_eq!(
        pair.primary.requests(),
        primary_calls,
        "B skipped the primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_waiting_on_a_is_resolved_through_b_and_wakes_a_by_notify() {
    let pair = Pair::start("").await;
    let waiting = pair.waiting_chat(&pair.a);
    // Created through A, listed by B.
    let pending = wait_pending(&pair.http, &pair.b.url(), 1).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["reason"], "the client asked for human approval");
    let id = pending[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        pair.sql("SELECT status FROM tower_llm_escalations"),
        "pending"
    );
    assert!(!waiting.is_finished(), "A's client still waits");

    let resolved = pair
        .resolve(
            &pair.b,
            &id,
            json!({"decision": "answer", "answer": "B's human says hi.", "by": "bob"}),
        )
        .await;
    assert_eq!(resolved.status(), 200);
    let woken_after = Instant::now();

    // The client waiting on A gets the answer given through B, long before
    // A's next poll (an hour away): NOTIFY woke it.
    let response = tokio::time::timeout(PROPAGATION_DEADLINE, waiting)
        .await
        .expect("A's waiting client is woken by NOTIFY, not by polling")
        .unwrap();
    eprintln!(
        "woken on A {:?} after the resolution on B",
        woken_after.elapsed()
    );
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "human");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "B's human says hi.");
    assert_eq!(pair.primary.requests(), 0, "the gate held the call");

    // Resolved once for everyone: a second resolution through A is a conflict.
    assert_eq!(
        pair.resolve(&pair.a, &id, json!({"decision": "approve"}))
            .await
            .status(),
        409
    );
    let audit = pair.sql(&format!(
        "SELECT count(*) FROM tower_llm_escalation_audit WHERE escalation_id = '{id}'"
    ));
    assert!(
        audit.parse::<u32>().unwrap() >= 2,
        "created and resolved: {audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_escalation_from_a_is_approved_and_resumed_on_b_once() {
    let pair = Pair::start("mode = \"detach\"").await;
    let response = pair.chat(&pair.a, &[APPROVAL]).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let token = body["escalation"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = body["escalation"]["id"].as_str().unwrap().to_owned();

    let pending = wait_pending(&pair.http, &pair.b.url(), 1).await;
    assert_eq!(pending[0]["id"], id.as_str());
    let approved = pair
        .resolve(&pair.b, &id, json!({"decision": "approve", "by": "bob"}))
        .await;
    assert_eq!(approved.status(), 200);

    // Resumed on B with A's token: the call goes on to the primary, once.
    let resumed = pair.chat(&pair.b, &[("x-resume-token", &token)]).await;
    assert_eq!(resumed.status(), 200);
    assert_eq!(header(&resumed, "x-llm-proxy-tier"), "primary");
    assert_eq!(pair.primary.requests(), 1);
    let again = pair.chat(&pair.a, &[("x-resume-token", &token)]).await;
    assert_eq!(
        again.status(),
        409,
        "the token is single use across proxies"
    );
    assert_eq!(pair.primary.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_on_a_and_rerun_on_b_comes_back_cached() {
    let pair = Pair::start("").await;
    let batch = json!({
        "batch_id": "nightly-shared",
        "requests": [
            {"key": "a", "body": ask("smart")},
            {"key": "b", "body": ask("smart")},
            {"key": "c", "body": ask("no-such-model")},
        ]
    });
    let first: Value = pair.batch(&pair.a, &batch).await.json().await.unwrap();
    assert_eq!(
        (&first["ok"], &first["failed"], &first["cached"]),
        (&json!(2), &json!(1), &json!(0)),
        "{first}"
    );
    assert_eq!(pair.primary.requests(), 2);
    assert_eq!(
        pair.sql(
            "SELECT count(*) FROM tower_llm_batch_items WHERE batch_id LIKE '%nightly-shared'"
        ),
        "2"
    );

    let again: Value = pair.batch(&pair.b, &batch).await.json().await.unwrap();
    assert_eq!(
        (&again["ok"], &again["failed"], &again["cached"]),
        (&json!(2), &json!(1), &json!(2)),
        "{again}"
    );
    for (item, key) in again["items"].as_array().unwrap()[..2]
        .iter()
        .zip(["a", "b"])
    {
        assert_eq!(item["key"], key);
        assert_eq!(item["cached"], true);
        assert_eq!(item["attempts"], 0);
        assert_eq!(content(&item["response"]), "Hello from primary.");
    }
    assert_eq!(pair.primary.requests(), 2, "no upstream call on B");
    assert_eq!(pair.secondary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_mid_run_loses_no_acknowledged_escalation() {
    // A server of its own: this test stops it.
    let pair = Pair::on(TestDb::on_own_server(), "mode = \"detach\"").await;
    // Three escalations acknowledged (202 with a token) before the outage.
    let mut acknowledged = Vec::new();
    for proxy in [&pair.a, &pair.b, &pair.a] {
        let response = pair.chat(proxy, &[APPROVAL]).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        let id = body["escalation"]["id"].as_str().unwrap().to_owned();
        let token = body["escalation"]["resume_token"]
            .as_str()
            .unwrap()
            .to_owned();
        acknowledged.push((id, token));
    }

    pair.db.server.stop();

    // Chat keeps working on local circuit state.
    let response = pair.chat(&pair.a, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "primary");
    // What needs the store fails with a 503 in the OpenAI format.
    let refused = pair.chat(&pair.b, &[APPROVAL]).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(header(&refused, "retry-after"), "5");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let listed = pair
        .http
        .get(format!("{}/v1/escalations?status=pending", pair.a.url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 503);
    let body: Value = listed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let batch = json!({"batch_id": "outage", "requests": [{"key": "a", "body": ask("smart")}]});
    let refused = pair.batch(&pair.b, &batch).await;
    assert_eq!(refused.status(), 503);
    let ready = pair
        .http
        .get(format!("{}/readyz", pair.a.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while the store is down");

    pair.db.server.restart();

    // Recovered on its own: every acknowledged escalation is there, and each
    // resolves and resumes once (the first operation after the restart may
    // meet a pooled connection the restart closed: retried until the
    // deadline).
    poll_until("the store answers again", || async {
        pair.http
            .get(format!("{}/v1/escalations?status=pending", pair.b.url()))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let pending = wait_pending(&pair.http, &pair.b.url(), 3).await;
    let mut ids: Vec<&str> = pending.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = acknowledged.iter().map(|(id, _)| id.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "every acknowledged escalation survived");
    for (i, (id, token)) in acknowledged.iter().enumerate() {
        let (resolver, resumer) = if i % 2 == 0 {
            (&pair.b, &pair.a)
        } else {
            (&pair.a, &pair.b)
        };
        assert_eq!(
            pair.resolve(resolver, id, json!({"decision": "approve"}))
                .await
                .status(),
            200
        );
        let resumed = pair.chat(resumer, &[("x-resume-token", token)]).await;
        assert_eq!(resumed.status(), 200, "escalation {id} resumes");
    }
    // The batch refused during the outage runs now.
    let ran: Value = pair.batch(&pair.a, &batch).await.json().await.unwrap();
    assert_eq!(ran["ok"], 1, "{ran}");
    // Ready again (a probe's result serves for a second).
    poll_until("ready again", || async {
        pair.http
            .get(format!("{}/readyz", pair.a.url()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_and_postgres_circuits_are_on_redis_and_records_on_postgres() {
    let redis = redis_server::RedisServer::start();
    let db = TestDb::fresh();
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().unwrap();
    let state = format!("{}redis_url = \"{}\"\n", state(&db), redis.url());
    let proxy = Proxy::start(&config(
        &primary,
        &secondary,
        &dir,
        &state,
        "mode = \"detach\"",
    ))
    .expect("the proxy starts");
    assert!(proxy
        .circuit_syncs()
        .iter()
        .all(|(_, sync)| matches!(sync, CircuitSync::Redis(_))));
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .bearer_auth(CLIENT_KEY)
        .header(APPROVAL.0, APPROVAL.1)
        .json(&ask("smart"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(
        db.server
            .psql(&db.name, "SELECT count(*) FROM tower_llm_escalations"),
        "1",
        "the escalation is kept on PostgreSQL"
    );
    stop(proxy).await;
}

/// Runs `llm-proxy migrate --config FILE`.
fn migrate_command(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
        .args(["migrate", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run llm-proxy migrate")
}

#[test]
fn migrate_applies_the_schema_once_even_when_run_twice_at_once() {
    let db = TestDb::fresh();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llm-proxy.toml");
    let text = config_text(
        "http://127.0.0.1:9/v1",
        "http://127.0.0.1:9/v1",
        &dir.path().join("escalations.db"),
        "",
    );
    // The URL from the environment, as production would have it.
    std::fs::write(
        &path,
        format!("{text}\n[state]\npostgres_url_env = \"TEST_DATABASE_URL\"\n"),
    )
    .unwrap();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
                .args(["migrate", "--config"])
                .arg(&path)
                .env("TEST_DATABASE_URL", db.url())
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run llm-proxy migrate")
        })
        .collect();
    let outputs: Vec<_> = runs
        .into_iter()
        .map(|run| run.wait_with_output().unwrap())
        .collect();
    for out in &outputs {
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let said: Vec<String> = outputs
        .iter()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .collect();
    assert_eq!(
        said.iter()
            .filter(|s| s.starts_with("applied migrations"))
            .count(),
        1,
        "one run applied, the other found the schema current: {said:?}"
    );
    assert_eq!(
        said.iter()
            .filter(|s| s.starts_with("the PostgreSQL schema is current"))
            .count(),
        1,
        "{said:?}"
    );
    // One schema: each version recorded once.
    let versions = db.server.psql(
        &db.name,
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM tower_llm_schema_migrations",
    );
    let recorded = db.server.psql(
        &db.name,
        "SELECT count(*) = count(DISTINCT version) FROM tower_llm_schema_migrations",
    );
    assert_eq!(recorded, "t", "{versions}");
    assert!(versions.starts_with("1,2,3,4"), "{versions}");

    // Again, alone: nothing to do.
    let out = migrate_command_with_env(&path, &db.url());
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("the PostgreSQL schema is current"));
}

fn migrate_command_with_env(config: &std::path::Path, url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
        .args(["migrate", "--config"])
        .arg(config)
        .env("TEST_DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run llm-proxy migrate")
}

#[test]
fn migrate_fails_clearly_without_postgres_or_when_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llm-proxy.toml");
    let text = config_text(
        "http://127.0.0.1:9/v1",
        "http://127.0.0.1:9/v1",
        &dir.path().join("escalations.db"),
        "",
    );
    std::fs::write(&path, &text).unwrap();
    let out = migrate_command(&path);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("names no PostgreSQL"), "{said}");

    // A port nothing listens on: an error that names the server, not the
    // password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://tower:hunter2-secret@127.0.0.1:{port}/db?sslmode=disable");
    std::fs::write(
        &path,
        format!("{text}\n[state]\npostgres_url_env = \"TEST_DATABASE_URL\"\npostgres_connect_timeout_secs = 1\n"),
    )
    .unwrap();
    let out = migrate_command_with_env(&path, &url);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot migrate"), "{said}");
    assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");
    assert!(!said.contains("hunter2"), "the password stays out: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_while_postgres_is_down_serves_chat_and_migrates_when_it_returns() {
    let db = TestDb::on_own_server();
    db.server.stop();
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(
        &primary,
        &secondary,
        &dir,
        &state(&db),
        "mode = \"detach\"",
    ))
    .expect("an unreachable PostgreSQL does not stop the proxy");
    let http = reqwest::Client::new();
    let chat = |headers: &'static [(&'static str, &'static str)]| {
        let mut request = http
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .json(&ask("smart"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    assert_eq!(
        chat(&[]).await.unwrap().status(),
        200,
        "chat needs no store"
    );
    let refused = chat(&[APPROVAL]).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert!(
        !body.to_string().contains("postgres"),
        "the store's own words stay in the log: {body}"
    );

    // PostgreSQL comes up with an empty database: the proxy migrates it (it
    // tries every 5 s) and escalations work.
    db.server.restart();
    let started = Instant::now();
    loop {
        let response = chat(&[APPROVAL]).await.unwrap();
        if response.status() == 202 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not migrated within 30 s: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        db.server
            .psql(&db.name, "SELECT count(*) FROM tower_llm_escalations"),
        "1"
    );
    stop(proxy).await;
}

#[test]
fn bad_postgres_settings_fail_at_load_with_the_setting_named() {
    let text = config_text(
        "http://127.0.0.1:9/v1",
        "http://127.0.0.1:9/v1",
        std::path::Path::new("unused.db"),
        "",
    );
    for (state, expected) in [
        (
            "postgres_url = \"postgres://u:pw-x@h/db?sslmode=nope\"",
            "state.postgres_url",
        ),
        (
            "postgres_url_env = \"LLM_PROXY_TEST_NO_SUCH_VARIABLE\"",
            "not set",
        ),
        ("postgres_url = \"postgres://u:pw-x@y@h/db\"", "%40"),
        (
            "postgres_url = \"postgres://h/db\"\nprefix = \"PREFIX\"",
            "state.prefix: at most 128 bytes",
        ),
        (
            "postgres_url = \"postgres://h/db\"\npostgres_url_env = \"X\"",
            "both set",
        ),
        (
            "postgres_url = \"postgres://h/db\"\npostgres_pool_size = 0",
            "postgres_pool_size",
        ),
        (
            "postgres_url = \"postgres://h/db\"\npostgres_op_timeout_secs = 0",
            "postgres_op_timeout_secs",
        ),
        (
            "postgres_url = \"postgres://h/db\"\npostgres_ca_file = \"/nonexistent/ca.pem\"",
            "postgres_ca_file",
        ),
    ] {
        let state = state.replace("PREFIX", &"p".repeat(129));
        let e = Config::from_toml(&format!("{text}\n[state]\n{state}\n"))
            .err()
            .unwrap_or_else(|| panic!("{state} is refused"))
            .to_string();
        assert!(e.contains(expected), "{state}: {e}");
        assert!(!e.contains("pw-x"), "the password stays out: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_on_either_proxy_are_kept_in_one_audit_log() {
    let pair = Pair::start("mode = \"detach\"").await;
    let response = pair.chat(&pair.a, &[APPROVAL]).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["escalation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        pair.resolve(&pair.b, &id, json!({"decision": "approve"}))
            .await
            .status(),
        200
    );
    let forced = pair
        .http
        .post(format!(
            "{}/v1/admin/circuits/secondary/force-open",
            pair.a.url()
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 200);

    let page = |proxy: &Proxy, query: &str| {
        pair.http
            .get(format!("{}/v1/admin/audit{query}", proxy.url()))
            .bearer_auth(ADMIN_KEY)
            .send()
    };
    // Written off the request path: read until both are there.
    poll_until("both actions are in the audit log", || async {
        let events: Value = page(&pair.b, "").await.unwrap().json().await.unwrap();
        events["data"].as_array().is_some_and(|d| d.len() == 2)
    })
    .await;
    let events: Value = page(&pair.b, "").await.unwrap().json().await.unwrap();
    // Each proxy writes its own off the request path: in either order.
    let data = events["data"].as_array().unwrap();
    let find = |action: &str| {
        data.iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("{action} in {events}"))
    };
    let resolved = find("escalation_resolve");
    assert_eq!(resolved["subject"], id.as_str());
    assert_eq!(resolved["detail"], r#"{"status":"approved"}"#);
    assert_eq!(find("circuit_force_open")["subject"], "secondary");
    assert!(
        data[0]["seq"].as_i64() < data[1]["seq"].as_i64(),
        "oldest first"
    );
    // The actor is the admin key's id, never the key.
    let actor = resolved["actor"].as_str().unwrap();
    assert!(!actor.is_empty() && actor != ADMIN_KEY, "{actor}");
    assert_eq!(events["next_after"], Value::Null, "one page holds both");

    // Paged: one at a time, from either proxy.
    let first: Value = page(&pair.a, "?limit=1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["data"].as_array().unwrap().len(), 1);
    let after = first["next_after"].as_i64().expect("a next page");
    let second: Value = page(&pair.a, &format!("?limit=1&after={after}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["data"][0], data[1], "{second}");
    for bad in ["?limit=0", "?limit=1001", "?after=-1", "?after=x"] {
        let refused = page(&pair.a, bad).await.unwrap();
        assert_eq!(refused.status(), 400, "{bad}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(
            body["error"]["type"], "invalid_request_error",
            "{bad}: {body}"
        );
    }
    // Clients may not read it.
    let client = pair
        .http
        .get(format!("{}/v1/admin/audit", pair.a.url()))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(client.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgres_the_audit_endpoint_says_where_the_trail_is() {
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &primary.base_url(),
        &secondary.base_url(),
        &dir.path().join("escalations.db"),
        "",
    );
    let proxy = Proxy::start(&Config::from_toml(&text).unwrap()).unwrap();
    let response = reqwest::Client::new()
        .get(format!("{}/v1/admin/audit", proxy.url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_audit_log", "{body}");
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_log_drops_past_its_queue_and_admin_actions_still_answer() {
    let pair = Pair::start("").await;
    // The audit table held by another session until the test ends it: the
    // proxy's writer blocks on its first event, the rest queue (1,024 at
    // most) and the ones past the queue are dropped and counted.
    let lock = TableLock::hold(&pair.db.server, &pair.db.name, "tower_llm_audit_log");
    let actions = 1100;
    for i in 0..actions {
        let action = if i % 2 == 0 { "force-open" } else { "reset" };
        let response = pair
            .http
            .post(format!(
                "{}/v1/admin/circuits/secondary/{action}",
                pair.a.url()
            ))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "action {i}");
    }
    // One event in the writer's hands, 1,024 queued, the rest dropped.
    let metrics = pair
        .http
        .get(format!("{}/metrics", pair.a.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("llm_proxy_audit_dropped_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap());
    assert_eq!(dropped, f64::from(actions - 1024 - 1), "{dropped}");
    // The table free again, what was queued is written.
    lock.release();
    poll_until("the queued events are written", || async {
        pair.sql("SELECT count(*) FROM tower_llm_audit_log") == "1025"
    })
    .await;
}
