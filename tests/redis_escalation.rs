//! Escalations shared through a real redis-server: created on one instance,
//! resolved on another.
#![cfg(feature = "redis")]

mod escalation_util;
#[path = "support/redis.rs"]
mod redis_server;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use escalation_util::contract::{
    created, paging_contract, record, resolution_race, store_contract,
};
use escalation_util::*;
use redis_server::RedisServer;
use tower::Layer;
use tower_llm_resilience::escalation::store::to_unix_ms;
use tower_llm_resilience::escalation::{
    EscalationError, EscalationId, EscalationLayer, EscalationStore, Handle, RequestPredicate,
    ResolveError, Status, TimeoutDefault,
};
use tower_llm_resilience::redis::RedisEscalationStore;

/// Generous: waits on real processes and sockets.
const DEADLINE: Duration = Duration::from_secs(15);

async fn until<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

fn gate() -> RequestPredicate<fn(&http::Request<Bytes>) -> bool> {
    RequestPredicate::new("needs approval", |req: &http::Request<Bytes>| {
        req.uri().path() == "/act"
    })
}

fn store(redis: &RedisServer) -> RedisEscalationStore {
    RedisEscalationStore::new(redis.client()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_contract() {
    let redis = RedisServer::start();
    store_contract(&store(&redis)).await;
    paging_contract(
        &RedisEscalationStore::builder(redis.client())
            .prefix("paging")
            .build()
            .unwrap(),
    )
    .await;
    resolution_race(
        RedisEscalationStore::builder(redis.client())
            .prefix("race")
            .build()
            .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_on_a_resolved_on_b_wakes_the_waiting_call_on_a() {
    let redis = RedisServer::start();
    // Polling alone would take an hour: only the pub/sub wake-up can end the wait.
    let layer_a = EscalationLayer::builder(gate())
        .store(store(&redis))
        .wait(Duration::from_secs(3600), TimeoutDefault::Reject)
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle_b = Handle::new(store(&redis));
    let (inner, calls) = llm("{\"acted\":true}");
    let mut svc_a = layer_a.layer(inner);
    let call = spawn_call(&mut svc_a, chat_request("/act")).await;

    until("the escalation is visible on B", || {
        let handle_b = handle_b.clone();
        async move { !handle_b.list_pending().await.unwrap().is_empty() }
    })
    .await;
    let pending = handle_b.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(!pending[0].request.to_string().contains(API_KEY));
    let approved = Instant::now();
    handle_b.approve(&pending[0].id, "alice").await.unwrap();

    let response = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("the call on A completes")
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_records_are_dropped_by_ttl() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(300);
    let instance = |retention: Duration| {
        let layer = EscalationLayer::builder(gate())
            .store(
                RedisEscalationStore::builder(redis.client())
                    .retention(retention)
                    .build()
                    .unwrap(),
            )
            .detach(ttl)
            .build()
            .unwrap();
        let (inner, calls) = llm("{}");
        (layer.handle(), layer.layer(inner), calls)
    };
    let (handle_a, mut svc_a, _) = instance(Duration::from_secs(3600));
    let (_, mut svc_b, calls_b) = instance(Duration::from_secs(3600));
    let kept = escalated(send(&mut svc_a, chat_request("/act")).await.unwrap_err());
    let (_, mut svc_short, _) = instance(Duration::ZERO);
    let dropped = escalated(
        send(&mut svc_short, chat_request("/act"))
            .await
            .unwrap_err(),
    );

    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(format!("tower-llm:esc:rec:{}", kept.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl_ms > 3_000_000 && ttl_ms <= 3_600_300, "{ttl_ms}");

    // With no retention Redis deletes the record when it expires.
    let key = format!("tower-llm:esc:rec:{}", dropped.id);
    let gone = until("the record's key expired", || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            !exists
        }
    })
    .await;
    eprintln!("record key deleted by TTL {gone:?} after the check");
    let error = send(
        &mut svc_b,
        with_header_token(chat_request("/act"), &dropped.token),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        escalation_error(&error),
        EscalationError::InvalidToken
    ));

    // Within retention, the expired token is refused as expired, on another instance.
    until("the escalation's expiry", || async {
        SystemTime::now() >= kept.expires_at
    })
    .await;
    let error = send(
        &mut svc_b,
        with_header_token(chat_request("/act"), &kept.token),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(escalation_error(&error), EscalationError::Expired { id } if *id == kept.id),
        "{error}"
    );
    assert_eq!(calls_b.load(Ordering::SeqCst), 0);
    let record = handle_a.get(&kept.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Expired);
    // The index forgets deleted records.
    let listed: Vec<EscalationId> = handle_a
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![kept.id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolutions_on_two_instances_exactly_one_wins() {
    let redis = RedisServer::start();
    let (a, b) = (Handle::new(store(&redis)), Handle::new(store(&redis)));
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
async fn acknowledged_escalations_survive_a_redis_crash() {
    let mut redis = RedisServer::start_persistent();
    let layer_a = EscalationLayer::builder(gate())
        .store(store(&redis))
        .detach(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (inner, _) = llm("{\"acted\":true}");
    let mut svc_a = layer_a.layer(inner);
    let acknowledged = escalated(send(&mut svc_a, chat_request("/act")).await.unwrap_err());

    redis.kill();
    // While Redis is down, escalating fails loudly instead of losing the request.
    let error = send(&mut svc_a, chat_request("/act")).await.unwrap_err();
    assert!(matches!(
        escalation_error(&error),
        EscalationError::Store(_)
    ));
    redis.restart();

    let layer_b = EscalationLayer::builder(gate())
        .store(store(&redis))
        .detach(Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle_b = layer_b.handle();
    let (inner, calls_b) = llm("{}");
    let _svc_b = layer_b.layer(inner);
    let pending = handle_b.list_pending().await.unwrap();
    assert_eq!(
        pending.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&acknowledged.id]
    );
    handle_b.approve(&acknowledged.id, "alice").await.unwrap();
    // Instance A's connection recovers on its own (a command may fail while it
    // notices the restart; such a failure is a store error and uses nothing up).
    let mut attempts = 0;
    let response = loop {
        attempts += 1;
        let request = with_header_token(chat_request("/act"), &acknowledged.token);
        match send(&mut svc_a, request).await {
            Ok(response) => break response,
            Err(error) => {
                assert!(
                    matches!(escalation_error(&error), EscalationError::Store(_)),
                    "{error}"
                );
                assert!(attempts < 50, "instance A never reconnected");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    eprintln!("instance A resumed after the restart in {attempts} attempt(s)");
    assert!(std::str::from_utf8(response.body())
        .unwrap()
        .contains("acted"));
    assert_eq!(calls_b.load(Ordering::SeqCst), 0);
}
