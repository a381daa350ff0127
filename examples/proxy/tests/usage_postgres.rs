//! Two proxies on one PostgreSQL (`[state] postgres_url`, no Redis) enforce one
//! budget per client key and see one usage record set; a budget store outage
//! admits. A real PostgreSQL (Debian's `postgresql`) per test binary, started
//! as an unprivileged user on a free port, one fresh database per test.

mod common;
// The proxy has no `postgres` feature of its own: the file's library helpers
// (behind the library's feature) are not compiled here.
#[allow(unexpected_cfgs)]
#[path = "../../../tests/support/postgres.rs"]
mod postgres_server;

use std::time::{Duration, Instant};

use common::*;
use llm_proxy::{Config, Proxy};
use postgres_server::{TableLock, TestDb};

/// How long a charge may take to land in PostgreSQL (off the answer's path)
/// before the test fails: slack for a loaded CI machine.
const DEADLINE: Duration = Duration::from_secs(5);

/// A proxy in front of the mocks, on `db`, with `budgets` (TOML) and usage
/// priced so that an answer of the mock costs 62 500 nano-dollars.
fn proxy(
    env_dir: &tempfile::TempDir,
    primary: &str,
    secondary: &str,
    db: &TestDb,
    budgets: &str,
    grace_secs: u32,
) -> Proxy {
    let text = format!(
        "{}\n[state]\npostgres_url = \"{}\"\nprefix = \"budget-test\"\n\
         postgres_connect_timeout_secs = 1\npostgres_op_timeout_secs = 2\n\
         [usage]\nenabled = true\n[usage.prices.\"gpt-4o\"]\ninput = 2.5\noutput = 10.0\n\
         {budgets}\n",
        config_text(
            primary,
            secondary,
            &env_dir.path().join("escalations.db"),
            ""
        ),
        db.url(),
    )
    .replace(
        "shutdown_grace_secs = 1\n",
        &format!("shutdown_grace_secs = {grace_secs}\n"),
    );
    // A long grace is for a test that holds a table: its operations may wait
    // as long.
    let text = if grace_secs > 1 {
        text.replace(
            "postgres_op_timeout_secs = 2\n",
            &format!("postgres_op_timeout_secs = {grace_secs}\n"),
        )
    } else {
        text
    };
    Proxy::start(&Config::from_toml(&text).expect("valid config")).expect("proxy starts")
}

/// Two proxies, A and B, on one PostgreSQL, in front of the same mocks.
struct Pair {
    a: Proxy,
    b: Proxy,
    primary: llm_proxy::mock::MockUpstream,
    _secondary: llm_proxy::mock::MockUpstream,
    http: reqwest::Client,
    _dirs: [tempfile::TempDir; 2],
    // Last: dropped after the proxies.
    db: TestDb,
}

impl Pair {
    async fn start(db: TestDb, budgets: &str) -> Pair {
        Pair::start_with_grace(db, budgets, 1).await
    }

    /// [`start`](Self::start) with `limits.shutdown_grace_secs`.
    async fn start_with_grace(db: TestDb, budgets: &str, grace_secs: u32) -> Pair {
        let (primary, secondary) = (mock("primary").await, mock("secondary").await);
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let (p, s) = (primary.base_url(), secondary.base_url());
        // Started off the async threads, together: both migrate at startup
        // (one applies, the other waits).
        let (a, b) = std::thread::scope(|scope| {
            let starts = [&dirs[0], &dirs[1]]
                .map(|dir| scope.spawn(|| proxy(dir, &p, &s, &db, budgets, grace_secs)));
            let [a, b] = starts.map(|start| start.join().expect("the proxy starts"));
            (a, b)
        });
        Pair {
            a,
            b,
            primary,
            _secondary: secondary,
            http: reqwest::Client::new(),
            _dirs: dirs,
            db,
        }
    }

    async fn chat(&self, proxy: &Proxy) -> reqwest::StatusCode {
        post_chat(&self.http, &proxy.url(), &ask("solo"))
            .await
            .status()
    }

    /// A counter of `/metrics` on `proxy` (0 when not there yet).
    async fn metric(&self, proxy: &Proxy, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", proxy.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    fn sql(&self, sql: &str) -> String {
        self.db.server.psql(&self.db.name, sql)
    }

    async fn stop(self) {
        let Pair { a, b, db, .. } = self;
        for proxy in [a, b] {
            tokio::task::spawn_blocking(move || proxy.stop())
                .await
                .unwrap();
        }
        drop(db);
    }
}

fn unix_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_on_one_proxy_counts_against_the_budget_on_the_other() {
    let pair = Pair::start(TestDb::fresh(), "[budgets.default]\nbudget_usd = 0.0001\n").await;
    // Two answers through A: 125 000 of 100 000 spent.
    assert_eq!(pair.chat(&pair.a).await, 200);
    assert_eq!(pair.chat(&pair.a).await, 200);
    // The spend reaches PostgreSQL off the answer's path: B refuses once it
    // landed.
    let started = Instant::now();
    let mut calls_before_refusal = pair.primary.requests();
    loop {
        let status = pair.chat(&pair.b).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        calls_before_refusal = pair.primary.requests();
        assert!(started.elapsed() < DEADLINE, "B never refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        pair.primary.requests(),
        calls_before_refusal,
        "refused before the upstream"
    );
    assert_eq!(pair.chat(&pair.a).await, 429);
    // One counter in PostgreSQL holds the spend of both.
    let spend: u64 = pair
        .sql("SELECT sum(value) FROM tower_llm_counters WHERE key LIKE '%:spend'")
        .parse()
        .unwrap();
    assert!(spend >= 125_000, "{spend}");
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_are_counted_across_both_proxies_at_admission() {
    let pair = Pair::start(TestDb::fresh(), "[budgets.default]\nrpm = 2\n").await;
    // Admission counts in PostgreSQL before answering: no waiting. A minute
    // boundary in the middle starts the count again, so then try once more.
    let mut checked = false;
    for _ in 0..3 {
        let minute = unix_minute();
        let statuses = [
            pair.chat(&pair.a).await,
            pair.chat(&pair.b).await,
            pair.chat(&pair.a).await,
            pair.chat(&pair.b).await,
        ];
        if unix_minute() != minute {
            continue;
        }
        assert_eq!(statuses, [200, 200, 429, 429]);
        checked = true;
        break;
    }
    assert!(checked, "three minute boundaries in a row");
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_recorded_on_both_proxies_is_read_on_either() {
    let pair = Pair::start(TestDb::fresh(), "").await;
    assert_eq!(pair.chat(&pair.a).await, 200);
    assert_eq!(pair.chat(&pair.b).await, 200);
    for proxy in [&pair.a, &pair.b] {
        // A query waits for its own proxy's writer; the other's batch lands
        // on its own time.
        let started = Instant::now();
        let usage = loop {
            let url = format!("{}/v1/usage", proxy.url());
            let usage = get_json(&pair.http, &url, CLIENT_KEY).await;
            if usage["totals"]["requests"] == 2 {
                break usage;
            }
            assert!(started.elapsed() < DEADLINE, "not both records: {usage}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let totals = &usage["totals"];
        assert_eq!(
            (
                totals["input_tokens"].clone(),
                totals["output_tokens"].clone()
            ),
            (10.into(), 10.into())
        );
        assert_eq!(totals["cost_nano_usd"], 125_000);
        assert_eq!(usage["groups"][0]["model"], "solo");
    }
    let admin = get_json(
        &pair.http,
        &format!("{}/v1/admin/usage", pair.a.url()),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(
        admin["groups"][0]["client"],
        llm_proxy::client_id::client_key_id(CLIENT_KEY)
    );
    // The records are PostgreSQL's (a query waits for the writer's batch).
    assert_eq!(pair.sql("SELECT sum(requests) FROM tower_llm_usage"), "2");
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_store_outage_admits_and_the_budget_holds_again_after() {
    let pair = Pair::start(
        TestDb::on_own_server(),
        "[budgets.default]\nbudget_usd = 0.0001\n",
    )
    .await;
    assert_eq!(pair.chat(&pair.a).await, 200);
    let errors = pair.metric(&pair.b, "llm_proxy_budget_errors_total").await;
    pair.db.server.stop();
    // The counters are unreachable: admitted (logged and counted), answered.
    assert_eq!(pair.chat(&pair.b).await, 200);
    assert!(pair.metric(&pair.b, "llm_proxy_budget_errors_total").await > errors);
    pair.db.server.restart();
    // Back by itself: the answers after it are counted (a charge made during
    // the outage is lost, counted in `llm_proxy_budget_errors_total`), and the
    // budget refuses on either proxy again.
    let started = Instant::now();
    loop {
        let status = pair.chat(&pair.a).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < 3 * DEADLINE,
            "the budget never held again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pair.chat(&pair.b).await, 429);
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_writes_the_usage_records_queued_before_it() {
    // A grace period well past the lock below, however loaded the machine.
    let pair = Pair::start_with_grace(TestDb::fresh(), "", 20).await;
    // The usage table held by another session until the test ends it: the
    // proxy's writer waits on its first write, and the records after it queue
    // up.
    let lock = TableLock::hold(&pair.db.server, &pair.db.name, "tower_llm_usage");
    let n = 40;
    for _ in 0..n {
        assert_eq!(pair.chat(&pair.a).await, 200);
    }
    // The writer is stuck behind the lock.
    let started = Instant::now();
    while pair.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock'",
    ) == "0"
    {
        assert!(started.elapsed() < DEADLINE, "the writer never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Stopped while the records wait: the stop waits for them (within the
    // grace period), so none is lost once the table is free again. (A stop
    // that did not wait would be over, the records dropped, well before the
    // lock goes.)
    let Pair { a, b, db, .. } = pair;
    let stopping = tokio::task::spawn_blocking(move || {
        a.stop();
        b.stop();
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.release();
    stopping.await.unwrap();
    let written = db.server.psql(
        &db.name,
        "SELECT coalesce(sum(requests), 0) FROM tower_llm_usage",
    );
    assert_eq!(written, n.to_string());
}
