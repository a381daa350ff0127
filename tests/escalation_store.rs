//! The store contract, run against every store; SQLite durability across reopen.
mod escalation_util;

use escalation_util::contract::{resolution_race, store_contract};
use tower_llm_resilience::escalation::MemoryStore;

#[tokio::test(start_paused = true)]
async fn memory_store_contract() {
    store_contract(&MemoryStore::new()).await;
    resolution_race(MemoryStore::new()).await;
    resolution_race(escalation_util::RacyStore::default()).await;
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
