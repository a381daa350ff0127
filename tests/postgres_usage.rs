//! Usage records and the audit log on a real PostgreSQL: written by two
//! instances, summed by client, model and day; bounded and pruned.
#![cfg(feature = "postgres")]

#[path = "support/postgres.rs"]
mod postgres_server;

use std::time::{Duration, SystemTime};

use postgres_server::TestDb;
use tower_llm_resilience::postgres::{
    AuditEvent, PostgresAuditLog, PostgresUsageStore, UsageQuery, UsageRow, AUDIT_APPEND_LOCK,
    AUDIT_MAX_FIELD,
};

/// 2024-05-01T00:00:00Z.
const MAY_1: i64 = 1_714_521_600;
const DAY: i64 = 86_400;

fn row(ts: i64, client: &str, model: &str, cost: Option<u64>) -> UsageRow {
    UsageRow {
        ts,
        client: client.into(),
        model: model.into(),
        upstream_model: format!("{model}-2024"),
        tier: "primary".into(),
        input_tokens: 100,
        cached_input_tokens: 10,
        output_tokens: 20,
        cost_nano_usd: cost,
        cached: false,
        degraded: model == "gpt-4o-mini",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_from_two_instances_adds_up_by_client_model_and_day() {
    let db = TestDb::fresh();
    let a = PostgresUsageStore::new(&db.migrated().await);
    let b = PostgresUsageStore::new(&db.migrated().await);
    // A: alice on two days (the second just after midnight UTC), one unpriced.
    let written = a
        .insert(&[
            row(MAY_1 + 10, "alice", "gpt-4o", Some(1_000)),
            row(MAY_1 + 10, "alice", "gpt-4o", Some(1_000)),
            row(MAY_1 + DAY, "alice", "gpt-4o", None),
        ])
        .await
        .unwrap();
    assert_eq!(written, 2, "the two identical rows are summed into one");
    // B: bob, and alice again.
    b.insert(&[
        row(MAY_1 + 20, "bob", "gpt-4o-mini", Some(50)),
        row(MAY_1 + DAY - 1, "alice", "gpt-4o-mini", Some(7)),
    ])
    .await
    .unwrap();

    let by_client_day = UsageQuery {
        from: MAY_1,
        to: MAY_1 + 2 * DAY,
        by_client: true,
        by_day: true,
        ..UsageQuery::default()
    };
    let report = a.query(&by_client_day, 100).await.unwrap();
    type Shape<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, u64, u64);
    let shape: Vec<Shape<'_>> = report
        .groups
        .iter()
        .map(|g| {
            (
                g.client.as_deref(),
                g.model.as_deref(),
                g.day.as_deref(),
                g.totals.requests,
                g.totals.cost_nano_usd,
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (Some("alice"), None, Some("2024-05-01"), 3, 2_007),
            (Some("alice"), None, Some("2024-05-02"), 1, 0),
            (Some("bob"), None, Some("2024-05-01"), 1, 50),
        ]
    );
    assert!(!report.truncated);
    assert_eq!(report.totals.requests, 5);
    assert_eq!(report.totals.input_tokens, 500);
    assert_eq!(report.totals.cached_input_tokens, 50);
    assert_eq!(report.totals.output_tokens, 100);
    assert_eq!(report.totals.unpriced, 1);
    assert_eq!(report.totals.degraded, 2);

    // A key's own totals, as a budget reads them, through the other instance.
    let alice = b.client_totals("alice", MAY_1, MAY_1 + DAY).await.unwrap();
    assert_eq!((alice.requests, alice.cost_nano_usd), (3, 2_007));
    // The range is half-open.
    let none = b
        .client_totals("alice", MAY_1 + 2 * DAY, MAY_1 + 3 * DAY)
        .await
        .unwrap();
    assert_eq!(none.requests, 0);

    // Grouped by model, cut at one group.
    let by_model = UsageQuery {
        from: MAY_1,
        to: MAY_1 + 2 * DAY,
        by_model: true,
        ..UsageQuery::default()
    };
    let cut = a.query(&by_model, 1).await.unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.groups.len(), 1);
    assert_eq!(cut.groups[0].model.as_deref(), Some("gpt-4o"));
    assert_eq!(cut.groups[0].totals.requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_chunked_and_pruning_bounds_the_table() {
    let db = TestDb::fresh();
    let store = PostgresUsageStore::new(&db.migrated().await);
    let rows: Vec<UsageRow> = (0..2_500)
        .map(|i| row(MAY_1 + i, "alice", "gpt-4o", Some(1)))
        .collect();
    assert_eq!(store.insert(&rows).await.unwrap(), 2_500);
    let all = store.client_totals("alice", 0, i64::MAX).await.unwrap();
    assert_eq!(all.requests, 2_500);
    // Older than MAY_1 + 500 goes, then all but the newest 1000.
    assert_eq!(store.prune(MAY_1 + 500, 1_000).await.unwrap(), 1_500);
    let kept = store.client_totals("alice", 0, i64::MAX).await.unwrap();
    assert_eq!(kept.requests, 1_000);
    let oldest = store
        .client_totals("alice", 0, MAY_1 + 1_500)
        .await
        .unwrap();
    assert_eq!(oldest.requests, 0, "the oldest went first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_shared_ordered_bounded_and_pruned() {
    let db = TestDb::fresh();
    let a = PostgresAuditLog::new(&db.migrated().await);
    let b = PostgresAuditLog::new(&db.migrated().await);
    let event = |actor: &str, action: &str| AuditEvent {
        actor: actor.into(),
        action: action.into(),
        subject: "openai".into(),
        detail: "{\"why\":\"maintenance\"}".into(),
    };
    let first = a
        .append(&event("alice", "circuit_force_open"))
        .await
        .unwrap();
    let second = b.append(&event("bob", "circuit_reset")).await.unwrap();
    assert!(second > first);
    // A field past its bound is cut at a character boundary.
    let long = "é".repeat(AUDIT_MAX_FIELD);
    b.append(&event(&long, "sign_in")).await.unwrap();

    let listed = a.list(None, 10).await.unwrap();
    let actions: Vec<&str> = listed.iter().map(|e| e.event.action.as_str()).collect();
    assert_eq!(actions, ["circuit_force_open", "circuit_reset", "sign_in"]);
    assert_eq!(listed[0].event, event("alice", "circuit_force_open"));
    assert!(listed[2].event.actor.len() <= AUDIT_MAX_FIELD);
    assert!(listed[2].event.actor.chars().all(|c| c == 'é'));
    let age = SystemTime::now()
        .duration_since(listed[0].at)
        .unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(60), "written now: {age:?}");
    // Paged from a position.
    let page = b.list(Some(first), 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, second);

    // Retention: everything written before now goes.
    assert_eq!(
        a.prune(SystemTime::now() + Duration::from_secs(1))
            .await
            .unwrap(),
        3
    );
    assert!(a.list(None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_the_audit_log_never_skips_an_append_that_commits_late() {
    let db = TestDb::fresh();
    let log = PostgresAuditLog::new(&db.migrated().await);
    // Another instance's append, slow to commit: it takes the append lock and
    // its position, and commits a second later (as `append` does, by hand).
    let (server, name) = (db.server.clone(), db.name.clone());
    let slow = std::thread::spawn(move || {
        server.psql(
            &name,
            &format!(
                "BEGIN; SELECT pg_advisory_xact_lock({AUDIT_APPEND_LOCK}); \
                 INSERT INTO tower_llm_audit_log (actor, action, subject, detail) \
                 VALUES ('slow', 'sign_in', '', ''); SELECT pg_sleep(1); COMMIT;"
            ),
        )
    });
    let started = std::time::Instant::now();
    // A bigint advisory key shows as (classid, objid) = (high, low) halves.
    let held = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid::bigint = {} AND objid::bigint = {}",
        AUDIT_APPEND_LOCK >> 32,
        AUDIT_APPEND_LOCK & 0xffff_ffff
    );
    while db.server.psql(&db.name, &held) != "1" {
        assert!(started.elapsed() < Duration::from_secs(10), "no lock taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An append meanwhile takes the next position only once the slow one
    // committed, so a reader that sees it has seen the slow one.
    let event = AuditEvent {
        actor: "fast".into(),
        action: "circuit_reset".into(),
        subject: String::new(),
        detail: String::new(),
    };
    let fast = log.append(&event).await.unwrap();
    let page = log.list(None, 10).await.unwrap();
    let actors: Vec<&str> = page.iter().map(|e| e.event.actor.as_str()).collect();
    assert_eq!(actors, ["slow", "fast"]);
    assert_eq!(page[1].seq, fast);
    slow.join().unwrap();
    assert!(log.list(Some(fast), 10).await.unwrap().is_empty());
}
