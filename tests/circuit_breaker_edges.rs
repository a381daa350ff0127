//! Circuit breaker at its edges: keyed circuits never forget state worth keeping
//! when `max_keys` evicts, and a forced-open circuit reports a sane wait.
use std::time::Duration;

use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};

/// Key 1 always fails; every other key answers.
fn upstream() -> impl Service<u32, Response = u32, Error = BoxError, Future = impl Send> + Clone {
    service_fn(|n: u32| async move {
        if n == 1 {
            Err::<u32, BoxError>(ClassifiedError::new(FailureKind::ServerError, "down").into())
        } else {
            Ok(n)
        }
    })
}

async fn call<S: Service<u32, Response = u32, Error = BoxError>>(
    svc: &mut S,
    n: u32,
) -> Result<u32, BoxError> {
    svc.ready().await?.call(n).await
}

#[tokio::test(start_paused = true)]
async fn a_failure_streak_survives_eviction() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .max_keys(2)
        .key_by(|n: &u32| *n)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream());
    for round in 0..3 {
        assert!(call(&mut svc, 1).await.is_err());
        for n in 2..40 {
            assert_eq!(call(&mut svc, n).await.unwrap(), n, "round {round}");
        }
        if round == 0 {
            let streak = handle.get(&1).expect("key 1 kept").snapshot();
            assert_eq!(streak.consecutive_failures, 1);
        }
    }
    // The second failure of key 1 tripped its own circuit, whatever came between.
    let open = call(&mut svc, 1).await.unwrap_err();
    assert!(open.is::<CircuitOpen>(), "{open}");
    assert_eq!(handle.get(&1).unwrap().state(), CircuitState::Open);
    // And healthy keys still pass.
    assert_eq!(call(&mut svc, 99).await.unwrap(), 99);
}

#[tokio::test(start_paused = true)]
async fn forced_states_survive_eviction() {
    let layer = CircuitBreakerLayer::builder()
        .max_keys(2)
        .key_by(|n: &u32| *n)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream());
    handle.get_or_create(7).force_open();
    for n in 2..40 {
        let _ = call(&mut svc, n).await;
    }
    let open = call(&mut svc, 7).await.unwrap_err();
    assert!(open.is::<CircuitOpen>());
    assert!(handle.get(&7).unwrap().snapshot().forced);
}

#[tokio::test(start_paused = true)]
async fn a_key_that_does_not_fit_is_refused_by_try_get_or_create() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .max_keys(1)
        .key_by(|n: &u32| *n)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream());
    assert!(call(&mut svc, 1).await.is_err());
    // Key 1 has a failure streak: it cannot make room.
    assert!(handle.try_get_or_create(2).is_none());
    assert_eq!(handle.get_or_create(2).key(), None, "the overflow circuit");
    // A pristine circuit makes room.
    handle.get(&1).unwrap().reset();
    let created = handle.try_get_or_create(2).expect("room after the reset");
    assert_eq!(created.key(), Some(&2));
}

#[tokio::test(start_paused = true)]
async fn forced_open_reports_a_sane_retry_after() {
    let layer = CircuitBreakerLayer::builder()
        .max_cooldown(Duration::from_secs(120))
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream());
    handle.circuit().force_open();
    tokio::time::advance(Duration::from_secs(3600)).await;
    let open = call(&mut svc, 2).await.unwrap_err();
    let wait = open.downcast_ref::<CircuitOpen>().unwrap().retry_after();
    assert_eq!(wait, Duration::from_secs(120));
    let snapshot = handle.circuit().snapshot();
    assert_eq!(snapshot.retry_after, Some(Duration::from_secs(120)));
}
