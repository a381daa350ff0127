//! PostgreSQL stopped and restarted mid-run: escalations acknowledged before the
//! outage are all still there and resolvable, the store reconnects on its own,
//! and wake-ups work again.
#![cfg(feature = "postgres")]

mod escalation_util;
#[path = "support/postgres.rs"]
mod postgres_server;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use escalation_util::*;
use postgres_server::TestDb;
use tower::Layer;
use tower_llm_resilience::escalation::{
    EscalationError, EscalationLayer, Handle, RequestPredicate, Status, TimeoutDefault,
};
use tower_llm_resilience::postgres::PostgresEscalationStore;

const DEADLINE: Duration = Duration::from_secs(20);

fn gate() -> RequestPredicate<fn(&http::Request<Bytes>) -> bool> {
    RequestPredicate::new("needs approval", |req: &http::Request<Bytes>| {
        req.uri().path() == "/act"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_escalations_survive_a_restart_and_the_store_reconnects() {
    let db = TestDb::on_own_server();
    let store_a = PostgresEscalationStore::new(&db.migrated().await);
    let layer_a = EscalationLayer::builder(gate())
        .store(store_a.clone())
        .detach(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (inner, calls_a) = llm("{\"acted\":true}");
    let mut svc_a = layer_a.layer(inner);
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        acknowledged.push(escalated(
            send(&mut svc_a, chat_request("/act")).await.unwrap_err(),
        ));
    }
    eventually("A listens", || {
        let store_a = store_a.clone();
        async move { store_a.is_listening() }
    })
    .await;

    // The server goes away at once (immediate shutdown, as in a crash).
    db.server.stop();
    let started = Instant::now();
    let error = send(&mut svc_a, chat_request("/act")).await.unwrap_err();
    assert!(
        matches!(escalation_error(&error), EscalationError::Store(_)),
        "{error}"
    );
    eprintln!(
        "escalating during the outage failed in {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "bounded by the timeouts"
    );
    eventually("A notices the outage", || {
        let store_a = store_a.clone();
        async move { !store_a.is_listening() }
    })
    .await;

    db.server.restart();
    // The same store, on its own: the pool reconnects (an operation may fail while
    // it notices the restart) and so does the listening connection.
    let handle_a = layer_a.handle();
    let started = Instant::now();
    let pending = loop {
        match handle_a.list_pending().await {
            Ok(pending) => break pending,
            Err(e) => assert!(started.elapsed() < DEADLINE, "never reconnected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut listed: Vec<_> = pending.iter().map(|r| r.id.clone()).collect();
    let mut expected: Vec<_> = acknowledged.iter().map(|e| e.id.clone()).collect();
    listed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(
        listed, expected,
        "every acknowledged escalation is still there"
    );
    eventually("A listens again", || {
        let store_a = store_a.clone();
        async move { store_a.is_listening() }
    })
    .await;

    // Each one is resolvable, and resumes once with its token.
    for (n, escalation) in acknowledged.iter().enumerate() {
        if n % 2 == 0 {
            handle_a.approve(&escalation.id, "alice").await.unwrap();
            let request = with_header_token(chat_request("/act"), &escalation.token);
            let response = send(&mut svc_a, request).await.unwrap();
            assert!(std::str::from_utf8(response.body())
                .unwrap()
                .contains("acted"));
        } else {
            handle_a.reject(&escalation.id, "bob", "no").await.unwrap();
        }
    }
    assert_eq!(calls_a.load(Ordering::SeqCst), 3);
    assert_eq!(handle_a.list_pending().await.unwrap().len(), 0);

    // Wake-ups work again: a waiting call on A, resolved through B, with polling
    // far too slow to notice.
    let layer_wait = EscalationLayer::builder(gate())
        .store(store_a.clone())
        .wait(Duration::from_secs(3600), TimeoutDefault::Reject)
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (inner, _) = llm("{\"acted\":true}");
    let mut svc_wait = layer_wait.layer(inner);
    let call = spawn_call(&mut svc_wait, chat_request("/act")).await;
    let handle_b = Handle::new(PostgresEscalationStore::new(&db.migrated().await));
    eventually("the new escalation is visible on B", || {
        let handle_b = handle_b.clone();
        async move { handle_b.list_pending().await.is_ok_and(|p| p.len() == 1) }
    })
    .await;
    let waiting = handle_b.list_pending().await.unwrap().remove(0);
    handle_b.approve(&waiting.id, "carol").await.unwrap();
    tokio::time::timeout(DEADLINE, call)
        .await
        .expect("NOTIFY after the restart woke the call")
        .unwrap()
        .unwrap();
    assert_eq!(
        handle_b.get(&waiting.id).await.unwrap().unwrap().status,
        Status::Approved
    );
}
