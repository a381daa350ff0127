//! Circuit breaker at its edges: keyed circuits never forget state worth keeping
//! when `max_keys` evicts, and a forced-open circuit reports a sane wait.
use std::time::Duration;

use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, CircuitState, Window,
};
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
    // Forced closed: as closed as a pristine circuit, but kept all the same.
    handle.get_or_create(8).force_closed();
    for n in 2..40 {
        let _ = call(&mut svc, n).await;
    }
    let open = call(&mut svc, 7).await.unwrap_err();
    assert!(open.is::<CircuitOpen>());
    assert!(handle.get(&7).unwrap().snapshot().forced);
    let closed = handle.get(&8).expect("key 8 kept").snapshot();
    assert!(closed.forced && closed.state == CircuitState::Closed);
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

/// Answers after `ms` milliseconds of (paused) time; fails when `ms` is 0.
fn timed() -> impl Service<u64, Response = u64, Error = BoxError, Future = impl Send> + Clone {
    service_fn(|ms: u64| async move {
        if ms == 0 {
            return Err::<u64, BoxError>(
                ClassifiedError::new(FailureKind::ServerError, "down").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    })
}

async fn call_timed<S: Service<u64, Response = u64, Error = BoxError>>(
    svc: &mut S,
    ms: u64,
) -> Result<u64, BoxError> {
    svc.ready().await?.call(ms).await
}

#[tokio::test(start_paused = true)]
async fn slow_calls_in_a_time_window_trip_are_forgotten_and_a_slow_probe_reopens() {
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .slow_call_rate(0.5, Duration::from_millis(100))
        .window(Window::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        })
        .minimum_calls(4)
        .cooldown(Duration::from_secs(5))
        .backoff_multiplier(1.0)
        .jitter(0.0)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let circuit = handle.circuit();
    let mut svc = layer.layer(timed());

    // Two slow calls, then they age out of the window: nothing trips.
    for ms in [200, 200] {
        call_timed(&mut svc, ms).await.unwrap();
    }
    assert_eq!(circuit.snapshot().window_slow_calls, 2);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(circuit.snapshot().window_calls, 0, "old buckets dropped");
    for ms in [10, 10, 200] {
        call_timed(&mut svc, ms).await.unwrap();
    }
    assert_eq!(circuit.state(), CircuitState::Closed, "1 slow of 3");
    let snapshot = circuit.snapshot();
    assert_eq!(
        (snapshot.window_calls, snapshot.window_slow_calls),
        (3, 1),
        "fast calls are not counted slow"
    );
    call_timed(&mut svc, 200).await.unwrap();
    assert_eq!(circuit.state(), CircuitState::Open, "2 slow of 4 = 50%");

    // A probe that answers, but slowly, reopens the circuit.
    tokio::time::advance(Duration::from_secs(6)).await;
    call_timed(&mut svc, 200).await.unwrap();
    assert_eq!(circuit.state(), CircuitState::Open, "slow probe");
    // A fast probe closes it, and the window starts empty.
    tokio::time::advance(Duration::from_secs(6)).await;
    call_timed(&mut svc, 10).await.unwrap();
    assert_eq!(circuit.state(), CircuitState::Closed);
    let snapshot = circuit.snapshot();
    assert_eq!((snapshot.window_calls, snapshot.window_slow_calls), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_forced_circuit_ignores_remote_states() {
    let layer = CircuitBreakerLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let circuit = layer.handle().circuit();
    circuit.force_closed();
    circuit.apply_remote(CircuitState::Open, Some(Duration::from_secs(60)));
    assert_eq!(circuit.state(), CircuitState::Closed);
    circuit.force_open();
    circuit.apply_remote(CircuitState::Closed, None);
    circuit.apply_remote(CircuitState::HalfOpen, None);
    assert_eq!(circuit.state(), CircuitState::Open);
    circuit.reset();
    circuit.apply_remote(CircuitState::Open, None);
    assert_eq!(
        circuit.state(),
        CircuitState::Open,
        "applied once not forced"
    );
}

#[tokio::test(start_paused = true)]
async fn the_calls_counter_counts_only_when_asked_and_skips_caller_bugs() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(10)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = service_fn(|n: u32| async move {
        match n {
            0 => Err::<u32, BoxError>(ClassifiedError::new(FailureKind::ServerError, "x").into()),
            1 => Err(ClassifiedError::new(FailureKind::BadRequest, "caller bug").into()),
            n => Ok(n),
        }
    });
    let mut svc = layer.layer(inner);
    let _ = call(&mut svc, 2).await;
    assert_eq!(handle.circuit().snapshot().calls, 0, "off by default");
    handle.count_calls(true);
    // As many failures as successes, and one caller bug: a counter that took
    // the caller bug instead of the failures would also read 3 with one failure.
    for n in [2, 3, 0, 0, 1] {
        let _ = call(&mut svc, n).await;
    }
    let snapshot = handle.circuit().snapshot();
    assert_eq!(
        snapshot.calls, 4,
        "two successes and two failures; the caller bug is neutral"
    );
    assert_eq!(snapshot.failures, 2);
}

#[tokio::test(start_paused = true)]
async fn a_reset_empties_a_time_window_at_once() {
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(0.5)
        .window(Window::Time {
            span: Duration::from_secs(60),
            buckets: 6,
        })
        .minimum_calls(4)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let circuit = layer.handle().circuit();
    let mut svc = layer.layer(timed());
    // Three failures (`0` fails, see `timed`) within the span, below the minimum.
    for _ in 0..3 {
        assert!(call_timed(&mut svc, 0).await.is_err());
    }
    let snapshot = circuit.snapshot();
    assert_eq!((snapshot.window_calls, snapshot.window_failures), (3, 3));
    circuit.reset();
    let snapshot = circuit.snapshot();
    assert_eq!((snapshot.window_calls, snapshot.window_failures), (0, 0));
    // The three failures are gone: one more does not reach the minimum.
    assert!(call_timed(&mut svc, 0).await.is_err());
    assert_eq!(circuit.state(), CircuitState::Closed);
}
