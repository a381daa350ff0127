//! Escalations shared through a real PostgreSQL: the store contract, created on
//! one instance and resolved on another, wake-ups through `LISTEN`/`NOTIFY`.
#![cfg(feature = "postgres")]

mod escalation_util;
#[path = "support/postgres.rs"]
mod postgres_server;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use escalation_util::contract::{
    created, paging_contract, purge_contract, record, resolution_race, store_contract,
};
use escalation_util::*;
use postgres_server::TestDb;
use tower::Layer;
use tower_llm_resilience::escalation::store::to_unix_ms;
use tower_llm_resilience::escalation::{
    EscalationLayer, EscalationStore, Handle, RequestPredicate, ResolveError, Status,
    TimeoutDefault,
};
use tower_llm_resilience::postgres::PostgresEscalationStore;

/// Generous: waits on real processes and sockets.
const DEADLINE: Duration = Duration::from_secs(15);

fn gate() -> RequestPredicate<fn(&http::Request<Bytes>) -> bool> {
    RequestPredicate::new("needs approval", |req: &http::Request<Bytes>| {
        req.uri().path() == "/act"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_contract() {
    for contract in 0..4 {
        // A fresh database for each part: they all use the same ids.
        let db = TestDb::fresh();
        let store = PostgresEscalationStore::new(&db.migrated().await);
        match contract {
            0 => store_contract(&store).await,
            1 => paging_contract(&store).await,
            2 => purge_contract(&store).await,
            _ => resolution_race(store).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_on_a_resolved_on_b_wakes_the_waiting_call_on_a_through_notify() {
    let db = TestDb::fresh();
    let pg = db.migrated().await;
    let store_a = PostgresEscalationStore::new(&pg);
    // Polling alone would take an hour: only the notification can end the wait.
    let layer_a = EscalationLayer::builder(gate())
        .store(store_a.clone())
        .wait(Duration::from_secs(3600), TimeoutDefault::Reject)
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    // Instance B: its own pool and listener on the same database.
    let handle_b = Handle::new(PostgresEscalationStore::new(&db.migrated().await));
    let (inner, calls) = llm("{\"acted\":true}");
    let mut svc_a = layer_a.layer(inner);
    let call = spawn_call(&mut svc_a, chat_request("/act")).await;

    eventually("the escalation is visible on B and A listens", || {
        let (handle_b, store_a) = (handle_b.clone(), store_a.clone());
        async move { store_a.is_listening() && !handle_b.list_pending().await.unwrap().is_empty() }
    })
    .await;
    let pending = handle_b.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(!pending[0].request.to_string().contains(API_KEY));
    let approved = Instant::now();
    handle_b.approve(&pending[0].id, "alice").await.unwrap();

    let response = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("the call on A completes: NOTIFY woke it")
        .unwrap()
        .unwrap();
    eprintln!(
        "resolved on B -> call on A completed: {:?}",
        approved.elapsed()
    );
    assert!(std::str::from_utf8(response.body())
        .unwrap()
        .contains("acted"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let record = layer_a.handle().get(&pending[0].id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Approved);
    let audit = handle_b.audit(Some(&pending[0].id)).await.unwrap();
    assert!(audit.len() >= 2, "created, resolved, ...: {audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_completes_on_a_change_made_by_another_instance() {
    let db = TestDb::fresh();
    let a = PostgresEscalationStore::new(&db.migrated().await);
    let b = PostgresEscalationStore::new(&db.migrated().await);
    eventually("A listens", || {
        let a = a.clone();
        async move { a.is_listening() }
    })
    .await;
    let pending = record("esc_watched", to_unix_ms(SystemTime::now()));
    let other = record("esc_other", to_unix_ms(SystemTime::now()));
    let watch = a.watch(&pending.id).expect("postgres stores watch");
    let mut watch = tokio::spawn(watch);
    // A change to another escalation does not complete it.
    b.insert(other.clone(), created(&other)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut watch)
            .await
            .is_err(),
        "woken by another id"
    );
    b.insert(pending.clone(), created(&pending)).await.unwrap();
    tokio::time::timeout(DEADLINE, watch)
        .await
        .expect("the insert on B wakes the watch on A")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolutions_on_two_instances_exactly_one_wins() {
    let db = TestDb::fresh();
    let a = Handle::new(PostgresEscalationStore::new(&db.migrated().await));
    let b = Handle::new(PostgresEscalationStore::new(&db.migrated().await));
    for round in 0..20 {
        let pending = record(&format!("esc_race_{round}"), to_unix_ms(SystemTime::now()));
        a.store()
            .insert(pending.clone(), created(&pending))
            .await
            .unwrap();
        let (on_a, on_b) = tokio::join!(
            a.approve(&pending.id, "alice@a"),
            b.reject(&pending.id, "bob@b", "no"),
        );
        assert!(
            on_a.is_ok() != on_b.is_ok(),
            "round {round}: {on_a:?} {on_b:?}"
        );
        let loser = if on_a.is_ok() { on_b.err() } else { on_a.err() };
        assert!(matches!(loser, Some(ResolveError::AlreadyResolved(_))));
        let audit = b.audit(Some(&pending.id)).await.unwrap();
        assert_eq!(audit.len(), 2, "created + one resolution");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_skipped_not_fatal() {
    let db = TestDb::fresh();
    let store = PostgresEscalationStore::new(&db.migrated().await);
    let good = record("esc_good", 1_700_000_001_000);
    store.insert(good.clone(), created(&good)).await.unwrap();
    db.server.psql(
        &db.name,
        "INSERT INTO tower_llm_escalations VALUES ('esc_bad', 0, 'pending', 1700000000000, 'not json')",
    );
    let listed = store.list(None).await.unwrap();
    assert_eq!(listed, vec![good.clone()]);
    let page = store.list_page(None, None, 10).await.unwrap();
    assert_eq!((page.records.len(), page.unreadable), (1, 1));
    assert_eq!(store.count(Status::Pending).await.unwrap(), 2);
}
