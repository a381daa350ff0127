//! The store contract, run against every store; SQLite durability across reopen.
mod escalation_util;

use escalation_util::contract::{paging_contract, purge_contract, resolution_race, store_contract};
use tower_llm_resilience::escalation::MemoryStore;

#[tokio::test(start_paused = true)]
async fn memory_store_contract() {
    store_contract(&MemoryStore::new()).await;
    resolution_race(MemoryStore::new()).await;
    resolution_race(escalation_util::RacyStore::default()).await;
    paging_contract(&MemoryStore::new()).await;
    purge_contract(&MemoryStore::new()).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use bytes::Bytes;
    use tower::Layer;
    use tower_llm_resilience::escalation::{
        AuditAction, EscalationLayer, Handle, RequestPredicate, SqliteStore, Status,
    };

    use super::escalation_util::*;
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sqlite_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        store_contract(&SqliteStore::open(dir.path().join("contract.db")).unwrap()).await;
        store_contract(&SqliteStore::open_in_memory().unwrap()).await;
        resolution_race(SqliteStore::open(dir.path().join("race.db")).unwrap()).await;
        paging_contract(&SqliteStore::open(dir.path().join("paging.db")).unwrap()).await;
        purge_contract(&SqliteStore::open(dir.path().join("purge.db")).unwrap()).await;
    }

    /// A stored record that can no longer be read back (written by an older
    /// version, or damaged) is skipped: every other record stays listed,
    /// countable and resolvable, before and after a restart.
    #[tokio::test(start_paused = true)]
    async fn an_unreadable_record_is_skipped_not_fatal() {
        use super::escalation_util::contract::record;
        use tower_llm_resilience::escalation::{Decision, EscalationStore};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poisoned.db");
        let store = SqliteStore::open(&path).unwrap();
        let ids = ["esc_1", "esc_2", "esc_3"];
        let now = tower_llm_resilience::escalation::store::to_unix_ms(std::time::SystemTime::now());
        for (i, id) in ids.iter().enumerate() {
            let r = record(id, now + i as u64);
            store
                .insert(r.clone(), super::escalation_util::contract::created(&r))
                .await
                .unwrap();
        }
        // What a record nested ~130 levels deep looked like before snapshots
        // were bounded: valid JSON that serde_json refuses to read back.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute(
            "UPDATE escalations SET record = json_set(record, '$.request.body', json(?1)) WHERE id = 'esc_2'",
            [deep],
        )
        .unwrap();
        drop(raw);
        for store in [store, SqliteStore::open(&path).unwrap()] {
            let handle = Handle::new(store.clone());
            let listed: Vec<String> = store
                .list(None)
                .await
                .unwrap()
                .iter()
                .map(|r| r.id.to_string())
                .collect();
            assert_eq!(listed, ["esc_1", "esc_3"]);
            let page = store.list_page(None, None, 10).await.unwrap();
            assert_eq!((page.records.len(), page.unreadable), (2, 1));
            assert_eq!(store.count(Status::Pending).await.unwrap(), 3);
            assert!(handle.get(&"esc_2".parse_id()).await.is_err());
        }
        let handle = Handle::new(SqliteStore::open(&path).unwrap());
        handle
            .resolve(&"esc_3".parse_id(), "alice", Decision::Approve)
            .await
            .unwrap();
        assert_eq!(handle.list_pending().await.unwrap().len(), 1);
    }

    trait ParseId {
        fn parse_id(&self) -> tower_llm_resilience::escalation::EscalationId;
    }

    impl ParseId for str {
        fn parse_id(&self) -> tower_llm_resilience::escalation::EscalationId {
            tower_llm_resilience::escalation::EscalationId::new(self)
        }
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
