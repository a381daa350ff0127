//! Two instances of one circuit, for the circuit-sync tests (Redis, Postgres):
//! an upstream that fails on demand and counts its calls, the breaker they
//! share settings of, and a bounded wait. Include with
//! `#[path = "support/circuit_upstream.rs"] mod circuit_upstream;`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;
use tower_llm_resilience::classify::ErrorOnlyClassifier;
use tower_llm_resilience::BoxError;

/// Generous: these wait on real processes and sockets, never on the breaker's timers.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `done` every few milliseconds until it holds; returns how long it took.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

/// An upstream that fails while `failing` is set, counting its calls.
#[derive(Clone, Default)]
pub struct Upstream {
    pub failing: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
}

pub type Svc = BoxCloneService<&'static str, &'static str, BoxError>;

impl Upstream {
    pub fn service(&self, layer: &CircuitBreakerLayer<ErrorOnlyClassifier>) -> Svc {
        let upstream = self.clone();
        let inner = tower::service_fn(move |_: &'static str| {
            upstream.calls.fetch_add(1, Ordering::SeqCst);
            let failing = upstream.failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    Err::<&'static str, BoxError>(
                        std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
                    )
                } else {
                    Ok("ok")
                }
            }
        });
        BoxCloneService::new(layer.layer(inner))
    }
}

pub fn breaker(cooldown: Duration, consecutive: u32) -> CircuitBreakerLayer<ErrorOnlyClassifier> {
    CircuitBreakerLayer::builder()
        .name("upstream")
        .consecutive_failures(consecutive)
        .cooldown(cooldown)
        .jitter(0.0)
        .backoff_multiplier(1.0)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap()
}

pub async fn call(svc: &mut Svc) -> Result<&'static str, BoxError> {
    svc.ready().await?.call("prompt").await
}
