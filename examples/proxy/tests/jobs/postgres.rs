//! Asynchronous batches with the queue and the items' states on PostgreSQL
//! (apalis-postgres and a `PostgresJobStore`), and the choice of queue.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_proxy::{Config, Proxy};
use serde_json::json;
use tower_llm_resilience::jobs::JobStore;
use tower_llm_resilience::postgres::{Postgres, PostgresJobStore};

use super::postgres_server::{PostgresServer, TestDb, PASSWORD, USER};
use super::redis_server::RedisServer;
use super::upstream::Upstream;
use super::{
    batch_body, config_text, finished, serve, Client, JobsLeft, Served, Worker, KEY_A, PREFIX,
};

fn postgres_state(db: &TestDb) -> String {
    format!(
        "[state]\npostgres_url = {:?}\nprefix = \"{PREFIX}\"\n\
         postgres_connect_timeout_secs = 2\npostgres_op_timeout_secs = 5\n",
        db.url()
    )
}

fn job_store(db: &TestDb) -> PostgresJobStore {
    let pg = Postgres::builder(&db.url())
        .pool_size(4)
        .connect_timeout(Duration::from_secs(2))
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    PostgresJobStore::new(&pg)
}

/// The apalis jobs of `queue` in `db`.
fn apalis_jobs(db: &TestDb, queue: &str) -> u64 {
    let count = db.server.psql(
        &db.name,
        &format!("SELECT count(*) FROM apalis.jobs WHERE job_type = '{queue}'"),
    );
    count.trim().parse().unwrap_or_else(|_| panic!("{count:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_on_postgres_run_a_seeded_batch_once_per_item_through_a_sigkill() {
    let db = Arc::new(TestDb::fresh());
    let store = job_store(&db);
    let queue = format!("{PREFIX}:batches");
    let counted = db.clone();
    let jobs_left = move || {
        let (db, queue) = (counted.clone(), queue.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || apalis_jobs(&db, &queue))
                .await
                .unwrap()
        }) as JobsLeft
    };
    super::seeded_batch_through_a_sigkill(
        &postgres_state(&db),
        Arc::new(store),
        &format!("{PREFIX}/"),
        jobs_left,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_and_postgres_the_queue_goes_where_job_queue_says() {
    let redis = RedisServer::start();
    let db = TestDb::fresh();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = format!("{}redis_url = {:?}\n", postgres_state(&db), redis.url());
    let text = config_text(&upstream.base_url(), &state, "job_queue = \"postgres\"");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &text).unwrap();

    // `llm-proxy migrate` sets up the queue's schema too.
    let output = Command::new(env!("CARGO_BIN_EXE_llm-proxy"))
        .args(["migrate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("batch queue's schema"), "{stdout}");

    let proxy = Proxy::start(&Config::from_toml(&text).unwrap()).unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        base: proxy.url(),
    };
    let _worker = Worker::start(&path, dir.path().join("worker.log"));
    let (status, accepted) = client
        .post(
            KEY_A,
            &[("prefer", "respond-async")],
            batch_body("split", 20),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let progress = client
        .wait_progress("split", Duration::from_secs(60), finished)
        .await;
    assert_eq!(progress["total"], json!(20));
    // Items and results are in PostgreSQL, and nothing of the queue in Redis.
    let batch = format!(
        "{PREFIX}/{}/split",
        llm_proxy::client_id::client_key_id(KEY_A)
    );
    let stored = job_store(&db).progress(&batch).await.unwrap().unwrap();
    assert_eq!(stored.total, 20);
    let mut redis_conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}:batches*"))
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    proxy.stop();

    // A queue named on a store `[state]` does not have fails at load.
    let only_redis = config_text(
        &upstream.base_url(),
        &format!("[state]\nredis_url = {:?}\n", redis.url()),
        "job_queue = \"postgres\"",
    );
    let error = Config::from_toml(&only_redis).unwrap_err().to_string();
    assert!(
        error.contains("job_queue") && error.contains("postgres_url"),
        "{error}"
    );
    let error = Config::from_toml(&config_text(
        &upstream.base_url(),
        "",
        "job_queue = \"redis\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("job_queue") && error.contains("redis_url"),
        "{error}"
    );
    let error = Config::from_toml(&config_text(
        &upstream.base_url(),
        "",
        "job_queue = \"kafka\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("kafka") || error.contains("job_queue"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_on_a_tls_postgres_with_sslmode_require_verifies_and_encrypts() {
    let server = PostgresServer::start_tls();
    let name = server.create_database();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let state = format!(
        "[state]\npostgres_url = \"postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}?sslmode=require\"\n\
         postgres_ca_file = {:?}\nprefix = \"{PREFIX}\"\npostgres_connect_timeout_secs = 2\n",
        server.port(),
        ca.display().to_string(),
    );
    let text = config_text(&upstream.base_url(), &state, "");
    let Served {
        proxy,
        client,
        path,
    } = serve(dir.path(), &text);
    let _worker = Worker::start(&path, dir.path().join("worker.log"));
    let progress = client.run_batch("tls", 5, Duration::from_secs(60)).await;
    assert_eq!(progress["total"], json!(5));
    // Every connection to this database but psql's own (a unix socket) is
    // TLS: the proxy's and the worker's pools, the queue's included.
    let connections = server.psql(
        &name,
        "SELECT count(*) || ',' || count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database() \
         AND a.pid <> pg_backend_pid()",
    );
    let (all, tls) = connections.split_once(',').unwrap();
    assert_eq!(all, tls, "{connections}");
    assert!(all.parse::<u32>().unwrap() >= 2, "{connections}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_outlives_a_postgres_outage_and_runs_the_next_batch() {
    let db = TestDb::on_own_server();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&upstream.base_url(), &postgres_state(&db), "");
    let Served {
        proxy,
        client,
        path,
    } = serve(dir.path(), &text);
    let log = dir.path().join("worker.log");
    let mut worker = Worker::start(&path, log.clone());
    let (status, accepted) = client
        .post(
            KEY_A,
            &[("prefer", "respond-async")],
            batch_body("before", 10),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    client
        .wait_progress("before", Duration::from_secs(60), finished)
        .await;

    // PostgreSQL goes away: apalis stops the worker's queue at its next
    // heartbeat; the process starts fresh workers until it is back.
    let server = db.server.clone();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("lost its queue")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker did not notice: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = db.server.clone();
    tokio::task::spawn_blocking(move || server.restart())
        .await
        .unwrap();

    // The same process runs the next batch (submitted once the proxy's pools
    // reconnect: 503 until then).
    let started = Instant::now();
    loop {
        let (status, answer) = client
            .post(
                KEY_A,
                &[("prefer", "respond-async")],
                batch_body("after", 10),
            )
            .await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(started.elapsed() < Duration::from_secs(30), "{answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let progress = client
        .wait_progress("after", Duration::from_secs(90), finished)
        .await;
    assert_eq!(progress["total"], json!(10));
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker process exited: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_with_other_prefixes_on_one_database_keep_their_batches_apart() {
    let db = TestDb::fresh();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let on = |prefix: &str| {
        config_text(
            &upstream.base_url(),
            &postgres_state(&db).replace(
                &format!("prefix = \"{PREFIX}\""),
                &format!("prefix = \"{prefix}\""),
            ),
            "",
        )
    };
    let (text_a, text_b) = (on("team-a"), on("team-b"));
    let path_a = dir.path().join("a.toml");
    std::fs::write(&path_a, &text_a).unwrap();
    let a = Proxy::start(&Config::from_toml(&text_a).unwrap()).unwrap();
    let b = Proxy::start(&Config::from_toml(&text_b).unwrap()).unwrap();
    let http = reqwest::Client::new();
    let (client_a, client_b) = (
        Client {
            http: http.clone(),
            base: a.url(),
        },
        Client {
            http,
            base: b.url(),
        },
    );
    let _worker = Worker::start(&path_a, dir.path().join("worker-a.log"));
    client_a.run_batch("same", 5, Duration::from_secs(60)).await;
    // The same id and client key under another prefix is another batch:
    // nothing of team A's is found done, everything is pushed.
    let (status, accepted) = client_b
        .post(KEY_A, &[("prefer", "respond-async")], batch_body("same", 5))
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        (&accepted["pushed"], &accepted["already_done"]),
        (&json!(5), &json!(0)),
        "{accepted}"
    );
    let (status, report) = client_b.get(KEY_A, "/v1/batch/same?limit=10").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["progress"]["done"], json!(0), "{report}");
    a.stop();
    b.stop();
}
