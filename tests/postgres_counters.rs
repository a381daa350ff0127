//! Fixed-window counters on a real PostgreSQL: windows apart, concurrent adds
//! from two instances summed exactly, expired counters pruned, bounds refused.
#![cfg(feature = "postgres")]

#[path = "support/postgres.rs"]
mod postgres_server;

use std::time::Duration;

use postgres_server::TestDb;
use tower_llm_resilience::postgres::{
    CounterError, PostgresCounters, COUNTER_MAX_BATCH, COUNTER_MAX_KEY,
};

const MINUTE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_and_keys_are_separate_and_reads_come_with_the_add() {
    let db = TestDb::fresh();
    let counters = PostgresCounters::new(&db.migrated().await);
    // Nothing yet: every read is 0, the first add starts from 0.
    let (read, requests) = counters
        .read_and_add(
            &[("a:spend", 7), ("a:tokens", 100)],
            ("a:requests", 100, 1, MINUTE),
        )
        .await
        .unwrap();
    assert_eq!((read, requests), (vec![0, 0], 1));
    counters
        .add_many(&[
            ("a:spend", 7, 500, MINUTE),
            ("a:tokens", 100, 30, MINUTE),
            // Summed with the one before, in one statement.
            ("a:tokens", 100, 12, MINUTE),
            // The next window, and another key: apart.
            ("a:tokens", 101, 1_000, MINUTE),
            ("b:tokens", 100, 9, MINUTE),
        ])
        .await
        .unwrap();
    let (read, requests) = counters
        .read_and_add(
            &[("a:spend", 7), ("a:tokens", 100), ("a:requests", 100)],
            ("a:requests", 100, 1, MINUTE),
        )
        .await
        .unwrap();
    // The read of the counter added to shows it before the add (one snapshot).
    assert_eq!((read, requests), (vec![500, 42, 1], 2));
    assert_eq!(
        counters
            .read(&[
                ("a:tokens", 101),
                ("b:tokens", 100),
                ("a:tokens", 99),
                ("c", 0)
            ])
            .await
            .unwrap(),
        [1_000, 9, 0, 0]
    );
    // Empty lists are fine.
    assert!(counters.read(&[]).await.unwrap().is_empty());
    counters.add_many(&[]).await.unwrap();
    let (read, requests) = counters
        .read_and_add(&[], ("a:requests", 100, 0, MINUTE))
        .await
        .unwrap();
    assert_eq!((read, requests), (vec![], 2));
    // Saturates instead of failing.
    counters
        .add_many(&[("big", 0, u64::MAX, MINUTE), ("big", 0, u64::MAX, MINUTE)])
        .await
        .unwrap();
    let (_, big) = counters
        .read_and_add(&[], ("big", 0, 5, MINUTE))
        .await
        .unwrap();
    assert_eq!(big, i64::MAX as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_from_two_instances_add_up_exactly() {
    let db = TestDb::fresh();
    let a = PostgresCounters::new(&db.migrated().await);
    let b = PostgresCounters::new(&db.migrated().await);
    const EACH: u64 = 100;
    let mut tasks = Vec::new();
    for counters in [a.clone(), b.clone()] {
        for i in 0..EACH {
            let counters = counters.clone();
            tasks.push(tokio::spawn(async move {
                let (_, requests) = counters
                    .read_and_add(&[("k:tokens", 1)], ("k:requests", 1, 1, MINUTE))
                    .await
                    .unwrap();
                // Two counters in one statement, in either order: no deadlock.
                let adds = if i % 2 == 0 {
                    [("k:tokens", 1, 3, MINUTE), ("k:spend", 1, 5, MINUTE)]
                } else {
                    [("k:spend", 1, 5, MINUTE), ("k:tokens", 1, 3, MINUTE)]
                };
                counters.add_many(&adds).await.unwrap();
                requests
            }));
        }
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    // Every add saw its own count: each value from 1 to 200 exactly once.
    seen.sort_unstable();
    assert_eq!(seen, (1..=2 * EACH).collect::<Vec<_>>());
    let totals = b
        .read(&[("k:requests", 1), ("k:tokens", 1), ("k:spend", 1)])
        .await
        .unwrap();
    assert_eq!(totals, [2 * EACH, 3 * 2 * EACH, 5 * 2 * EACH]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_counters_read_zero_restart_and_are_pruned() {
    let db = TestDb::fresh();
    let counters = PostgresCounters::new(&db.migrated().await);
    counters
        .add_many(&[
            ("old", 1, 10, MINUTE),
            ("older", 1, 10, MINUTE),
            ("kept", 1, 10, MINUTE),
        ])
        .await
        .unwrap();
    // Their time passed (set in the database: no waiting).
    db.server.psql(
        &db.name,
        "UPDATE tower_llm_counters SET expires_at = now() - interval '1 second'
         WHERE key IN ('old', 'older')",
    );
    assert_eq!(
        counters.read(&[("old", 1), ("kept", 1)]).await.unwrap(),
        [0, 10]
    );
    // An add to an expired counter starts it again from 0.
    let (_, older) = counters
        .read_and_add(&[], ("older", 1, 4, MINUTE))
        .await
        .unwrap();
    assert_eq!(older, 4);
    assert_eq!(counters.prune_expired().await.unwrap(), 1);
    assert_eq!(
        db.server.psql(
            &db.name,
            "SELECT string_agg(key || '=' || value, ',' ORDER BY key) FROM tower_llm_counters"
        ),
        "kept=10,older=4"
    );
    assert_eq!(counters.prune_expired().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_and_large_batches_are_refused_before_the_database() {
    let db = TestDb::fresh();
    let counters = PostgresCounters::new(&db.migrated().await);
    let long = "k".repeat(COUNTER_MAX_KEY + 1);
    let longest = "k".repeat(COUNTER_MAX_KEY);
    let refused = counters
        .read_and_add(&[], (&long, 1, 1, MINUTE))
        .await
        .unwrap_err();
    assert!(matches!(refused, CounterError::KeyTooLong(n) if n == COUNTER_MAX_KEY + 1));
    assert!(
        refused.to_string().contains("at most 512 bytes"),
        "{refused}"
    );
    assert!(matches!(
        counters.read(&[(&long, 1)]).await,
        Err(CounterError::KeyTooLong(_))
    ));
    assert!(matches!(
        counters
            .add_many(&[("fine", 1, 1, MINUTE), (&long, 1, 1, MINUTE)])
            .await,
        Err(CounterError::KeyTooLong(_))
    ));
    let many: Vec<(&str, i64)> = vec![("k", 1); COUNTER_MAX_BATCH + 1];
    assert!(matches!(
        counters.read(&many).await,
        Err(CounterError::TooMany(n)) if n == COUNTER_MAX_BATCH + 1
    ));
    // Nothing of a refused call was written; the longest key works.
    assert_eq!(counters.read(&[("fine", 1)]).await.unwrap(), [0]);
    let (_, value) = counters
        .read_and_add(&[(&longest, 1)], (&longest, 1, 2, MINUTE))
        .await
        .unwrap();
    assert_eq!(value, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_store_error() {
    let db = TestDb::on_own_server();
    let counters = PostgresCounters::new(&db.migrated().await);
    counters.add_many(&[("k", 1, 1, MINUTE)]).await.unwrap();
    db.server.stop();
    let failed = counters
        .read_and_add(&[("k", 1)], ("k", 1, 1, MINUTE))
        .await
        .unwrap_err();
    assert!(matches!(failed, CounterError::Pg(_)), "{failed}");
    db.server.restart();
    // Back by itself: the pool reconnects (polled with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match counters.read(&[("k", 1)]).await {
            Ok(values) => {
                assert_eq!(values, [1]);
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "not back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
