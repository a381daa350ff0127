//! CircuitBreakerLayer behaviour, with paused tokio time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{advance, sleep, Instant};
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, CircuitState, TransitionCause, Window,
};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};

/// What the upstream does with one call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Ok,
    Fail,
    RateLimited(u64),
    BadRequest,
    Slow(u64),
}

fn err(kind: FailureKind) -> BoxError {
    ClassifiedError::new(kind, "injected").into()
}

/// An upstream driven by a shared script of acts; counts the calls it receives.
#[derive(Clone)]
struct Scripted {
    acts: Arc<Mutex<Vec<Act>>>,
    calls: Arc<AtomicUsize>,
}

impl Scripted {
    fn new() -> Self {
        Self {
            acts: Arc::new(Mutex::new(Vec::new())),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn next(&self, act: Act) {
        self.acts.lock().unwrap().push(act);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future = impl Send> + Clone {
        let me = self.clone();
        service_fn(move |req: u32| {
            let me = me.clone();
            async move {
                me.calls.fetch_add(1, Ordering::SeqCst);
                let act = {
                    let mut acts = me.acts.lock().unwrap();
                    if acts.is_empty() {
                        Act::Ok
                    } else {
                        acts.remove(0)
                    }
                };
                match act {
                    Act::Ok => Ok(req),
                    Act::Fail => Err(err(FailureKind::ServerError)),
                    Act::RateLimited(s) => Err(err(FailureKind::RateLimited {
                        retry_after: Some(Duration::from_secs(s)),
                    })),
                    Act::BadRequest => Err(err(FailureKind::BadRequest)),
                    Act::Slow(ms) => {
                        sleep(Duration::from_millis(ms)).await;
                        Ok(req)
                    }
                }
            }
        })
    }
}

async fn call<S: Service<u32, Response = u32, Error = BoxError>>(
    svc: &mut S,
) -> Result<u32, BoxError> {
    svc.ready().await?.call(1).await
}

fn is_open(result: &Result<u32, BoxError>) -> bool {
    matches!(result, Err(e) if e.is::<CircuitOpen>())
}

fn retry_after(result: &Result<u32, BoxError>) -> Duration {
    result
        .as_ref()
        .unwrap_err()
        .downcast_ref::<CircuitOpen>()
        .unwrap()
        .retry_after()
}

#[tokio::test(start_paused = true)]
async fn the_seed_scenario_is_exact_and_reproducible() {
    // 20 calls, one every 250 ms, against an upstream failing ~30% of the time
    // (seeded); trip after 2 failures in a row; cooldown 3 s, no jitter.
    async fn run(seed: u64) -> (usize, usize, usize, usize) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let fails = Arc::new(Mutex::new(
            (0..20).map(|_| rng.f64() < 0.3).collect::<Vec<_>>(),
        ));
        let upstream_calls = Arc::new(AtomicUsize::new(0));
        let (f, c) = (fails.clone(), upstream_calls.clone());
        let upstream = service_fn(move |req: u32| {
            let fail = f.lock().unwrap()[c.fetch_add(1, Ordering::SeqCst)];
            async move {
                if fail {
                    Err(err(FailureKind::ServerError))
                } else {
                    Ok(req)
                }
            }
        });
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(2)
            .cooldown(Duration::from_secs(3))
            .jitter(0.0)
            .classifier(ErrorOnlyClassifier)
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(upstream);
        let (mut ok, mut failed, mut rejected) = (0, 0, 0);
        for _ in 0..20 {
            match call(&mut svc).await {
                Ok(_) => ok += 1,
                Err(e) if e.is::<CircuitOpen>() => rejected += 1,
                Err(_) => failed += 1,
            }
            advance(Duration::from_millis(250)).await;
        }
        (ok, failed, rejected, upstream_calls.load(Ordering::SeqCst))
    }
    let report = run(7).await;
    assert_eq!(report, run(7).await, "same seed, same report");
    let (ok, failed, rejected, upstream_calls) = report;
    assert_eq!(ok + failed + rejected, 20);
    assert_eq!(
        upstream_calls,
        ok + failed,
        "rejected calls never reach the upstream"
    );
    // Seed 7 makes the upstream answer o F o o F F o F F o ... (by upstream call).
    // Calls at t=0..1.25 s: ok, FAIL, ok, ok, FAIL, FAIL -> two in a row: open until
    // 4.25 s. Calls at 1.5..4.0 s (11) are rejected. At 4.25 s the probe succeeds
    // and closes the circuit; 4.5 s and 4.75 s fail and open it again.
    assert_eq!((ok, failed, rejected), (4, 5, 11));
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_then_probe_closes() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .cooldown(Duration::from_secs(5))
        .jitter(0.0)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut events = handle.subscribe();
    let mut svc = layer.layer_service(up.service());
    for act in [Act::Fail, Act::Ok, Act::Fail, Act::Fail] {
        up.next(act);
        let _ = call(&mut svc).await;
    }
    assert_eq!(
        handle.circuit().state(),
        CircuitState::Closed,
        "a success resets the count"
    );
    up.next(Act::Fail);
    let _ = call(&mut svc).await;
    assert_eq!(handle.circuit().state(), CircuitState::Open);
    let event = events.recv().await.unwrap();
    assert_eq!(
        (event.to, event.cause),
        (CircuitState::Open, TransitionCause::ConsecutiveFailures)
    );
    assert_eq!(event.open_for, Some(Duration::from_secs(5)));

    let calls_before = up.calls();
    let rejected = call(&mut svc).await;
    assert!(is_open(&rejected));
    assert_eq!(retry_after(&rejected), Duration::from_secs(5));
    assert_eq!(
        up.calls(),
        calls_before,
        "open circuit does not call the upstream"
    );

    advance(Duration::from_secs(2)).await;
    assert_eq!(retry_after(&call(&mut svc).await), Duration::from_secs(3));
    advance(Duration::from_secs(3)).await;
    assert_eq!(call(&mut svc).await.unwrap(), 1, "the probe goes through");
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
    let kinds: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (e.to, e.cause))
        .collect();
    assert_eq!(
        kinds,
        [
            (CircuitState::HalfOpen, TransitionCause::CooldownElapsed),
            (CircuitState::Closed, TransitionCause::ProbesSucceeded)
        ]
    );
    let snap = handle.circuit().snapshot();
    assert_eq!((snap.rejected, snap.failures, snap.successes), (2, 4, 2));
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens_for_longer_capped() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(2))
        .backoff_multiplier(3.0)
        .max_cooldown(Duration::from_secs(10))
        .jitter(0.0)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer_service(up.service());
    up.next(Act::Fail);
    let _ = call(&mut svc).await;
    let mut expected = [2, 6, 10, 10].into_iter();
    let mut open_for = Duration::from_secs(expected.next().unwrap());
    for next in expected {
        assert_eq!(handle.circuit().snapshot().retry_after, Some(open_for));
        advance(open_for).await;
        up.next(Act::Fail);
        let probe = call(&mut svc).await;
        assert!(
            probe.is_err() && !is_open(&probe),
            "the probe reached the upstream"
        );
        open_for = Duration::from_secs(next);
    }
    assert_eq!(
        handle.circuit().snapshot().retry_after,
        Some(Duration::from_secs(10))
    );
    assert_eq!(handle.circuit().snapshot().trips, 4);
}

#[tokio::test(start_paused = true)]
async fn jitter_is_seeded_and_bounded() {
    async fn open_for(seed: u64) -> Duration {
        let up = Scripted::new();
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .cooldown(Duration::from_secs(10))
            .jitter(0.5)
            .jitter_seed(seed)
            .classifier(ErrorOnlyClassifier)
            .build()
            .unwrap();
        let mut events = layer.handle().subscribe();
        let mut svc = layer.layer_service(up.service());
        up.next(Act::Fail);
        let _ = call(&mut svc).await;
        events.recv().await.unwrap().open_for.unwrap()
    }
    let a = open_for(1).await;
    assert_eq!(a, open_for(1).await);
    assert_ne!(a, open_for(2).await);
    assert!(
        a >= Duration::from_secs(10) && a <= Duration::from_secs(15),
        "{a:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_keeps_the_circuit_open_longer_up_to_the_cap() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(5))
        .jitter(0.0)
        .max_retry_after(Duration::from_secs(60))
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer_service(up.service());
    up.next(Act::RateLimited(30));
    let _ = call(&mut svc).await;
    assert_eq!(retry_after(&call(&mut svc).await), Duration::from_secs(30));
    advance(Duration::from_secs(29)).await;
    assert!(
        is_open(&call(&mut svc).await),
        "still open past the 5 s cooldown"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(call(&mut svc).await.unwrap(), 1);

    handle.circuit().reset();
    up.next(Act::RateLimited(3600));
    let _ = call(&mut svc).await;
    assert_eq!(
        retry_after(&call(&mut svc).await),
        Duration::from_secs(60),
        "capped"
    );
}

#[tokio::test(start_paused = true)]
async fn caller_bugs_do_not_count() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer_service(up.service());
    for _ in 0..10 {
        up.next(Act::BadRequest);
        assert!(call(&mut svc).await.is_err());
    }
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
    assert_eq!(handle.circuit().snapshot().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(0.5)
        .window(Window::count(4))
        .minimum_calls(4)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut events = handle.subscribe();
    let mut svc = layer.layer_service(up.service());
    // F O F O O O: after 4 calls the rate is 2/4 but only the 4th call (a success)
    // completes the window; failures are what trip, so the next failure decides.
    for act in [
        Act::Fail,
        Act::Ok,
        Act::Ok,
        Act::Ok,
        Act::Fail,
        Act::Ok,
        Act::Ok,
    ] {
        up.next(act);
        let _ = call(&mut svc).await;
    }
    // The ring holds the last 4: [F, O, O] + ... = O F O O -> 1/4.
    assert_eq!(handle.circuit().snapshot().window_failures, 1);
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
    up.next(Act::Fail);
    let _ = call(&mut svc).await; // ring: F O O F -> 2/4 = 0.5
    assert_eq!(handle.circuit().state(), CircuitState::Open);
    assert_eq!(
        events.recv().await.unwrap().cause,
        TransitionCause::FailureRate
    );
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_holds_back_the_rate() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(0.5)
        .minimum_calls(5)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer_service(up.service());
    for _ in 0..4 {
        up.next(Act::Fail);
        let _ = call(&mut svc).await;
    }
    assert_eq!(
        handle.circuit().state(),
        CircuitState::Closed,
        "4 calls < minimum 5"
    );
    up.next(Act::Fail);
    let _ = call(&mut svc).await;
    assert_eq!(handle.circuit().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_time_window_forgets_old_failures() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(0.6)
        .window(Window::time(Duration::from_secs(10), 10))
        .minimum_calls(3)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer_service(up.service());
    up.next(Act::Fail);
    up.next(Act::Fail);
    let _ = call(&mut svc).await;
    let _ = call(&mut svc).await;
    advance(Duration::from_secs(11)).await;
    // The two failures are out of the window: F O O is 1/3.
    up.next(Act::Fail);
    for _ in 0..3 {
        let _ = call(&mut svc).await;
    }
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
    assert_eq!(handle.circuit().snapshot().window_calls, 3);
    up.next(Act::Fail);
    up.next(Act::Fail);
    let _ = call(&mut svc).await;
    let _ = call(&mut svc).await; // F O O F F: 3/5 = 0.6
    assert_eq!(handle.circuit().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_circuit() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .slow_call_rate(0.5, Duration::from_secs(2))
        .window(Window::count(4))
        .minimum_calls(4)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut events = handle.subscribe();
    let mut svc = layer.layer_service(up.service());
    for act in [Act::Slow(100), Act::Slow(3000), Act::Ok, Act::Slow(2500)] {
        up.next(act);
        assert!(call(&mut svc).await.is_ok());
    }
    assert_eq!(handle.circuit().state(), CircuitState::Open);
    assert_eq!(
        events.recv().await.unwrap().cause,
        TransitionCause::SlowCallRate
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_k_probes() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let fail_first = Arc::new(AtomicUsize::new(1));
    let (i, m, f) = (in_flight.clone(), max_in_flight.clone(), fail_first.clone());
    let upstream = service_fn(move |req: u32| {
        let (i, m, f) = (i.clone(), m.clone(), f.clone());
        async move {
            if f.swap(0, Ordering::SeqCst) == 1 {
                return Err(err(FailureKind::ServerError));
            }
            let now = i.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            sleep(Duration::from_secs(1)).await;
            i.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(req)
        }
    });
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(5))
        .probe_permits(3)
        .probe_successes(3)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = tower::ServiceBuilder::new()
        .buffer(256)
        .layer(layer)
        .service(upstream);
    let _ = svc.clone().oneshot(0).await;
    assert_eq!(handle.circuit().state(), CircuitState::Open);
    advance(Duration::from_secs(6)).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|n| tokio::spawn(svc.clone().oneshot(n)))
        .collect();
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.is::<CircuitOpen>(), "{e}");
                rejected += 1;
            }
        }
    }
    assert_eq!(max_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!((ok, rejected), (3, 47));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "rejections did not wait"
    );
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_slot_back() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(1))
        .jitter(0.0)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer_service(up.service());
    up.next(Act::Fail);
    let _ = call(&mut svc).await;
    advance(Duration::from_secs(1)).await;
    up.next(Act::Slow(10_000));
    let probe = svc.ready().await.unwrap().call(1);
    assert_eq!(handle.circuit().state(), CircuitState::HalfOpen);
    assert!(
        is_open(&call(&mut svc).await),
        "the only probe slot is taken"
    );
    drop(probe);
    assert_eq!(
        call(&mut svc).await.unwrap(),
        1,
        "slot released by the drop"
    );
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn keyed_circuits_are_isolated() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .key_by(|model: &&'static str| *model)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = service_fn(|model: &'static str| async move {
        if model == "gpt-4o" {
            Err::<&str, BoxError>(err(FailureKind::Overloaded { retry_after: None }))
        } else {
            Ok(model)
        }
    });
    let mut svc = layer.layer_service(upstream);
    for _ in 0..3 {
        let _ = svc.ready().await.unwrap().call("gpt-4o").await;
    }
    let open = svc.ready().await.unwrap().call("gpt-4o").await.unwrap_err();
    assert!(open.is::<CircuitOpen>());
    assert_eq!(
        svc.ready().await.unwrap().call("claude").await.unwrap(),
        "claude"
    );
    assert_eq!(handle.get(&"gpt-4o").unwrap().state(), CircuitState::Open);
    assert_eq!(handle.get(&"claude").unwrap().state(), CircuitState::Closed);
    assert_eq!(handle.keyed().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn key_limit_evicts_idle_closed_circuits_first() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .max_keys(2)
        .key_by(|n: &u32| *n)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = service_fn(|n: u32| async move {
        if n == 1 {
            Err::<u32, BoxError>(err(FailureKind::ServerError))
        } else {
            Ok(n)
        }
    });
    let mut svc = layer.layer_service(upstream);
    for n in [1, 2, 3] {
        let _ = svc.ready().await.unwrap().call(n).await;
    }
    // Key 1 is open and kept; key 2 was idle and closed, so 3 took its place.
    let mut keys: Vec<u32> = handle.keyed().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(keys, [1, 3]);
    assert!(svc
        .ready()
        .await
        .unwrap()
        .call(1)
        .await
        .unwrap_err()
        .is::<CircuitOpen>());
}

#[tokio::test(start_paused = true)]
async fn forced_states_and_metrics_only() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let circuit = handle.circuit();
    let mut svc = layer.layer_service(up.service());

    circuit.force_open();
    advance(Duration::from_secs(3600)).await;
    assert!(
        is_open(&call(&mut svc).await),
        "forced open outlasts any cooldown"
    );
    assert_eq!(up.calls(), 0);

    circuit.force_closed();
    for _ in 0..5 {
        up.next(Act::Fail);
        let _ = call(&mut svc).await;
    }
    assert_eq!(
        circuit.state(),
        CircuitState::Closed,
        "forced closed never trips"
    );
    assert!(circuit.snapshot().forced);

    circuit.reset();
    handle.set_metrics_only(true);
    up.next(Act::Fail);
    let _ = call(&mut svc).await;
    assert_eq!(
        circuit.state(),
        CircuitState::Open,
        "state is still tracked"
    );
    let before = up.calls();
    for _ in 0..5 {
        assert_eq!(
            call(&mut svc).await.unwrap(),
            1,
            "metrics-only never rejects"
        );
    }
    assert_eq!(up.calls(), before + 5);
    // One real rejection while forced open, then five would-be rejections.
    assert_eq!(
        circuit.snapshot().rejected,
        6,
        "would-be rejections are counted"
    );
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_state() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let mut a = layer.layer_service(up.service());
    let mut b = layer.clone().layer_service(up.service());
    up.next(Act::Fail);
    up.next(Act::Fail);
    let _ = call(&mut a).await;
    let _ = call(&mut b).await;
    assert!(is_open(&call(&mut a).await));
    assert!(is_open(&call(&mut b.clone()).await));
}

#[tokio::test(start_paused = true)]
async fn remote_decisions_apply_through_the_handle() {
    let up = Scripted::new();
    let layer = CircuitBreakerLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer_service(up.service());
    handle
        .circuit()
        .apply_remote(CircuitState::Open, Some(Duration::from_secs(4)));
    assert_eq!(retry_after(&call(&mut svc).await), Duration::from_secs(4));
    handle.circuit().apply_remote(CircuitState::Closed, None);
    assert!(call(&mut svc).await.is_ok());
}

/// `layer.layer(svc)` without importing `tower::Layer` in every test.
trait LayerService<S> {
    type Out;
    fn layer_service(&self, s: S) -> Self::Out;
}
impl<S, L: tower::Layer<S>> LayerService<S> for L {
    type Out = L::Service;
    fn layer_service(&self, s: S) -> L::Service {
        self.layer(s)
    }
}
