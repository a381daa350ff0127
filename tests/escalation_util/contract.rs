//! The escalation store contract, as functions every store's tests run.

use std::time::{Duration, SystemTime};

use serde_json::json;
use tower_llm_resilience::escalation::store::{to_unix_ms, Update};
use tower_llm_resilience::escalation::{
    AuditAction, AuditEntry, Decision, EscalationId, EscalationRecord, EscalationStore, Handle,
    Resolution, ResolveError, Status, StoreError,
};

pub fn record(id: &str, created_ms: u64) -> EscalationRecord {
    serde_json::from_value(json!({
        "id": id,
        "version": 0,
        "stage": "request",
        "mode": "detach",
        "reason": "needs a human",
        "request": {"method": "POST", "body": {"n": 1}},
        "result": null,
        "created_at": created_ms,
        "expires_at": created_ms + 3_600_000,
        "status": "pending",
        "resolution": null,
        "token_hash": "00".repeat(32),
        "used_at": null,
        "notification": {"attempts": 0, "delivered": null, "last_error": null}
    }))
    .expect("a valid record")
}

pub fn created(record: &EscalationRecord) -> AuditEntry {
    AuditEntry::new(
        record.id.clone(),
        record.created_at,
        "system",
        AuditAction::Created {
            reason: record.reason.clone(),
        },
    )
}

pub fn resolved(
    record: &EscalationRecord,
    by: &str,
    decision: Decision,
) -> (EscalationRecord, AuditEntry) {
    let resolution = Resolution {
        decision: decision.clone(),
        resolved_by: by.into(),
        resolved_at: record.created_at + Duration::from_secs(1),
    };
    let mut next = record.clone();
    next.version += 1;
    next.status = decision.status();
    next.resolution = Some(resolution.clone());
    let audit = AuditEntry::new(
        record.id.clone(),
        resolution.resolved_at,
        by,
        AuditAction::Resolved { resolution },
    );
    (next, audit)
}

fn ids(records: &[EscalationRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

pub async fn store_contract(store: &dyn EscalationStore) {
    let a = record("esc_a", 1_700_000_002_000);
    let b = record("esc_b", 1_700_000_001_000);
    store.insert(a.clone(), created(&a)).await.unwrap();
    store.insert(b.clone(), created(&b)).await.unwrap();
    assert!(matches!(
        store.insert(a.clone(), created(&a)).await,
        Err(StoreError::Duplicate(id)) if id == a.id
    ));
    assert_eq!(store.get(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(
        store.get(&EscalationId::new("esc_none")).await.unwrap(),
        None
    );
    assert_eq!(ids(&store.list(None).await.unwrap()), ["esc_b", "esc_a"]);
    assert_eq!(
        ids(&store.list(Some(Status::Pending)).await.unwrap()),
        ["esc_b", "esc_a"]
    );
    assert!(store.list(Some(Status::Approved)).await.unwrap().is_empty());

    // Compare-and-swap on the version.
    let (approved, approved_audit) = resolved(&a, "alice", Decision::Approve);
    assert_eq!(
        store
            .update(0, approved.clone(), approved_audit.clone())
            .await
            .unwrap(),
        Update::Applied
    );
    assert_eq!(store.get(&a.id).await.unwrap(), Some(approved.clone()));
    let (rejected, rejected_audit) = resolved(
        &a,
        "bob",
        Decision::Reject {
            reason: "no".into(),
        },
    );
    assert_eq!(
        store.update(0, rejected, rejected_audit).await.unwrap(),
        Update::Conflict(Some(Box::new(approved.clone())))
    );
    let ghost = record("esc_ghost", 1_700_000_000_000);
    assert_eq!(
        store
            .update(0, ghost.clone(), created(&ghost))
            .await
            .unwrap(),
        Update::Conflict(None)
    );
    assert_eq!(
        ids(&store.list(Some(Status::Approved)).await.unwrap()),
        ["esc_a"]
    );
    assert_eq!(
        ids(&store.list(Some(Status::Pending)).await.unwrap()),
        ["esc_b"]
    );

    // The audit trail: in order, per escalation, nothing from refused updates.
    assert_eq!(
        store.audit(Some(&a.id)).await.unwrap(),
        vec![created(&a), approved_audit]
    );
    assert_eq!(store.audit(None).await.unwrap().len(), 3);

    // Two updates from the same version: exactly one is applied.
    let (x, x_audit) = resolved(&b, "x", Decision::Approve);
    let (y, y_audit) = resolved(
        &b,
        "y",
        Decision::Answer {
            payload: json!({"v": 1}),
        },
    );
    let (rx, ry) = tokio::join!(store.update(0, x, x_audit), store.update(0, y, y_audit));
    let applied = [rx.unwrap(), ry.unwrap()]
        .iter()
        .filter(|u| **u == Update::Applied)
        .count();
    assert_eq!(applied, 1);
    assert_eq!(store.audit(Some(&b.id)).await.unwrap().len(), 2);
    assert_eq!(store.get(&b.id).await.unwrap().unwrap().version, 1);
}

/// Through a `Handle`: concurrent resolutions, exactly one wins.
pub async fn resolution_race(store: impl EscalationStore) {
    let handle = Handle::new(store);
    let pending = record("esc_race", to_unix_ms(SystemTime::now()));
    handle
        .store()
        .insert(pending.clone(), created(&pending))
        .await
        .unwrap();
    let (a, b, c) = tokio::join!(
        handle.approve(&pending.id, "a"),
        handle.reject(&pending.id, "b", "no"),
        handle.answer(&pending.id, "c", json!(3)),
    );
    let wins = [a.is_ok(), b.is_ok(), c.is_ok()]
        .iter()
        .filter(|ok| **ok)
        .count();
    assert_eq!(wins, 1, "{a:?} {b:?} {c:?}");
    for loser in [a, b, c].into_iter().filter(Result::is_err) {
        assert!(matches!(loser, Err(ResolveError::AlreadyResolved(_))));
    }
    let audit = handle.audit(Some(&pending.id)).await.unwrap();
    let resolutions = audit
        .iter()
        .filter(|e| matches!(e.action, AuditAction::Resolved { .. }))
        .count();
    assert_eq!(resolutions, 1);
}

/// Paging and counting: every store. `list_page` visits each record once, in
/// `list` order, `limit` at a time; `count` agrees with `list`.
pub async fn paging_contract(store: &dyn EscalationStore) {
    use tower_llm_resilience::escalation::Cursor;
    // Two share a creation time: the id breaks the tie.
    let records = [
        record("esc_p3", 1_700_000_003_000),
        record("esc_p1", 1_700_000_001_000),
        record("esc_p2b", 1_700_000_002_000),
        record("esc_p2a", 1_700_000_002_000),
        record("esc_p4", 1_700_000_004_000),
    ];
    for r in &records {
        store.insert(r.clone(), created(r)).await.unwrap();
    }
    let (approved, audit) = resolved(&records[0], "alice", Decision::Approve);
    store.update(0, approved, audit).await.unwrap();
    let order = ["esc_p1", "esc_p2a", "esc_p2b", "esc_p3", "esc_p4"];
    for limit in [1, 2, 3, 5, 10] {
        let mut seen = Vec::new();
        let mut after: Option<Cursor> = None;
        loop {
            let page = store.list_page(None, after.take(), limit).await.unwrap();
            assert!(page.records.len() <= limit);
            assert_eq!(page.unreadable, 0);
            seen.extend(page.records.iter().map(|r| r.id.to_string()));
            match page.next {
                // The text form round-trips, as clients hand it back.
                Some(next) => after = Some(Cursor::parse(&next.to_string()).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, order, "limit {limit}");
    }
    let pending = store
        .list_page(Some(Status::Pending), None, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&pending.records),
        ["esc_p1", "esc_p2a", "esc_p2b", "esc_p4"]
    );
    assert_eq!(pending.next, None);
    assert_eq!(store.count(Status::Pending).await.unwrap(), 4);
    assert_eq!(store.count(Status::Approved).await.unwrap(), 1);
    assert_eq!(store.count(Status::Rejected).await.unwrap(), 0);
}

/// Retention: `purge` removes records created before a time, whatever their
/// status, with their audit trail; the others stay. For stores that purge.
pub async fn purge_contract(store: &dyn EscalationStore) {
    let old = record("esc_old", 1_700_000_001_000);
    let old_pending = record("esc_old_pending", 1_700_000_001_500);
    let new = record("esc_new", 1_700_000_009_000);
    for r in [&old, &old_pending, &new] {
        store.insert(r.clone(), created(r)).await.unwrap();
    }
    let (approved, audit) = resolved(&old, "alice", Decision::Approve);
    store.update(0, approved, audit).await.unwrap();
    let cutoff = tower_llm_resilience::escalation::store::from_unix_ms(1_700_000_005_000);
    assert_eq!(store.purge(cutoff).await.unwrap(), 2);
    assert_eq!(ids(&store.list(None).await.unwrap()), ["esc_new"]);
    assert!(store.audit(Some(&old.id)).await.unwrap().is_empty());
    assert_eq!(store.audit(Some(&new.id)).await.unwrap().len(), 1);
    assert_eq!(store.purge(cutoff).await.unwrap(), 0);
}
