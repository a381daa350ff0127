//! The balancer: with three real loopback replicas, the slow one gets little
//! traffic and one whose circuit is open gets none; after its cooldown it gets
//! traffic again (paused time, in-process replicas).

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use scripted::{count, response, scripted};
use support::client::{chat, http_tier};
use support::{Reply, Upstream};
use tower::buffer::Buffer;
use tower::util::Either;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::balance;
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_llm_resilience::classify::ErrorOnlyClassifier;

fn breaker() -> tower_llm_resilience::circuit_breaker::Builder {
    CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .cooldown(Duration::from_secs(60))
        .jitter(0.0)
}

#[tokio::test]
async fn most_traffic_goes_to_the_fast_replicas() {
    let fast = || Reply::after(Duration::from_millis(3), Reply::ok_json("{}"));
    let a = Upstream::always(fast()).await;
    let b = Upstream::always(fast()).await;
    let slow = Upstream::always(Reply::after(
        Duration::from_millis(30),
        Reply::ok_json("{}"),
    ))
    .await;
    let (mut balancer, handle) = balance::Builder::new()
        .breaker(breaker())
        .default_rtt(Duration::from_millis(10))
        .seed(3)
        .build([
            ("a", http_tier(a.url()).buffered()),
            ("b", http_tier(b.url()).buffered()),
            ("slow", http_tier(slow.url()).buffered()),
        ])
        .unwrap();
    let calls = 120;
    for _ in 0..calls {
        let answer = balancer
            .ready()
            .await
            .unwrap()
            .call(chat("m"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let (a, b, slow) = (a.hits(), b.hits(), slow.hits());
    assert_eq!(a + b + slow, calls);
    assert!(slow * 10 < calls, "the slow replica got {slow} of {calls}");
    assert!(a * 3 > calls && b * 3 > calls, "a {a}, b {b}");
    let reported: Vec<u64> = handle.deployments().iter().map(|d| d.calls).collect();
    assert_eq!(reported, [a as u64, b as u64, slow as u64]);
}

#[tokio::test]
async fn a_replica_whose_circuit_is_open_gets_no_traffic() {
    let a = Upstream::always(Reply::ok_json("{}")).await;
    let b = Upstream::always(Reply::ok_json("{}")).await;
    let broken = Upstream::always(Reply::status(500, "{}")).await;
    let (mut balancer, handle) = balance::Builder::new()
        .breaker(breaker())
        .seed(5)
        .build([
            ("a", http_tier(a.url()).buffered()),
            ("b", http_tier(b.url()).buffered()),
            ("broken", http_tier(broken.url()).buffered()),
        ])
        .unwrap();
    let mut failed = 0;
    for _ in 0..100 {
        let answer = balancer
            .ready()
            .await
            .unwrap()
            .call(chat("m"))
            .await
            .unwrap();
        if answer.status() != 200 {
            failed += 1;
        }
    }
    assert_eq!(broken.hits(), 3, "three failures open its circuit");
    assert_eq!(failed, 3);
    assert_eq!(a.hits() + b.hits(), 97);
    let broken_state = &handle.deployments()[2];
    assert_eq!(&*broken_state.name, "broken");
    assert_eq!(broken_state.circuit.state, CircuitState::Open);
    assert_eq!(
        broken_state.circuit.rejected, 0,
        "not even sent to be rejected"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_gets_traffic_again_after_its_cooldown() {
    let (steady, _) = scripted(vec![response(200, &[])]);
    let (flaky, flaky_calls) = scripted(vec![
        response(500, &[]),
        response(500, &[]),
        response(500, &[]),
        response(200, &[]),
    ]);
    let (mut balancer, handle) = balance::Builder::new()
        .breaker(breaker())
        .seed(9)
        .build([("steady", steady), ("flaky", flaky)])
        .unwrap();
    let mut send = async |n: usize| {
        for _ in 0..n {
            balancer
                .ready()
                .await
                .unwrap()
                .call(chat("m"))
                .await
                .unwrap();
        }
    };
    send(40).await;
    assert_eq!(count(&flaky_calls), 3);
    let circuit = handle.circuit("flaky").unwrap();
    assert_eq!(circuit.state(), CircuitState::Open);
    send(40).await;
    assert_eq!(count(&flaky_calls), 3, "nothing while open");

    tokio::time::sleep(Duration::from_secs(61)).await;
    send(40).await;
    assert_eq!(circuit.state(), CircuitState::Closed, "the probe closed it");
    assert!(
        count(&flaky_calls) > 10,
        "traffic is back: {}",
        count(&flaky_calls)
    );
}

#[test]
fn bad_settings_are_refused_at_build_time() {
    let none: [(&str, scripted::Scripted); 0] = [];
    let err = balance::Builder::new()
        .build::<_, http::Request<bytes::Bytes>, _>(none)
        .unwrap_err();
    assert_eq!(err, balance::BuildError::NoDeployments);
    let (one, _) = scripted(vec![response(200, &[])]);
    let err = balance::Builder::new()
        .build::<_, http::Request<bytes::Bytes>, _>([("x", one.clone()), ("x", one)])
        .unwrap_err();
    assert_eq!(err, balance::BuildError::DuplicateName("x".into()));
    let (one, _) = scripted(vec![response(200, &[])]);
    let err = balance::Builder::new()
        .breaker(CircuitBreakerLayer::builder().consecutive_failures(0))
        .build::<_, http::Request<bytes::Bytes>, _>([("x", one)])
        .unwrap_err();
    assert!(matches!(err, balance::BuildError::Breaker(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn while_a_probe_is_in_flight_other_calls_go_elsewhere() {
    let (steady, _) = scripted(vec![response(200, &[])]);
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let counted = flaky_calls.clone();
    // Three failures open the circuit; the fourth call (the probe) takes 5 s.
    let flaky = tower::service_fn(move |_: http::Request<Bytes>| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 3 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let status = if n < 3 { 500 } else { 200 };
            Ok::<_, scripted::BoxError>(response(status, &[]))
        }
    });
    let (balancer, handle) = balance::Builder::new()
        .breaker(breaker())
        .seed(9)
        .build([
            ("steady", Either::Left(steady)),
            ("flaky", Either::Right(flaky)),
        ])
        .unwrap();
    let balancer = Buffer::new(balancer, 64);
    while flaky_calls.load(Ordering::SeqCst) < 3 {
        balancer.clone().oneshot(chat("m")).await.unwrap();
    }
    let circuit = handle.circuit("flaky").unwrap();
    assert_eq!(circuit.state(), CircuitState::Open);

    tokio::time::sleep(Duration::from_secs(61)).await;
    let burst: Vec<_> = (0..20)
        .map(|_| tokio::spawn(balancer.clone().oneshot(chat("m"))))
        .collect();
    for call in burst {
        let answer = call
            .await
            .unwrap()
            .expect("no call is rejected by the breaker");
        assert_eq!(answer.status(), 200);
    }
    assert_eq!(
        flaky_calls.load(Ordering::SeqCst),
        4,
        "one probe, nothing else"
    );
    assert_eq!(circuit.snapshot().rejected, 0);
    assert_eq!(circuit.state(), CircuitState::Closed, "the probe closed it");
}

#[tokio::test(start_paused = true)]
async fn breakers_shared_with_other_callers_gate_the_balancer() {
    let (a, _) = scripted(vec![response(200, &[])]);
    let (b, b_calls) = scripted(vec![response(200, &[])]);
    let layer_a = breaker().name("a").build().unwrap();
    let layer_b = breaker().name("b").build().unwrap();
    let (balancer, handle) = balance::Builder::new()
        .seed(4)
        .build_with_circuits([
            ("a", layer_a.layer(a), layer_a.handle()),
            ("b", layer_b.layer(b), layer_b.handle()),
        ])
        .unwrap();
    let balancer = Buffer::new(balancer, 8);
    // Another part of the program forces b's circuit open.
    layer_b.handle().circuit().force_open();
    for _ in 0..20 {
        balancer.clone().oneshot(chat("m")).await.unwrap();
    }
    assert_eq!(count(&b_calls), 0);
    assert_eq!(handle.deployments()[1].calls, 0);

    layer_b.handle().circuit().reset();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..20 {
        balancer.clone().oneshot(chat("m")).await.unwrap();
    }
    assert!(count(&b_calls) > 3, "b is back a second after its reset");
}

#[tokio::test(start_paused = true)]
async fn weights_share_traffic_between_equal_replicas() {
    // In-process replicas answering at once on paused time: equal latency, so
    // only the weights tell them apart.
    let (big, big_calls) = scripted(vec![response(200, &[])]);
    let (small, small_calls) = scripted(vec![response(200, &[])]);
    let (mut balancer, handle) = balance::Builder::new()
        .breaker(breaker())
        .seed(11)
        .build_weighted([("big", big, 3), ("small", small, 1)])
        .unwrap();
    let calls = 400;
    for _ in 0..calls {
        let answer = balancer
            .ready()
            .await
            .unwrap()
            .call(chat("m"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let (big_hits, small_hits) = (count(&big_calls), count(&small_calls));
    assert_eq!(big_hits + small_hits, calls);
    // About 3:1 (p2c over 4 places, 3 of them big's), far from 1:1.
    assert!(
        (250..=350).contains(&big_hits),
        "big {big_hits}, small {small_hits}"
    );
    // The handle counts per deployment, not per place.
    let reported: Vec<u64> = handle.deployments().iter().map(|d| d.calls).collect();
    assert_eq!(reported, [big_hits as u64, small_hits as u64]);
}

#[tokio::test]
async fn an_open_circuit_takes_all_of_a_weighted_deployments_places() {
    let heavy = Upstream::always(Reply::status(500, "{}")).await;
    let light = Upstream::always(Reply::ok_json("{}")).await;
    let (mut balancer, handle) = balance::Builder::new()
        .breaker(breaker())
        .seed(13)
        .build_weighted([
            ("heavy", http_tier(heavy.url()).buffered(), 10),
            ("light", http_tier(light.url()).buffered(), 1),
        ])
        .unwrap();
    let mut ok = 0;
    for _ in 0..60 {
        let answer = balancer
            .ready()
            .await
            .unwrap()
            .call(chat("m"))
            .await
            .unwrap();
        ok += usize::from(answer.status() == 200);
    }
    assert_eq!(
        heavy.hits(),
        3,
        "its three failures open the shared circuit"
    );
    assert_eq!(ok, 57);
    assert_eq!(handle.circuit("heavy").unwrap().state(), CircuitState::Open);
}

#[test]
fn weights_out_of_range_are_refused() {
    let service = || tower::service_fn(|_: String| async { Ok::<_, tower::BoxError>(()) });
    for weight in [0, balance::MAX_WEIGHT + 1] {
        let err = balance::Builder::new()
            .breaker(CircuitBreakerLayer::builder().classifier(ErrorOnlyClassifier))
            .build_weighted::<_, String, _>([("a", service(), 1), ("b", service(), weight)])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err, balance::BuildError::Weight("b".into(), weight));
        assert!(err.to_string().contains("\"b\" has weight"), "{err}");
    }
}
