//! `[limits] metrics_upkeep_secs`: the Prometheus recorder drains histogram
//! samples on its own schedule, so a proxy that nobody scrapes does not grow.
//!
//! One test in its own binary: the counting allocator is process-wide. The
//! samples go into the proxy's own recorder (the process-wide one a started
//! proxy installs) through the function every request calls; `/metrics` is
//! never scraped (a scrape would drain them too), so only the proxy's upkeep
//! task can give the memory back.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use llm_proxy::{Config, Proxy};

struct Counting;

/// Bytes allocated and not yet freed, all threads together.
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a
// counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const SAMPLES: usize = 1_000_000;
const MB: isize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_are_drained_without_any_scrape() {
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &primary.base_url(),
        &secondary.base_url(),
        &dir.path().join("escalations.db"),
        "",
    );
    let mut config = Config::from_toml(&text).expect("test config is valid");
    // Long enough that the samples below pile up between two upkeeps, short
    // enough for a quick test.
    config.limits.metrics_upkeep_secs = Duration::from_millis(500);
    let proxy = Proxy::start(&config).expect("proxy starts");
    // One real request on the way, so the recorder is the proxy's and in use.
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .bearer_auth(CLIENT_KEY)
        .json(&ask("smart"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let before = live();
    let mut peak = 0;
    for _ in 0..SAMPLES / 10_000 {
        for _ in 0..10_000 {
            llm_proxy::metrics::record_request(StatusCode::OK, Duration::from_millis(3));
        }
        peak = peak.max(live() - before);
    }
    // A million samples are ~8 MB while they wait for an upkeep; some may be
    // drained while they are recorded, not most.
    assert!(
        peak > 2 * MB,
        "the samples should take memory until drained: peak {peak} bytes"
    );

    // Without a scrape: the upkeep task alone drains them (bounded wait), while
    // light traffic goes on (the recorder frees drained samples for good on
    // later passes, as a proxy in use makes them).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for _ in 0..100 {
            llm_proxy::metrics::record_request(StatusCode::OK, Duration::from_millis(3));
        }
        let held = live() - before;
        if held < MB {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} bytes of histogram samples still held 20 s later: \
             nothing drained them without a scrape"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.stop();
}
