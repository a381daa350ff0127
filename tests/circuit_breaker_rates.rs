//! The circuit breaker's rate policies at their edges: a call that is neither a
//! failure nor slow never trips a circuit whose window is already over a rate,
//! the first policy that trips names the cause, and a window holding a failure
//! or a slow call keeps its circuit from eviction while a clean one makes room.
use std::time::Duration;

use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{
    CircuitBreakerLayer, CircuitState, TransitionCause, Window,
};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};

/// A call to key `.0` that takes `.1` ms of (paused) time and fails when `.2`.
type Call = (u32, u64, bool);

const FAST: u64 = 10;
const SLOW: u64 = 200;
const THRESHOLD: Duration = Duration::from_millis(100);

fn upstream() -> impl Service<Call, Response = u32, Error = BoxError, Future = impl Send> + Clone {
    service_fn(|(key, ms, fails): Call| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if fails {
            Err::<u32, BoxError>(ClassifiedError::new(FailureKind::ServerError, "down").into())
        } else {
            Ok(key)
        }
    })
}

async fn call<S: Service<Call, Response = u32, Error = BoxError>>(
    svc: &mut S,
    request: Call,
) -> Result<u32, BoxError> {
    svc.ready().await?.call(request).await
}

#[tokio::test(start_paused = true)]
async fn a_success_does_not_trip_on_a_failure_rate_already_reached() {
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(0.5)
        .window(Window::Count(10))
        .minimum_calls(4)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut events = handle.subscribe();
    let mut svc = layer.layer(upstream());
    for fails in [true, true, false, false] {
        let _ = call(&mut svc, (0, FAST, fails)).await;
    }
    // 2 failures of 4 calls is the rate, but the fourth call succeeded.
    let snapshot = handle.circuit().snapshot();
    assert_eq!((snapshot.window_calls, snapshot.window_failures), (4, 2));
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
    // The next failure (3 of 5) trips it.
    assert!(call(&mut svc, (0, FAST, true)).await.is_err());
    assert_eq!(handle.circuit().state(), CircuitState::Open);
    assert_eq!(
        events.try_recv().unwrap().cause,
        TransitionCause::FailureRate
    );
}

#[tokio::test(start_paused = true)]
async fn a_fast_call_does_not_trip_on_a_slow_call_rate_already_reached() {
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .slow_call_rate(0.5, THRESHOLD)
        .window(Window::Count(10))
        .minimum_calls(4)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut events = handle.subscribe();
    let mut svc = layer.layer(upstream());
    for ms in [SLOW, SLOW, FAST, FAST] {
        call(&mut svc, (0, ms, false)).await.unwrap();
    }
    let snapshot = handle.circuit().snapshot();
    assert_eq!((snapshot.window_calls, snapshot.window_slow_calls), (4, 2));
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
    call(&mut svc, (0, SLOW, false)).await.unwrap();
    assert_eq!(handle.circuit().state(), CircuitState::Open);
    assert_eq!(
        events.try_recv().unwrap().cause,
        TransitionCause::SlowCallRate
    );
}

/// The cause of the transition a single slow failure makes on a fresh circuit.
async fn cause_of_a_slow_failure(consecutive: bool) -> TransitionCause {
    let mut builder = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .slow_call_rate(0.5, THRESHOLD)
        .window(Window::Count(10))
        .minimum_calls(1);
    builder = if consecutive {
        builder.consecutive_failures(1)
    } else {
        builder.without_consecutive_failures()
    };
    let layer = builder.classifier(ErrorOnlyClassifier).build().unwrap();
    let mut events = layer.handle().subscribe();
    let mut svc = layer.layer(upstream());
    assert!(call(&mut svc, (0, SLOW, true)).await.is_err());
    let event = events.try_recv().unwrap();
    assert_eq!(event.to, CircuitState::Open);
    assert!(events.try_recv().is_err(), "one transition");
    event.cause
}

#[tokio::test(start_paused = true)]
async fn the_first_policy_reached_names_the_cause() {
    // A slow failure reaches every policy at once: the streak is named first,
    // then the failure rate, and the slow-call rate only on its own.
    assert_eq!(
        cause_of_a_slow_failure(true).await,
        TransitionCause::ConsecutiveFailures
    );
    assert_eq!(
        cause_of_a_slow_failure(false).await,
        TransitionCause::FailureRate
    );
}

/// Whether a second key finds room next to key 1 after `calls` to key 1, with
/// room for one circuit and rate policies that never trip.
async fn room_after(calls: &[(u64, bool)]) -> bool {
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(1.0)
        .slow_call_rate(1.0, THRESHOLD)
        .window(Window::Count(10))
        .minimum_calls(100)
        .max_keys(1)
        .key_by(|call: &Call| call.0)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream());
    for &(ms, fails) in calls {
        let _ = call(&mut svc, (1, ms, fails)).await;
    }
    let kept = handle.get(&1).expect("key 1 has a circuit").snapshot();
    assert_eq!(kept.state, CircuitState::Closed);
    assert_eq!(kept.consecutive_failures, 0);
    handle.try_get_or_create(2).is_some()
}

#[tokio::test(start_paused = true)]
async fn only_a_clean_window_makes_room_for_another_key() {
    // Calls that all went well: nothing is lost by dropping the circuit.
    assert!(room_after(&[(FAST, false), (FAST, false)]).await);
    // A failure (its streak ended by a success) or a slow call in the window:
    // the circuit is kept, and the new key does not fit.
    assert!(!room_after(&[(FAST, true), (FAST, false)]).await);
    assert!(!room_after(&[(SLOW, false)]).await);
}
