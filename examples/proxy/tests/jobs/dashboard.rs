//! Asynchronous batches on the dashboard: `GET /v1/admin/batches` lists the
//! ones this proxy accepted with their progress from the job store, and the
//! page shows them (real headless Chromium).

use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::json;

use super::common::browser::Browser;
use super::redis_server::RedisServer;
use super::upstream::Upstream;
use super::{config_text, redis_state, serve, Served, Worker, KEY_A};

const ADMIN_KEY: &str = "admin-key-jobs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_asynchronous_batches_with_their_progress() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&upstream.base_url(), &redis_state(&redis), "").replace(
        "[auth]\n",
        &format!("[auth]\nadmin_keys = [\"{ADMIN_KEY}\"]\n"),
    );
    let Served {
        proxy,
        client,
        path,
    } = serve(dir.path(), &text);
    let _worker = Worker::start(&path, dir.path().join("worker.log"));
    client
        .run_batch("dash-1", 10, Duration::from_secs(60))
        .await;

    // The API: the batch, its client and its progress, read from the store.
    let (status, list) = client.get(ADMIN_KEY, "/v1/admin/batches").await;
    assert_eq!(status, 200, "{list}");
    let entry = &list["asynchronous"][0];
    assert_eq!(entry["batch_id"], "dash-1", "{list}");
    assert_eq!(entry["status"], "completed", "{list}");
    assert_eq!(entry["pushed"], json!(10), "{list}");
    assert_eq!(entry["progress"]["total"], json!(10), "{list}");
    assert!(entry.get("store_id").is_none(), "{list}");
    // Client keys do not read it.
    let (status, _) = client.get(KEY_A, "/v1/admin/batches").await;
    assert_eq!(status, 401);

    // The page.
    let browser = Browser::start().await;
    let wait = Duration::from_secs(20);
    browser
        .sign_in_to(
            &format!("{}/dashboard", proxy.url()),
            ADMIN_KEY,
            "#async-batches tbody tr",
            wait,
        )
        .await;
    let started = Instant::now();
    let row = loop {
        let text = match browser.find(Locator::Css("#async-batches tbody tr")).await {
            Ok(row) => row.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains("dash-1") && text.contains("completed") {
            break text;
        }
        assert!(started.elapsed() < wait, "no row for dash-1: {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(row.contains(" 10 "), "{row}");
    browser.close().await.unwrap();
    proxy.stop();
}
