//! Circuit state shared through a real redis-server: two instances, one circuit.
#![cfg(feature = "redis")]

#[path = "support/circuit_upstream.rs"]
mod circuit_upstream;
#[path = "support/redis.rs"]
mod redis_server;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use circuit_upstream::{breaker, call, eventually, Svc, Upstream};
use redis_server::RedisServer;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, CircuitState, Handle, TransitionCause,
};
use tower_llm_resilience::classify::ErrorOnlyClassifier;
use tower_llm_resilience::redis::RedisCircuitSync;
use tower_llm_resilience::BoxError;

/// One instance: a layer, its upstream, its sync.
struct Instance {
    handle: Handle<()>,
    upstream: Upstream,
    svc: Svc,
    sync: RedisCircuitSync,
}

fn instance(redis: &RedisServer, cooldown: Duration, consecutive: u32) -> Instance {
    let layer = breaker(cooldown, consecutive);
    let upstream = Upstream::default();
    let svc = upstream.service(&layer);
    let sync = RedisCircuitSync::builder(redis.client())
        .without_shared_failure_rate()
        .attach(&layer.handle())
        .unwrap();
    Instance {
        handle: layer.handle(),
        upstream,
        svc,
        sync,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_on_a_rejects_on_b_and_recovery_on_a_closes_b() {
    let redis = RedisServer::start();
    let cooldown = Duration::from_millis(500);
    let mut a = instance(&redis, cooldown, 3);
    let mut b = instance(&redis, cooldown, 3);
    eventually("both instances subscribed", || {
        a.sync.is_connected() && b.sync.is_connected()
    })
    .await;
    let mut events_b = b.handle.subscribe();

    // A's upstream fails three times in a row: A opens ...
    a.upstream.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(call(&mut a.svc).await.is_err());
    }
    let opened = Instant::now();
    assert_eq!(a.handle.circuit().state(), CircuitState::Open);

    // ... and B, which never saw a failure, rejects without calling its upstream.
    let open_latency = eventually("B open", || {
        b.handle.circuit().state() == CircuitState::Open
    })
    .await;
    let error = call(&mut b.svc).await.unwrap_err();
    let open = error
        .downcast_ref::<CircuitOpen>()
        .expect("rejected by B's breaker");
    assert!(open.retry_after() <= cooldown);
    assert_eq!(b.upstream.calls.load(Ordering::SeqCst), 0);
    let event = events_b.recv().await.unwrap();
    assert_eq!(
        (event.to, event.cause),
        (CircuitState::Open, TransitionCause::Remote)
    );
    eprintln!(
        "open on A -> open on B: {open_latency:?} (polled; {:?} since A opened)",
        opened.elapsed()
    );

    // A's cooldown ends, its probe succeeds: A closes, and so does B.
    a.upstream.failing.store(false, Ordering::SeqCst);
    eventually("A's cooldown", || {
        a.handle.circuit().snapshot().retry_after == Some(Duration::ZERO)
    })
    .await;
    assert_eq!(call(&mut a.svc).await.unwrap(), "ok");
    assert_eq!(a.handle.circuit().state(), CircuitState::Closed);
    let close_latency = eventually("B closed", || {
        b.handle.circuit().state() == CircuitState::Closed
    })
    .await;
    eprintln!("recovery on A -> closed on B: {close_latency:?}");
    assert_eq!(call(&mut b.svc).await.unwrap(), "ok");
    assert_eq!(b.upstream.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_local_state_and_resyncs() {
    let mut redis = RedisServer::start();
    let mut a = instance(&redis, Duration::from_secs(60), 3);
    let mut b = instance(&redis, Duration::from_secs(60), 3);
    eventually("both instances subscribed", || {
        a.sync.is_connected() && b.sync.is_connected()
    })
    .await;

    redis.kill();
    eventually("both instances noticed the outage", || {
        !a.sync.is_connected() && !b.sync.is_connected()
    })
    .await;

    // Redis is gone: calls the upstream answers still succeed.
    for _ in 0..50 {
        assert_eq!(call(&mut a.svc).await.unwrap(), "ok");
        assert_eq!(call(&mut b.svc).await.unwrap(), "ok");
    }
    // A's upstream fails: A opens on its own (local state), B cannot know yet.
    a.upstream.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(call(&mut a.svc).await.is_err());
    }
    assert_eq!(a.handle.circuit().state(), CircuitState::Open);
    assert!(call(&mut a.svc)
        .await
        .unwrap_err()
        .downcast_ref::<CircuitOpen>()
        .is_some());
    assert_eq!(call(&mut b.svc).await.unwrap(), "ok");

    // Redis is back: both resubscribe, A writes its open state, B applies it.
    redis.restart();
    let latency = eventually("B open after resync", || {
        b.handle.circuit().state() == CircuitState::Open
    })
    .await;
    eprintln!("redis restarted -> B resynced open: {latency:?}");
    eventually("both links reported up", || {
        a.sync.is_connected() && b.sync.is_connected()
    })
    .await;
    let calls_before = b.upstream.calls.load(Ordering::SeqCst);
    assert!(call(&mut b.svc)
        .await
        .unwrap_err()
        .downcast_ref::<CircuitOpen>()
        .is_some());
    assert_eq!(b.upstream.calls.load(Ordering::SeqCst), calls_before);

    // And the link works both ways again: a reset on B (recovery) closes A.
    b.handle.circuit().reset();
    eventually("A closed", || {
        a.handle.circuit().state() == CircuitState::Closed
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_failure_rate_opens_every_instance() {
    let redis = RedisServer::start();
    let attach = |handle: &Handle<()>| {
        RedisCircuitSync::builder(redis.client())
            .flush_interval(Duration::from_millis(10))
            .shared_failure_rate(0.5, 10, Duration::from_secs(60))
            .attach(handle)
            .unwrap()
    };
    // Neither instance trips on its own: 100 failures in a row would be needed.
    let layer_a = breaker(Duration::from_secs(60), 100);
    let layer_b = breaker(Duration::from_secs(60), 100);
    let (upstream_a, upstream_b) = (Upstream::default(), Upstream::default());
    let (mut svc_a, mut svc_b) = (upstream_a.service(&layer_a), upstream_b.service(&layer_b));
    let sync_a = attach(&layer_a.handle());
    let sync_b = attach(&layer_b.handle());
    eventually("both instances subscribed", || {
        sync_a.is_connected() && sync_b.is_connected()
    })
    .await;

    // Each sees 2 successes and 4 failures: 6 calls, below the minimum of 10 alone;
    // together 12 calls, 8 failures: 67% >= 50%.
    for (svc, upstream) in [(&mut svc_a, &upstream_a), (&mut svc_b, &upstream_b)] {
        for _ in 0..2 {
            assert!(call(svc).await.is_ok());
        }
        upstream.failing.store(true, Ordering::SeqCst);
        for _ in 0..4 {
            assert!(call(svc).await.is_err());
        }
    }
    let latency = eventually("both open", || {
        layer_a.handle().circuit().state() == CircuitState::Open
            && layer_b.handle().circuit().state() == CircuitState::Open
    })
    .await;
    eprintln!("shared failure rate reached -> both open: {latency:?}");
    assert_eq!(layer_a.handle().circuit().snapshot().calls, 6);
    drop((sync_a, sync_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_circuits_are_shared_per_key() {
    let redis = RedisServer::start();
    let layer = || {
        CircuitBreakerLayer::builder()
            .name("models")
            .consecutive_failures(2)
            .cooldown(Duration::from_secs(60))
            .classifier(ErrorOnlyClassifier)
            .key_by(|model: &String| model.clone())
            .build()
            .unwrap()
    };
    let (layer_a, layer_b) = (layer(), layer());
    let sync_a = RedisCircuitSync::builder(redis.client())
        .without_shared_failure_rate()
        .attach(&layer_a.handle())
        .unwrap();
    let sync_b = RedisCircuitSync::builder(redis.client())
        .without_shared_failure_rate()
        .attach(&layer_b.handle())
        .unwrap();
    eventually("both instances subscribed", || {
        sync_a.is_connected() && sync_b.is_connected()
    })
    .await;
    let mut svc_a = layer_a.layer(tower::service_fn(|model: String| async move {
        if model == "gpt" {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }));
    for _ in 0..2 {
        assert!(svc_a
            .ready()
            .await
            .unwrap()
            .call("gpt".into())
            .await
            .is_err());
    }
    // B never served "gpt": the circuit is created from the key in the message.
    let handle_b = layer_b.handle();
    eventually("B's gpt circuit open", || {
        handle_b
            .get(&"gpt".to_owned())
            .is_some_and(|c| c.state() == CircuitState::Open)
    })
    .await;
    assert_eq!(handle_b.circuit().state(), CircuitState::Closed);
    assert!(handle_b.get(&"claude".to_owned()).is_none());
}
