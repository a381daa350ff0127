//! FallbackLayer over tiers that each have a CircuitBreakerLayer: a tier whose
//! circuit is open is skipped at once, without touching its upstream.
mod support;

use std::time::Duration;

use support::client::{chat, http_tier, text};
use support::{Reply, Upstream};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_llm_resilience::classify::FailureKind;
use tower_llm_resilience::fallback::{FallbackLayer, MarkDegraded};

#[tokio::test(start_paused = true)]
async fn open_primary_circuit_answers_from_the_secondary_without_touching_the_primary() {
    let primary = Upstream::always(Reply::status(503, "{}")).await;
    let secondary = Upstream::always(Reply::ok_json(r#"{"answer":"secondary"}"#)).await;
    let breaker = || {
        CircuitBreakerLayer::builder()
            .consecutive_failures(2)
            .cooldown(Duration::from_secs(30))
            .jitter(0.0)
            .build()
            .unwrap()
    };
    let (primary_breaker, secondary_breaker) = (breaker(), breaker());
    let primary_circuit = primary_breaker.handle();
    let fallback = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate(
            "claude",
            secondary_breaker.layer(http_tier(secondary.url())),
        )
        .build()
        .unwrap();
    let mut service = fallback.layer(primary_breaker.layer(http_tier(primary.url())));

    // Two 503s trip the primary's circuit; the secondary answers both times.
    for _ in 0..2 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(chat("gpt-4o"))
            .await
            .unwrap();
        let degraded = response.degraded().unwrap();
        assert_eq!(
            degraded.failed()[0].kind(),
            &FailureKind::Overloaded { retry_after: None }
        );
    }
    assert_eq!(primary.hits(), 2);
    assert_eq!(primary_circuit.circuit().state(), CircuitState::Open);

    let start = Instant::now();
    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "skipped at once");
    assert_eq!(primary.hits(), 2, "the primary's upstream was not touched");
    let degraded = response.degraded().unwrap().clone();
    assert_eq!(degraded.name(), "claude");
    match degraded.failed()[0].kind() {
        FailureKind::CircuitOpen { retry_after } => {
            assert_eq!(*retry_after, Duration::from_secs(30))
        }
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"secondary"}"#);
    assert_eq!(secondary.hits(), 3);
}
