//! `[state] redis_url`: two proxies on one Redis share circuits, escalations and
//! batch records. Each test starts its own `redis-server` on a free port (killed
//! on drop) and two proxies in front of the same mock upstreams.

mod common;
#[path = "../../../tests/support/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::*;
use llm_proxy::mock::MockUpstream;
use llm_proxy::{Config, Proxy};
use redis_server::RedisServer;
use serde_json::{json, Value};

const APPROVAL: (&str, &str) = ("x-require-approval", "true");

/// How long a shared change may take to show on the other proxy before the test
/// fails (the library reaches the others in milliseconds; this is slack for a
/// loaded CI machine).
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(5);

/// Two proxies, A and B, configured alike: same upstreams, same Redis.
struct Pair {
    primary: MockUpstream,
    secondary: MockUpstream,
    a: Proxy,
    b: Proxy,
    http: reqwest::Client,
    _dirs: [tempfile::TempDir; 2],
    // Last: stopped after the proxies.
    _redis: RedisServer,
}

fn config(
    primary: &MockUpstream,
    secondary: &MockUpstream,
    dir: &tempfile::TempDir,
    state: &str,
    escalation: &str,
) -> Config {
    let text = format!(
        "{}\n[state]\n{state}\n",
        config_text(
            &primary.base_url(),
            &secondary.base_url(),
            &dir.path().join("escalations.db"),
            escalation,
        )
    );
    Config::from_toml(&text).expect("test config is valid")
}

impl Pair {
    async fn start(escalation: &str) -> Pair {
        Pair::start_with(escalation, |_| {}).await
    }

    /// Both proxies' configs changed by `tweak` first.
    async fn start_with(escalation: &str, tweak: impl Fn(&mut Config)) -> Pair {
        let redis = RedisServer::start();
        let primary = mock("primary").await;
        let secondary = mock("secondary").await;
        let state = format!("redis_url = {:?}\nprefix = \"proxy-test\"", redis.url());
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let configs = [0, 1].map(|i| {
            let mut config = config(&primary, &secondary, &dirs[i], &state, escalation);
            tweak(&mut config);
            config
        });
        let a = Proxy::start(&configs[0]).expect("proxy A starts");
        let b = Proxy::start(&configs[1]).expect("proxy B starts");
        let pair = Pair {
            primary,
            secondary,
            a,
            b,
            http: reqwest::Client::new(),
            _dirs: dirs,
            _redis: redis,
        };
        // Both proxies' circuit syncs are subscribed before anything happens.
        for proxy in [&pair.a, &pair.b] {
            let syncs = proxy.circuit_syncs();
            let names: Vec<&str> = syncs.iter().map(|(name, _)| &**name).collect();
            assert_eq!(names, ["primary", "secondary"], "one sync per upstream");
            poll_until("the circuit syncs reach Redis", || {
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

    async fn batch(&self, proxy: &Proxy, body: &Value) -> Value {
        let response = self
            .http
            .post(format!("{}/v1/batch", proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .json(body)
            .send()
            .await
            .expect("proxy answers");
        assert_eq!(response.status(), 200);
        response.json().await.expect("a batch report")
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
    let on_a = pair.circuit(&pair.a, "primary").await;
    assert_eq!(on_a["state"], "open", "{on_a}");
    assert_eq!(on_a["trips"], 1);
    let primary_calls = pair.primary.requests();
    assert_eq!(primary_calls, 2);

    // B never called the primary, yet reports its circuit open.
    let started = Instant::now();
    poll_until("B reports the primary's circuit open", || async {
        pair.circuit(&pair.b, "primary").await["state"] == "open"
    })
    .await;
    let on_b = pair.circuit(&pair.b, "primary").await;
    assert_eq!(on_b["failures"], 0, "B saw no failure itself: {on_b}");
    assert!(on_b["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    eprintln!("open on B after {:?}", started.elapsed());
    assert_eq!(pair.circuit(&pair.b, "secondary").await["state"], "closed");

    // B answers from the secondary without calling the primary.
    let secondary_calls = pair.secondary.requests();
    for _ in 0..3 {
        let response = pair.chat(&pair.b, &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
        assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
        let body: Value = response.json().await.unwrap();
        assert_eq!(content(&body), "Hello from secondary.");
    }
    assert_eq!(
        pair.primary.requests(),
        primary_calls,
        "B skipped the primary"
    );
    assert_eq!(pair.secondary.requests(), secondary_calls + 3);
    assert!(pair.circuit(&pair.b, "primary").await["rejected"].as_u64() >= Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_waiting_on_a_is_resolved_through_b() {
    let pair = Pair::start("").await;
    let waiting = {
        let http = pair.http.clone();
        let url = format!("{}/v1/chat/completions", pair.a.url());
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(CLIENT_KEY)
                .header(APPROVAL.0, APPROVAL.1)
                .json(&ask("smart"))
                .send()
                .await
                .unwrap()
        })
    };
    // Created through A, listed by B.
    let pending = wait_pending(&pair.http, &pair.b.url(), 1).await;
    assert_eq!(pending.len(), 1);
    let escalation = &pending[0];
    assert_eq!(escalation["reason"], "the client asked for human approval");
    assert_eq!(escalation["model"], "smart");
    let id = escalation["id"].as_str().unwrap().to_owned();
    let on_a = wait_pending(&pair.http, &pair.a.url(), 1).await;
    assert_eq!(on_a[0]["id"], id.as_str());
    assert!(!waiting.is_finished(), "A's client still waits");

    let resolved = pair
        .resolve(
            &pair.b,
            &id,
            json!({"decision": "answer", "answer": "B's human says hi.", "by": "bob"}),
        )
        .await;
    assert_eq!(resolved.status(), 200);
    let record: Value = resolved.json().await.unwrap();
    assert_eq!(record["status"], "answered");

    // The client waiting on A gets the answer given through B.
    let response = tokio::time::timeout(PROPAGATION_DEADLINE, waiting)
        .await
        .expect("A's waiting client is woken")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "human");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "B's human says hi.");
    assert_eq!(pair.primary.requests(), 0, "the gate held the call");

    // Resolved once for everyone: A sees it resolved, and a second resolution
    // through A is a conflict.
    let all: Value = pair
        .http
        .get(format!("{}/v1/escalations/{id}", pair.a.url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["status"], "answered");
    assert_eq!(all["resolution"]["resolved_by"], "bob");
    assert_eq!(
        pair.resolve(&pair.a, &id, json!({"decision": "approve"}))
            .await
            .status(),
        409
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

    // B lists the escalation A created, and approves it.
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
    let body: Value = resumed.json().await.unwrap();
    assert_eq!(content(&body), "Hello from primary.");
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
    let first = pair.batch(&pair.a, &batch).await;
    assert_eq!(
        (
            first["ok"].as_u64(),
            first["failed"].as_u64(),
            first["cached"].as_u64()
        ),
        (Some(2), Some(1), Some(0))
    );
    assert_eq!(pair.primary.requests(), 2);

    let again = pair.batch(&pair.b, &batch).await;
    assert_eq!(
        (
            again["ok"].as_u64(),
            again["failed"].as_u64(),
            again["cached"].as_u64()
        ),
        (Some(2), Some(1), Some(2))
    );
    for (item, key) in again["items"].as_array().unwrap()[..2]
        .iter()
        .zip(["a", "b"])
    {
        assert_eq!(item["key"], key);
        assert_eq!(item["status"], "ok");
        assert_eq!(item["cached"], true);
        assert_eq!(item["attempts"], 0);
        assert_eq!(item["tier"], "primary");
        assert_eq!(content(&item["response"]), "Hello from primary.");
    }
    assert_eq!(again["items"][2]["status"], "failed");
    assert_eq!(pair.primary.requests(), 2, "no upstream call on B");
    assert_eq!(pair.secondary.requests(), 0);

    // Another batch id is not cached.
    let mut other = batch.clone();
    other["batch_id"] = "nightly-other".into();
    assert_eq!(pair.batch(&pair.b, &other).await["cached"], 0);
    assert_eq!(pair.primary.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_records_in_redis_are_bounded_by_the_batch_limits() {
    // `[batch] max_records = 2`: two proxies share one bounded account.
    let pair = Pair::start_with("", |config| config.batch.max_records = 2).await;
    let batch = |id: &str| {
        json!({
            "batch_id": id,
            "requests": [{"key": "a", "body": ask("smart")}, {"key": "b", "body": ask("smart")}]
        })
    };
    assert_eq!(pair.batch(&pair.a, &batch("first")).await["ok"], 2);
    // Recorded on B, the second batch evicts the first (run longest ago).
    assert_eq!(pair.batch(&pair.b, &batch("second")).await["ok"], 2);
    assert_eq!(pair.primary.requests(), 4);

    let again = pair.batch(&pair.a, &batch("second")).await;
    assert_eq!(again["cached"], 2, "{again}");
    assert_eq!(pair.primary.requests(), 4, "the kept batch costs no call");
    let first = pair.batch(&pair.a, &batch("first")).await;
    assert_eq!(first["cached"], 0, "the evicted batch runs again: {first}");
    assert_eq!(first["ok"], 2);
    assert_eq!(pair.primary.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_keeps_calls_working_and_fails_store_operations() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().unwrap();
    let state = format!("redis_url = \"redis://127.0.0.1:{port}/\"");
    let proxy = Proxy::start(&config(&primary, &secondary, &dir, &state, ""))
        .expect("the proxy starts without Redis");
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

    // Not ready: the store does not answer (the check is bounded to 2 s).
    let ready = http
        .get(format!("{}/readyz", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["failing"], serde_json::json!(["store"]), "{ready}");

    // Calls and circuits work on local state.
    let response = chat(&[]).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "primary");
    primary.set(|o| o.fail_rate = 1.0);
    for _ in 0..2 {
        assert_eq!(chat(&[]).await.unwrap().status(), 200);
    }
    let circuits: Value = http
        .get(format!("{}/v1/circuits", proxy.url()))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(circuits["data"][0]["state"], "open", "{circuits}");
    assert!(proxy
        .circuit_syncs()
        .iter()
        .all(|(_, sync)| !sync.is_connected()));

    // What needs the store fails clearly instead of losing or repeating work.
    let escalated = chat(&[APPROVAL]).await.unwrap();
    assert_eq!(escalated.status(), 503);
    assert_eq!(header(&escalated, "retry-after"), "5");
    let body: Value = escalated.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    let batch = |id: Option<&str>| {
        let mut body = json!({"requests": [{"key": "a", "body": ask("smart")}]});
        if let Some(id) = id {
            body["batch_id"] = id.into();
        }
        http.post(format!("{}/v1/batch", proxy.url()))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
    };
    let named = batch(Some("nightly")).await.unwrap();
    assert_eq!(named.status(), 503);
    let body: Value = named.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let anonymous = batch(None).await.unwrap();
    assert_eq!(
        anonymous.status(),
        200,
        "a batch without an id needs no store"
    );
    stop(proxy).await;
}

#[test]
fn a_malformed_redis_url_stops_the_proxy_at_startup() {
    let text = config_text(
        "http://127.0.0.1:9/v1",
        "http://127.0.0.1:9/v1",
        std::path::Path::new("unused.db"),
        "",
    );
    let text = format!("{text}\n[state]\nredis_url = \"redis//127.0.0.1:6379\"\n");
    let e = Config::from_toml(&text).unwrap_err().to_string();
    assert!(e.contains("state.redis_url"), "{e}");
    assert!(
        e.contains("redis://"),
        "the error shows the expected form: {e}"
    );
}
