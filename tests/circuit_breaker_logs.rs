//! What a circuit logs on its transitions: opening is a warning that says why and
//! for how long, other transitions are informational.
//!
//! In its own test binary: it installs a thread-local `tracing` subscriber, and
//! `tracing` caches per-callsite interest process-wide, so a test running on
//! another thread at the same moment could hide this test's events.
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};

/// Each event as one line: its level, then its fields.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Lines {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap();
        let _ = write!(out, "{}", event.metadata().level());
        event.record(&mut Fields(&mut out));
        out.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn opening_is_a_warning_and_other_transitions_are_info() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(lines.clone());
    let layer = CircuitBreakerLayer::builder()
        .name("upstream-a")
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(5))
        .jitter(0.0)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>(ClassifiedError::new(FailureKind::ServerError, "down").into())
        } else {
            Ok(())
        }
    }));
    assert!(svc.ready().await.unwrap().call(true).await.is_err());
    tokio::time::advance(Duration::from_secs(5)).await;
    svc.ready().await.unwrap().call(false).await.unwrap();
    assert_eq!(handle.circuit().state(), CircuitState::Closed);

    let text = lines.0.lock().unwrap().clone();
    let transitions: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("message=circuit"))
        .collect();
    assert_eq!(transitions.len(), 3, "{text}");
    let opened = transitions[0];
    assert!(
        opened.starts_with("WARN message=circuit opened"),
        "{opened}"
    );
    assert!(opened.contains("circuit=upstream-a"), "{opened}");
    assert!(opened.contains("cause=ConsecutiveFailures"), "{opened}");
    assert!(opened.contains("open_for=Some(5s)"), "{opened}");
    for (line, to) in transitions[1..].iter().zip(["half_open", "closed"]) {
        assert!(
            line.starts_with("INFO message=circuit state changed"),
            "{line}"
        );
        assert!(line.contains(&format!("to={to}")), "{line}");
    }
}
