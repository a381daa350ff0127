//! Asynchronous batches (issue 22): `POST /v1/batch` with `Prefer:
//! respond-async` or JSONL, `GET /v1/batch/{id}`, and `llm-proxy worker`
//! processes with the queue on a real `redis-server` or a real PostgreSQL,
//! against a seeded upstream written for the test (rate limits with
//! Retry-After, 500s, fatal 400s).

mod bounds;
#[path = "../common/mod.rs"]
mod common;
mod dashboard;
mod postgres;
// The file's library-only helpers are behind the library's `postgres` feature.
#[allow(unexpected_cfgs)]
#[path = "../../../../tests/support/postgres.rs"]
mod postgres_server;
#[path = "../../../../tests/support/redis.rs"]
mod redis_server;
mod upstream;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_proxy::{Config, Proxy};
use redis_server::RedisServer;
use serde_json::{json, Value};
use tower_llm_resilience::jobs::{ItemState, JobStore};
use tower_llm_resilience::redis::RedisJobStore;
use upstream::{plan, prompt, Plan, Upstream};

const KEY_A: &str = "key-a";
const KEY_B: &str = "key-b";
const PREFIX: &str = "jobs-test";

fn config_text(upstream: &str, state: &str, batch: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
workers = 1

[[upstreams]]
name = "up"
kind = "openai"
base_url = "{upstream}"
timeout_secs = 10

[[models]]
name = "m"
tiers = [ {{ upstream = "up", model = "gpt-test" }} ]

[auth]
client_keys = ["{KEY_A}", "{KEY_B}"]

[limits]
shutdown_grace_secs = 2

[circuit]
consecutive_failures = 1000000

[batch]
seed = 7
max_attempts = 4
job_lease_secs = 2
job_heartbeat_secs = 0.5
{batch}

{state}
"#
    )
}

fn redis_state(redis: &RedisServer) -> String {
    format!(
        "[state]\nredis_url = {:?}\nprefix = \"{PREFIX}\"\n",
        redis.url()
    )
}

/// A proxy started from a config text, its client, and where the text was
/// written for `llm-proxy worker` processes.
struct Served {
    proxy: Proxy,
    client: Client,
    path: PathBuf,
}

/// Writes `text` to `dir/proxy.toml` and starts a proxy from it.
fn serve(dir: &Path, text: &str) -> Served {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let proxy = Proxy::start(&Config::from_toml(text).unwrap()).expect("the proxy starts");
    let client = Client {
        http: reqwest::Client::new(),
        base: proxy.url(),
    };
    Served {
        proxy,
        client,
        path,
    }
}

/// A `llm-proxy worker` process, killed on drop.
struct Worker {
    child: Child,
}

impl Worker {
    fn start(config: &Path, log: PathBuf) -> Worker {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
            .args(["worker", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn,llm_proxy=info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the worker starts");
        Worker { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn post(&self, key: &str, headers: &[(&str, &str)], body: String) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/batch", self.base))
            .bearer_auth(key)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get_jsonl(&self, key: &str, path: &str) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("accept", "application/jsonl")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/jsonl");
        let text = response.text().await.unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Submits batch `id` of `n` seeded items (key A, asynchronous) and
    /// waits (up to `deadline`) until every item is done or failed; returns
    /// the progress.
    async fn run_batch(&self, id: &str, n: usize, deadline: Duration) -> Value {
        let (status, accepted) = self
            .post(KEY_A, &[("prefer", "respond-async")], batch_body(id, n))
            .await;
        assert_eq!(status, 202, "{accepted}");
        self.wait_progress(id, deadline, finished).await
    }

    /// Polls `GET /v1/batch/{id}` until `done` holds (bounded).
    async fn wait_progress(
        &self,
        id: &str,
        deadline: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let (status, report) = self.get(KEY_A, &format!("/v1/batch/{id}?limit=1")).await;
            assert_eq!(status, 200, "{report}");
            if done(&report["progress"]) {
                return report["progress"].clone();
            }
            assert!(
                started.elapsed() < deadline,
                "no progress within {deadline:?}: {report}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The items of `batch` a worker whose name starts with `prefix` holds.
async fn held_by(store: &dyn JobStore, batch: &str, prefix: &str) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    let mut after = None;
    loop {
        let page = store.items(batch, after.as_deref(), 1000).await.unwrap();
        for (key, state) in page.items {
            if let ItemState::Running { worker, .. } = state {
                if worker.starts_with(prefix) {
                    held.insert(key);
                }
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return held,
        }
    }
}

fn finished(progress: &Value) -> bool {
    progress["done"].as_u64().unwrap() + progress["failed"].as_u64().unwrap()
        == progress["total"].as_u64().unwrap()
}

fn batch_body(id: &str, n: usize) -> String {
    let requests: Vec<Value> = (0..n)
        .map(|i| {
            json!({"key": prompt(i), "body": {"model": "m",
                "messages": [{"role": "user", "content": prompt(i)}]}})
        })
        .collect();
    json!({"batch_id": id, "requests": requests}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_run_a_seeded_batch_once_per_item_through_a_sigkill() {
    let redis = RedisServer::start();
    let store = RedisJobStore::new(redis.client()).unwrap().prefix(PREFIX);
    let client = redis.client();
    let jobs_left = move || {
        let client = client.clone();
        Box::pin(async move {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let config =
                tower_llm_resilience::jobs::redis_storage_config(&format!("{PREFIX}:batches"));
            redis::cmd("HLEN")
                .arg(config.job_data_hash())
                .query_async::<u64>(&mut conn)
                .await
                .unwrap()
        }) as JobsLeft
    };
    seeded_batch_through_a_sigkill(&redis_state(&redis), Arc::new(store), "", jobs_left).await;
}

/// How many jobs the queue still keeps (apalis' own rows or hashes).
pub(crate) type JobsLeft = std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

/// 1,000 seeded items on three `llm-proxy worker` processes sharing the
/// proxy's `[state]` (`state`, whose job store `store` reads), one SIGKILLed
/// mid-run: each item answered to success once, the report exact (paged and
/// JSONL), a re-submission pushes only the fatal items, and the workers prune
/// the queue's finished jobs (`jobs_left` counts what it keeps). The store
/// knows the batch as `{batch_prefix}{client}/{id}`.
pub(crate) async fn seeded_batch_through_a_sigkill(
    state: &str,
    store: Arc<dyn JobStore>,
    batch_prefix: &str,
    jobs_left: impl Fn() -> JobsLeft,
) {
    let store = store.as_ref();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&upstream.base_url(), state, "");
    let Served {
        proxy,
        client,
        path,
    } = serve(dir.path(), &text);
    let mut workers: Vec<Worker> = ["a", "b", "c"]
        .iter()
        .map(|name| Worker::start(&path, dir.path().join(format!("worker-{name}.log"))))
        .collect();

    let n = 1000;
    let (status, submitted) = client
        .post(
            KEY_A,
            &[
                ("prefer", "respond-async"),
                ("content-type", "application/json"),
            ],
            batch_body("nightly", n),
        )
        .await;
    assert_eq!(status, 202, "{submitted}");
    assert_eq!(submitted["id"], "nightly");
    assert_eq!(submitted["status_url"], "/v1/batch/nightly");
    assert_eq!(
        (
            &submitted["pushed"],
            &submitted["already_done"],
            &submitted["running"]
        ),
        (&json!(n), &json!(0), &json!(0))
    );
    // Another client's key neither sees the batch nor its results.
    let (status, other) = client.get(KEY_B, "/v1/batch/nightly").await;
    assert_eq!(status, 404, "{other}");

    // Mid-run: hold the upstream, wait until every success it gave is
    // recorded and the victim holds items, then SIGKILL it.
    client
        .wait_progress("nightly", Duration::from_secs(60), |p| {
            p["done"].as_u64().unwrap() >= 150
        })
        .await;
    upstream.close_gate();
    let batch = format!(
        "{batch_prefix}{}/nightly",
        llm_proxy::client_id::client_key_id(KEY_A)
    );
    let victim_prefix = format!("llm-proxy-{}-", workers[0].pid());
    let started = Instant::now();
    let mut victim_items = loop {
        let answered: u32 = upstream.successes().values().sum();
        let progress = store.progress(&batch).await.unwrap().unwrap();
        let held = held_by(store, &batch, &victim_prefix).await;
        if progress.done == answered as usize && !held.is_empty() && upstream.held_now() > 0 {
            break held;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the victim holds no items ({held:?}, {} held at the upstream), or successes \
             are unrecorded: {progress:?}, {answered} answered; the victim's log:\n{}",
            upstream.held_now(),
            std::fs::read_to_string(dir.path().join("worker-a.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut victim = workers.remove(0);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    // With what it claimed between the look and the kill (its lease keeps
    // them in its name for 2 s yet).
    victim_items.extend(held_by(store, &batch, &victim_prefix).await);
    upstream.open_gate();

    let progress = client
        .wait_progress("nightly", Duration::from_secs(180), finished)
        .await;
    let fatal = (0..n).filter(|i| plan(*i) == Plan::Fatal).count();
    assert_eq!(
        progress,
        json!({"total": n, "done": n - fatal, "failed": fatal, "pending": 0, "in_flight": 0})
    );
    // No prompt answered with success twice, the victim's items included.
    let successes = upstream.successes();
    assert_eq!(successes.len(), n - fatal);
    assert!(successes.values().all(|&s| s == 1), "{successes:?}");
    for key in &victim_items {
        let index: usize = key[5..].parse().unwrap();
        assert_eq!(
            successes.get(key).copied().unwrap_or(0),
            u32::from(plan(index) != Plan::Fatal),
            "{key}"
        );
    }

    // The report, exact: every item in key order, its outcome by its plan, its
    // attempts as the upstream counted its calls.
    let calls = upstream.calls();
    let held = upstream.held_answers();
    let cut = upstream.held_cut();
    let mut items = Vec::new();
    let mut after = String::new();
    loop {
        let path = match after.as_str() {
            "" => "/v1/batch/nightly?limit=1000".to_owned(),
            key => format!("/v1/batch/nightly?limit=400&after={key}"),
        };
        let (status, page) = client.get(KEY_A, &path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["status"], "completed");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(items.len(), n);
    for (i, item) in items.iter().enumerate() {
        let key = prompt(i);
        assert_eq!(item["key"], key.as_str());
        let attempts = item["attempts"].as_u64().unwrap() as u32;
        if victim_items.contains(&key) {
            assert!(attempts >= calls[&key], "{item}");
        } else {
            assert_eq!(attempts, calls[&key], "{item}");
        }
        let expected_calls = match plan(i) {
            Plan::Ok | Plan::Fatal => 1,
            Plan::RateLimitedOnce | Plan::ServerErrorOnce => 2,
        } + held.get(&key).copied().unwrap_or(0)
            + cut.get(&key).copied().unwrap_or(0);
        assert_eq!(calls[&key], expected_calls, "{key}");
        match plan(i) {
            Plan::Fatal => {
                assert_eq!(item["status"], "failed", "{item}");
                assert_eq!(item["error"]["type"], "bad_request", "{item}");
                assert_eq!(item["error"]["fatal"], true, "{item}");
            }
            _ => {
                assert_eq!(item["status"], "ok", "{item}");
                assert_eq!(item["tier"], "up", "{item}");
                assert_eq!(item["degraded"], false, "{item}");
                assert_eq!(
                    item["response"]["choices"][0]["message"]["content"],
                    format!("answer to {key}"),
                    "{item}"
                );
            }
        }
    }
    // JSONL out: every item, one per line, the same as the pages.
    let lines = client.get_jsonl(KEY_A, "/v1/batch/nightly").await;
    assert_eq!(lines, items);

    // The same batch again: only the items that did not succeed are pushed.
    let (status, again) = client
        .post(
            KEY_A,
            &[("prefer", "respond-async")],
            batch_body("nightly", n),
        )
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(
        (&again["pushed"], &again["already_done"], &again["running"]),
        (&json!(fatal), &json!(n - fatal), &json!(0))
    );
    client
        .wait_progress("nightly", Duration::from_secs(60), |p| {
            finished(p) && p["failed"] == json!(fatal)
        })
        .await;
    let calls_again = upstream.calls();
    for i in 0..n {
        let key = prompt(i);
        let more = u32::from(plan(i) == Plan::Fatal);
        assert_eq!(calls_again[&key], calls[&key] + more, "re-run of {key}");
    }
    let successes = upstream.successes();
    assert_eq!(successes.len(), n - fatal);
    assert!(successes.values().all(|&s| s == 1), "{successes:?}");
    // The queue forgets the finished jobs (their results stay in the store):
    // the workers prune it every 10 s.
    let started = Instant::now();
    loop {
        let left = jobs_left().await;
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{left} jobs still kept by the queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, page) = client.get(KEY_A, "/v1/batch/nightly?limit=1").await;
    assert_eq!(
        (status, &page["progress"]["done"]),
        (200, &json!(n - fatal))
    );
    drop(workers);
    proxy.stop();
}
