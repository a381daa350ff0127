//! The store contract, run against every store; SQLite durability across reopen.
mod escalation_util;

use std::time::{Duration, SystemTime};

use serde_json::json;
use tower_llm_resilience::escalation::{
    to_unix_ms, AuditAction, AuditEntry, Decision, EscalationId, EscalationRecord, EscalationStore,
    Handle, MemoryStore, Resolution, ResolveError, Status, StoreError, Update,
};

fn record(id: &str, created_ms: u64) -> EscalationRecord {
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

fn created(record: &EscalationRecord) -> AuditEntry {
    AuditEntry::new(
        record.id.clone(),
        record.created_at,
        "system",
        AuditAction::Created {
            reason: record.reason.clone(),
        },
    )
}

fn resolved(
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

async fn store_contract(store: &dyn EscalationStore) {
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
async fn resolution_race(store: impl EscalationStore) {
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

#[tokio::test(start_paused = true)]
async fn memory_store_contract() {
    store_contract(&MemoryStore::new()).await;
    resolution_race(MemoryStore::new()).await;
    resolution_race(escalation_util::RacyStore::default()).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::sync::atomic::Ordering;

    use bytes::Bytes;
    use tower::Layer;
    use tower_llm_resilience::escalation::{EscalationLayer, RequestPredicate, SqliteStore};

    use super::escalation_util::*;
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sqlite_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        store_contract(&SqliteStore::open(dir.path().join("contract.db")).unwrap()).await;
        store_contract(&SqliteStore::open_in_memory().unwrap()).await;
        resolution_race(SqliteStore::open(dir.path().join("race.db")).unwrap()).await;
    }

    fn gate() -> RequestPredicate<fn(&http::Request<Bytes>) -> bool> {
        RequestPredicate::new("needs approval", |req: &http::Request<Bytes>| {
            req.uri().path() == "/act"
        })
    }

    #[tokio::test(start_paused = true)]
    async fn pending_escalations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("escalations.db");

        // Process one: escalate twice, then go away.
        let (first, second) = {
            let layer = EscalationLayer::builder(gate())
                .store(SqliteStore::open(&path).unwrap())
                .detach(Duration::from_secs(3600))
                .build()
                .unwrap();
            let (inner, _) = llm("{}");
            let mut svc = layer.layer(inner);
            let first = escalated(send(&mut svc, chat_request("/act")).await.unwrap_err());
            let second = escalated(send(&mut svc, chat_request("/act")).await.unwrap_err());
            (first, second)
        };

        // Process two: same file, fresh everything.
        let layer = EscalationLayer::builder(gate())
            .store(SqliteStore::open(&path).unwrap())
            .detach(Duration::from_secs(3600))
            .build()
            .unwrap();
        let handle = layer.handle();
        let (inner, calls) = llm("{\"acted\":true}");
        let mut svc = layer.layer(inner);

        let pending = handle.list_pending().await.unwrap();
        let mut pending_ids: Vec<_> = pending.iter().map(|r| r.id.clone()).collect();
        pending_ids.sort();
        let mut expected = vec![first.id.clone(), second.id.clone()];
        expected.sort();
        assert_eq!(pending_ids, expected);
        assert!(!serde_json::to_string(&pending).unwrap().contains(API_KEY));
        assert_eq!(pending[0].request["body"]["model"], "gpt-test");

        handle.approve(&first.id, "alice").await.unwrap();
        let response = send(
            &mut svc,
            with_header_token(chat_request("/act"), &first.token),
        )
        .await
        .unwrap();
        assert!(std::str::from_utf8(response.body())
            .unwrap()
            .contains("acted"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        handle
            .reject(&second.id, "alice", "not today")
            .await
            .unwrap();
        let error = send(
            &mut svc,
            with_header_token(chat_request("/act"), &second.token),
        )
        .await
        .unwrap_err();
        assert!(matches!(
            escalation_error(&error),
            tower_llm_resilience::escalation::EscalationError::Rejected { .. }
        ));
        drop((svc, layer, handle));

        // Process three: the outcome and the audit trail are on disk.
        let handle = Handle::new(SqliteStore::open(&path).unwrap());
        assert!(handle.list_pending().await.unwrap().is_empty());
        let record = handle.get(&first.id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Approved);
        assert!(record.used_at.is_some());
        let actions: Vec<_> = handle
            .audit(Some(&first.id))
            .await
            .unwrap()
            .into_iter()
            .map(|e| match e.action {
                AuditAction::Created { .. } => "created",
                AuditAction::Resolved { .. } => "resolved",
                AuditAction::Resumed => "resumed",
                _ => "other",
            })
            .collect();
        assert_eq!(actions, ["created", "resolved", "resumed"]);
    }
}
