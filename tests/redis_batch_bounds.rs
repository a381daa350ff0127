//! The Redis batch store's total-size bounds, against a real redis-server:
//! least recently run batches evicted across instances, one account kept by
//! concurrent writers, expired batches leaving the account.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis_server::RedisServer;
use tower_llm_resilience::partial_batch::{BatchStore, StoredSuccess};
use tower_llm_resilience::redis::RedisBatchStore;

fn success(bytes: usize) -> StoredSuccess {
    StoredSuccess {
        response_json: format!("\"{}\"", "x".repeat(bytes.saturating_sub(2))),
        attempts: 1,
    }
}

/// Bytes the store counts for one item: its key and the stored JSON.
fn counted(key: &str, success: &StoredSuccess) -> i64 {
    (key.len() + serde_json::to_string(success).unwrap().len()) as i64
}

async fn conn(redis: &RedisServer) -> MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The store's own account: (records, bytes).
async fn totals(conn: &mut MultiplexedConnection) -> (i64, i64) {
    let totals: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg("tower-llm:batch-totals")
        .query_async(conn)
        .await
        .unwrap();
    (
        totals.get("records").copied().unwrap_or(0),
        totals.get("bytes").copied().unwrap_or(0),
    )
}

/// What the batch hashes really hold: (records, bytes), from every key.
async fn held(conn: &mut MultiplexedConnection) -> (i64, i64) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tower-llm:batch:*")
        .query_async(conn)
        .await
        .unwrap();
    let (mut records, mut bytes) = (0, 0);
    for key in keys {
        let items: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        for (field, value) in items {
            records += 1;
            bytes += (field.len() + value.len()) as i64;
        }
    }
    (records, bytes)
}

/// Waits until Redis' clock (which orders the batches) moves on by a
/// millisecond, so two changes never share a timestamp.
async fn next_millisecond(conn: &mut MultiplexedConnection) {
    let now = |conn: &mut MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            secs * 1000 + micros / 1000
        }
    };
    let start = now(conn).await;
    while now(conn).await == start {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_run_batch_goes_first_whichever_instance_records() {
    let redis = RedisServer::start();
    let mut raw = conn(&redis).await;
    let on_a = RedisBatchStore::new(redis.client()).unwrap().max_records(3);
    let on_b = RedisBatchStore::new(redis.client()).unwrap().max_records(3);
    for batch in ["a", "b", "c"] {
        on_a.record(batch, "k", success(10)).await.unwrap();
        next_millisecond(&mut raw).await;
    }
    // A run of "a" on B keeps it: "b" is now the one run longest ago.
    assert_eq!(on_b.load("a").await.unwrap().len(), 1);
    next_millisecond(&mut raw).await;
    on_b.record("d", "k", success(10)).await.unwrap();

    assert!(on_a.load("b").await.unwrap().is_empty(), "b was evicted");
    for batch in ["a", "c", "d"] {
        assert_eq!(on_a.load(batch).await.unwrap().len(), 1, "{batch} is kept");
    }
    let item = counted("k", &success(10));
    assert_eq!(totals(&mut raw).await, (3, 3 * item));
    assert_eq!(held(&mut raw).await, (3, 3 * item));

    // Forgetting leaves the account too.
    on_b.forget("c").await.unwrap();
    assert_eq!(totals(&mut raw).await, (2, 2 * item));
    assert_eq!(held(&mut raw).await, (2, 2 * item));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_bounded_and_a_batch_alone_over_them_stops_growing() {
    let redis = RedisServer::start();
    let mut raw = conn(&redis).await;
    let item = counted("k1", &success(100));
    let store = RedisBatchStore::new(redis.client())
        .unwrap()
        .max_bytes(2 * item as usize + 10);

    // Three items of one batch: the third does not fit, and is not kept.
    for key in ["k1", "k2", "k3"] {
        store.record("big", key, success(100)).await.unwrap();
    }
    let kept = store.load("big").await.unwrap();
    assert_eq!(kept.len(), 2, "{:?}", kept.keys());
    assert!(!kept.contains_key("k3"));
    assert_eq!(totals(&mut raw).await, (2, 2 * item));

    // Another batch's success evicts it whole.
    next_millisecond(&mut raw).await;
    store.record("next", "k1", success(100)).await.unwrap();
    assert!(store.load("big").await.unwrap().is_empty());
    assert_eq!(store.load("next").await.unwrap().len(), 1);
    assert_eq!(totals(&mut raw).await, (1, item));

    // An item larger than the bound is kept nowhere, and evicts nothing.
    store.record("huge", "k", success(1000)).await.unwrap();
    assert!(store.load("huge").await.unwrap().is_empty());
    assert_eq!(store.load("next").await.unwrap().len(), 1);

    // Re-recording an item replaces its bytes instead of adding them.
    store.record("next", "k1", success(120)).await.unwrap();
    let replaced = counted("k1", &success(120));
    assert_eq!(totals(&mut raw).await, (1, replaced));
    assert_eq!(held(&mut raw).await, (1, replaced));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_keep_one_account_within_the_bounds() {
    let redis = RedisServer::start();
    let mut raw = conn(&redis).await;
    let max_records = 25;
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = RedisBatchStore::new(redis.client())
                .unwrap()
                .max_records(max_records);
            tokio::spawn(async move {
                for i in 0..60 {
                    let batch = format!("w{writer}-b{}", i % 12);
                    let key = format!("item-{i}");
                    store.record(&batch, &key, success(10 + i)).await.unwrap();
                    if i % 7 == 0 {
                        store.load(&batch).await.unwrap();
                    }
                    if i % 11 == 0 {
                        store
                            .forget(&format!("w{}-b{}", (writer + 1) % 4, i % 12))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let (records, bytes) = totals(&mut raw).await;
    assert!(
        records > 0 && records <= max_records as i64,
        "{records} records"
    );
    assert_eq!(
        held(&mut raw).await,
        (records, bytes),
        "the account is exact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_batches_leave_the_account() {
    let redis = RedisServer::start();
    let mut raw = conn(&redis).await;
    let store = RedisBatchStore::new(redis.client())
        .unwrap()
        .ttl(Duration::from_millis(50));
    store.record("old", "k", success(10)).await.unwrap();
    assert_eq!(totals(&mut raw).await.0, 1);
    // Redis expires the hash by itself (polled, bounded; a load would keep it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg("tower-llm:batch:old")
            .query_async(&mut raw)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(Instant::now() < deadline, "the batch never expired");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        totals(&mut raw).await.0,
        1,
        "counted until a script sees it"
    );
    let lasting = RedisBatchStore::new(redis.client()).unwrap();
    lasting.record("new", "k", success(20)).await.unwrap();
    let item = counted("k", &success(20));
    assert_eq!(totals(&mut raw).await, (1, item), "the expired batch left");
    assert_eq!(held(&mut raw).await, (1, item));
}
