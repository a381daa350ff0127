//! Circuit state shared through a real PostgreSQL: two instances, one circuit;
//! a late starter and an outage resync.
#![cfg(feature = "postgres")]

#[path = "support/circuit_upstream.rs"]
mod circuit_upstream;
#[path = "support/postgres.rs"]
mod postgres_server;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use circuit_upstream::{breaker, call, eventually, Svc, Upstream, DEADLINE};
use postgres_server::TestDb;
use tower_llm_resilience::circuit_breaker::{CircuitOpen, CircuitState, Handle, TransitionCause};
use tower_llm_resilience::postgres::{Postgres, PostgresCircuitSync};

/// One instance: a layer, its upstream, its sync.
struct Instance {
    handle: Handle<()>,
    upstream: Upstream,
    svc: Svc,
    sync: PostgresCircuitSync,
}

fn instance(pg: &Postgres, cooldown: Duration, consecutive: u32) -> Instance {
    let layer = breaker(cooldown, consecutive);
    let upstream = Upstream::default();
    let svc = upstream.service(&layer);
    let sync = PostgresCircuitSync::attach(pg, &layer.handle()).unwrap();
    Instance {
        handle: layer.handle(),
        upstream,
        svc,
        sync,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_on_a_rejects_on_b_and_recovery_on_a_closes_b() {
    let db = TestDb::fresh();
    let cooldown = Duration::from_millis(500);
    // Two instances: a pool each.
    let mut a = instance(&db.migrated().await, cooldown, 3);
    let mut b = instance(&db.migrated().await, cooldown, 3);
    eventually("both instances subscribed", || {
        a.sync.is_listening() && b.sync.is_listening()
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
async fn an_instance_attached_later_reads_the_open_state() {
    let db = TestDb::fresh();
    let mut a = instance(&db.migrated().await, Duration::from_secs(60), 2);
    eventually("A listening", || a.sync.is_listening()).await;
    a.upstream.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        assert!(call(&mut a.svc).await.is_err());
    }
    assert_eq!(a.handle.circuit().state(), CircuitState::Open);
    // The row is written (a notification nobody heard yet).
    let started = Instant::now();
    while db
        .server
        .psql(&db.name, "SELECT count(*) FROM tower_llm_circuits")
        != "1"
    {
        assert!(started.elapsed() < DEADLINE, "open state never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = instance(&db.migrated().await, Duration::from_secs(60), 2);
    eventually("C open from the stored state", || {
        c.handle.circuit().state() == CircuitState::Open
    })
    .await;
    let open = call(&mut c.svc).await.unwrap_err();
    let retry_after = open.downcast_ref::<CircuitOpen>().unwrap().retry_after();
    assert!(retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60));
    assert_eq!(c.upstream.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_keeps_local_state_and_resyncs() {
    let db = TestDb::on_own_server();
    let mut a = instance(&db.migrated().await, Duration::from_secs(60), 3);
    let mut b = instance(&db.migrated().await, Duration::from_secs(60), 3);
    eventually("both instances subscribed", || {
        a.sync.is_listening() && b.sync.is_listening()
    })
    .await;

    db.server.stop();
    eventually("both instances noticed the outage", || {
        !a.sync.is_listening() && !b.sync.is_listening()
    })
    .await;

    // Postgres is gone: calls the upstream answers still succeed.
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

    // Postgres is back: both listen again, A writes its open state, B applies it.
    db.server.restart();
    let latency = eventually("B open after resync", || {
        b.handle.circuit().state() == CircuitState::Open
    })
    .await;
    eprintln!("postgres restarted -> B resynced open: {latency:?}");
    eventually("both links reported up", || {
        a.sync.is_listening() && b.sync.is_listening()
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
async fn every_sync_of_a_database_handle_listens_through_one_connection() {
    let db = TestDb::fresh();
    db.migrated().await;
    let handle_with_pool_of_two = || async {
        let pg = Postgres::builder(&db.url())
            .pool_size(2)
            .build()
            .expect("a valid test URL");
        pg.migrate().await.unwrap();
        pg
    };
    let (pg_a, pg_b) = (
        handle_with_pool_of_two().await,
        handle_with_pool_of_two().await,
    );
    let circuits = 12;
    let cooldown = Duration::from_secs(30);
    // Instance A: twelve circuits (as a proxy with twelve upstreams).
    let mut a = Vec::new();
    for i in 0..circuits {
        let layer = breaker(cooldown, 3);
        let upstream = Upstream::default();
        let svc = upstream.service(&layer);
        let sync =
            PostgresCircuitSync::attach_as(&pg_a, &layer.handle(), &format!("up-{i}")).unwrap();
        a.push(Instance {
            handle: layer.handle(),
            upstream,
            svc,
            sync,
        });
    }
    // Instance B: one of them.
    let b_layer = breaker(cooldown, 3);
    let b_upstream = Upstream::default();
    let mut b_svc = b_upstream.service(&b_layer);
    let b_sync = PostgresCircuitSync::attach_as(&pg_b, &b_layer.handle(), "up-7").unwrap();
    eventually("every sync listening", || {
        b_sync.is_listening() && a.iter().all(|i| i.sync.is_listening())
    })
    .await;
    // Connections: at most the two pools and one listener per handle, not
    // one listener per circuit.
    let connections = || {
        db.server
            .psql(
                &db.name,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'tower-llm-resilience'",
            )
            .parse::<u32>()
            .unwrap()
    };
    assert!(connections() <= 2 * 2 + 2, "{} connections", connections());

    // Decisions still reach the right circuit through the shared connection.
    b_upstream.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(call(&mut b_svc).await.is_err());
    }
    eventually("up-7 open on A", || {
        a[7].handle.circuit().state() == CircuitState::Open
    })
    .await;
    for (i, instance) in a.iter_mut().enumerate() {
        if i != 7 {
            assert_eq!(instance.handle.circuit().state(), CircuitState::Closed);
            assert!(call(&mut instance.svc).await.is_ok());
        }
        assert_eq!(
            instance.upstream.calls.load(Ordering::SeqCst),
            usize::from(i != 7)
        );
    }

    // The last sync gone, the listening connection closes: one of the
    // backends there before goes (the pools keep theirs; new ones may come).
    let backends = || {
        db.server
            .psql(
                &db.name,
                "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
                 WHERE datname = current_database() \
                 AND application_name = 'tower-llm-resilience'",
            )
            .split(',')
            .map(str::to_owned)
            .collect::<std::collections::HashSet<String>>()
    };
    let before = backends();
    drop(a);
    let started = Instant::now();
    while before.is_subset(&backends()) {
        assert!(started.elapsed() < DEADLINE, "the listener stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b_sync);
}
