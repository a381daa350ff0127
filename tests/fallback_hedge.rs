//! FallbackLayer hedging: after a delay, the next tier starts too; the first answer
//! wins and the other call is dropped.
mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use support::client::{chat, http_tier, text, Body, BoxError, HttpTier};
use support::{Reply, Upstream};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::fallback::{FallbackLayer, MarkDegraded};

/// Wraps a tier and counts response futures dropped before they completed.
#[derive(Clone)]
struct DropProbe {
    inner: HttpTier,
    cancelled: Arc<AtomicUsize>,
}

struct Guard {
    done: bool,
    cancelled: Arc<AtomicUsize>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Service<http::Request<Bytes>> for DropProbe {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Bytes>) -> Self::Future {
        let future = self.inner.call(request);
        let guard = Guard {
            done: false,
            cancelled: self.cancelled.clone(),
        };
        Box::pin(async move {
            let mut guard = guard;
            let result = future.await;
            guard.done = true;
            result
        })
    }
}

fn probe(upstream: &Upstream) -> (DropProbe, Arc<AtomicUsize>) {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let probe = DropProbe {
        inner: http_tier(upstream.url()),
        cancelled: cancelled.clone(),
    };
    (probe, cancelled)
}

const HEDGE: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn slow_primary_fast_secondary_secondary_wins_primary_dropped() {
    let slow = Reply::after(
        Duration::from_secs(10),
        Reply::ok_json(r#"{"answer":"primary"}"#),
    );
    let primary = Upstream::always(slow).await;
    let secondary = Upstream::always(Reply::ok_json(r#"{"answer":"secondary"}"#)).await;
    let (primary_tier, primary_cancelled) = probe(&primary);
    let layer = FallbackLayer::builder()
        .alternate("claude", http_tier(secondary.url()))
        .hedge_after(HEDGE)
        .build()
        .unwrap();
    let mut service = layer.layer(primary_tier);

    let start = Instant::now();
    let mut call = service.ready().await.unwrap().call(chat("gpt-4o"));
    let response = (&mut call).await.unwrap();
    assert!(start.elapsed() >= HEDGE && start.elapsed() < Duration::from_secs(2));
    // The losing call is dropped as soon as the winner is in, not when the caller
    // drops the finished future.
    assert_eq!(primary_cancelled.load(Ordering::SeqCst), 1);
    drop(call);

    let degraded = response.degraded().expect("the hedge answered").clone();
    assert!(degraded.hedged());
    assert_eq!(degraded.name(), "claude");
    assert!(
        degraded.failed().is_empty(),
        "nobody failed; the primary was slow"
    );
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"secondary"}"#);
    assert_eq!((primary.hits(), secondary.hits()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_primary_answering_before_the_delay_starts_no_hedge() {
    let quick = Reply::after(
        Duration::from_millis(500),
        Reply::ok_json(r#"{"answer":"primary"}"#),
    );
    let primary = Upstream::always(quick).await;
    let secondary = Upstream::always(Reply::ok_json(r#"{"answer":"secondary"}"#)).await;
    let (primary_tier, primary_cancelled) = probe(&primary);
    let layer = FallbackLayer::builder()
        .alternate("claude", http_tier(secondary.url()))
        .hedge_after(HEDGE)
        .build()
        .unwrap();
    let response = layer
        .layer(primary_tier)
        .oneshot(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(primary_cancelled.load(Ordering::SeqCst), 0);
    assert!(response.degraded().is_none());
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"primary"}"#);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(secondary.hits(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_leaves_the_slow_primary_to_answer() {
    let slow = Reply::after(
        Duration::from_secs(3),
        Reply::ok_json(r#"{"answer":"primary"}"#),
    );
    let primary = Upstream::always(slow).await;
    let secondary = Upstream::always(Reply::status(503, "{}")).await;
    let layer = FallbackLayer::builder()
        .alternate("claude", http_tier(secondary.url()))
        .hedge_after(HEDGE)
        .build()
        .unwrap();
    let start = Instant::now();
    let response = layer
        .layer(http_tier(primary.url()))
        .oneshot(chat("gpt-4o"))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert!(response.degraded().is_none());
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"primary"}"#);
    assert_eq!(secondary.hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_primary_failing_during_a_hedge_is_listed() {
    let failing = Reply::after(Duration::from_secs(2), Reply::status(500, "{}"));
    let primary = Upstream::always(failing).await;
    let slow_ok = Reply::after(
        Duration::from_secs(3),
        Reply::ok_json(r#"{"answer":"secondary"}"#),
    );
    let secondary = Upstream::always(slow_ok).await;
    let layer = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", http_tier(secondary.url()))
        .hedge_after(HEDGE)
        .build()
        .unwrap();
    let response = layer
        .layer(http_tier(primary.url()))
        .oneshot(chat("gpt-4o"))
        .await
        .unwrap();
    let degraded = response.degraded().unwrap();
    assert!(degraded.hedged());
    assert_eq!(degraded.failed()[0].name(), "gpt");
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"secondary"}"#);
}
