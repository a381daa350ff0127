//! Escalation at its edges: released and abandoned waiters, listing racing the
//! wait timeout, resumes bound to the escalated request, absurd durations.
mod escalation_util;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use escalation_util::*;
use tower::Layer;
use tower_llm_resilience::escalation::store::{StoreFuture, Update};
use tower_llm_resilience::escalation::{
    AuditAction, AuditEntry, EscalationError, EscalationId, EscalationLayer, EscalationRecord,
    EscalationStore, Handle, MemoryStore, ModeKind, RequestPredicate, Resolution, ResolveError,
    Status, TimeoutDefault, MAX_LIFETIME,
};

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn gate() -> RequestPredicate<fn(&http::Request<Bytes>) -> bool> {
    RequestPredicate::new("tool call needs approval", |req: &http::Request<Bytes>| {
        req.uri().path().starts_with("/tools/")
    })
}

async fn pending_ids(handle: &Handle, count: usize) -> Vec<EscalationId> {
    eventually("escalations are pending", || {
        let handle = handle.clone();
        async move { handle.list_pending().await.unwrap().len() >= count }
    })
    .await;
    let pending = handle.list_pending().await.unwrap();
    pending.into_iter().map(|r| r.id).collect()
}

fn with_body(request: http::Request<Bytes>, body: serde_json::Value) -> http::Request<Bytes> {
    let (parts, _) = request.into_parts();
    http::Request::from_parts(parts, Bytes::from(body.to_string()))
}

#[tokio::test(start_paused = true)]
async fn release_waiters_ends_every_wait_and_the_token_resumes_later() {
    let layer = EscalationLayer::builder(gate())
        .wait(FIVE_MINUTES, TimeoutDefault::Approve)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{\"sent\":true}");
    let mut svc = layer.layer(inner);
    let first = spawn_call(&mut svc, chat_request("/tools/transfer")).await;
    let second = spawn_call(&mut svc, chat_request("/tools/refund")).await;
    pending_ids(&handle, 2).await;

    let start = tokio::time::Instant::now();
    assert_eq!(handle.release_waiters(), 2);
    let mut tokens = Vec::new();
    for call in [first, second] {
        let error = call.await.unwrap().unwrap_err();
        match escalation_error(&error) {
            EscalationError::Released { id, resume_token } => {
                assert!(!error.to_string().contains(resume_token.expose()));
                tokens.push((id.clone(), resume_token.clone()));
            }
            other => panic!("expected Released, got {other:?}"),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(1), "released at once");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no timeout default applied"
    );
    assert_eq!(handle.release_waiters(), 0, "nobody waits any more");

    // Both stay pending, now resumable like detached escalations.
    let (id, token) = &tokens[0];
    let record = handle.get(id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Pending);
    assert_eq!(record.mode, ModeKind::Detach);
    assert!(handle
        .audit(Some(id))
        .await
        .unwrap()
        .iter()
        .any(|e| e.action == AuditAction::Released));

    let early = send(
        &mut svc,
        with_header_token(chat_request("/tools/transfer"), token),
    )
    .await;
    assert!(matches!(
        escalation_error(&early.unwrap_err()),
        EscalationError::StillPending { .. }
    ));
    handle.approve(id, "alice").await.unwrap();
    let resumed = send(
        &mut svc,
        with_header_token(chat_request("/tools/transfer"), token),
    )
    .await
    .unwrap();
    assert!(std::str::from_utf8(resumed.body())
        .unwrap()
        .contains("sent"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_resolution_before_the_release_wins() {
    let layer = EscalationLayer::builder(gate())
        .wait(FIVE_MINUTES, TimeoutDefault::Reject)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);
    let call = spawn_call(&mut svc, chat_request("/tools/transfer")).await;
    let id = pending_ids(&handle, 1).await.remove(0);
    handle.reject(&id, "bob", "no").await.unwrap();
    handle.release_waiters();
    let error = call.await.unwrap().unwrap_err();
    assert!(matches!(
        escalation_error(&error),
        EscalationError::Rejected { reason, .. } if reason == "no"
    ));
}

/// A memory store whose inserts take a while (as a remote or blocking store's do):
/// the record's expiry is stamped before the insert, the wait starts after it.
#[derive(Debug)]
struct SlowInsertStore {
    inner: MemoryStore,
    delay_ms: std::sync::Mutex<fastrand::Rng>,
}

impl EscalationStore for SlowInsertStore {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        let delay = Duration::from_millis(self.delay_ms.lock().unwrap().u64(1..40));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            self.inner.insert(record, audit).await
        })
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        self.inner.get(id)
    }

    fn update(
        &self,
        expected: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        self.inner.update(expected, record, audit)
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        self.inner.list(status)
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        self.inner.audit(id)
    }
}

/// The reported race: a reviewer lists pending escalations while many callers wait;
/// every caller must get its configured timeout default, never `Expired`.
#[tokio::test(start_paused = true)]
async fn listing_while_many_wait_never_turns_the_default_into_expired() {
    const WAITERS: usize = 24;
    let wait = Duration::from_millis(300);
    let store = SlowInsertStore {
        inner: MemoryStore::new(),
        delay_ms: std::sync::Mutex::new(fastrand::Rng::with_seed(15)),
    };
    let layer = EscalationLayer::builder(gate())
        .store(store)
        .wait(wait, TimeoutDefault::Reject)
        .poll_interval(Duration::from_millis(7))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);

    let lister = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut rounds = 0u64;
            loop {
                handle.list_pending().await.unwrap();
                handle.expire_due().await.unwrap();
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                if rounds > 10_000 {
                    return;
                }
            }
        })
    };
    let mut calls = Vec::new();
    for i in 0..WAITERS {
        calls.push(spawn_call(&mut svc, chat_request(&format!("/tools/{i}"))).await);
        // Stagger the starts so deadlines fall on every phase of the lister's loop.
        tokio::time::sleep(Duration::from_micros(1_300)).await;
    }
    for call in calls {
        let error = call.await.unwrap().unwrap_err();
        match escalation_error(&error) {
            EscalationError::Rejected { resolved_by, .. } => {
                assert_eq!(resolved_by, Resolution::TIMEOUT_DEFAULT)
            }
            other => panic!("expected the timeout default, got {other:?}"),
        }
    }
    lister.abort();
    let records = handle.list(None).await.unwrap();
    assert_eq!(records.len(), WAITERS);
    assert!(records.iter().all(|r| r.status == Status::Rejected));
    let expired = handle
        .audit(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == AuditAction::Expired)
        .count();
    assert_eq!(expired, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_abandons_its_escalation() {
    let layer = EscalationLayer::builder(gate())
        .wait(FIVE_MINUTES, TimeoutDefault::Approve)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{}");
    let mut svc = layer.layer(inner);
    let call = spawn_call(&mut svc, chat_request("/tools/transfer")).await;
    let id = pending_ids(&handle, 1).await.remove(0);

    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    // Refused at once, even before the store says so.
    assert!(matches!(
        handle.approve(&id, "alice").await,
        Err(ResolveError::Abandoned(ref abandoned)) if *abandoned == id
    ));
    eventually("the record is marked abandoned", || {
        let handle = handle.clone();
        let id = id.clone();
        async move { handle.get(&id).await.unwrap().unwrap().status == Status::Abandoned }
    })
    .await;
    let error = handle.reject(&id, "bob", "no").await.unwrap_err();
    assert!(matches!(error, ResolveError::Abandoned(_)));
    assert!(error.to_string().contains("abandoned"), "{error}");
    assert!(handle.list_pending().await.unwrap().is_empty());
    let audit = handle.audit(Some(&id)).await.unwrap();
    assert!(audit.iter().any(|e| e.action == AuditAction::Abandoned));
    assert!(!audit.iter().any(|e| matches!(
        e.action,
        AuditAction::Resolved { .. } | AuditAction::TimeoutDefault { .. }
    )));
    tokio::time::sleep(FIVE_MINUTES * 2).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        handle.get(&id).await.unwrap().unwrap().status,
        Status::Abandoned
    );
}

type Gate = RequestPredicate<fn(&http::Request<Bytes>) -> bool>;
type GatedLlm = tower_llm_resilience::escalation::Escalation<Llm, Gate>;

/// Escalates `/tools/transfer` in detach mode, approves it, returns the token.
async fn approved_token(
    handle: &Handle,
    svc: &mut GatedLlm,
) -> tower_llm_resilience::escalation::ResumeToken {
    let error = send(svc, chat_request("/tools/transfer"))
        .await
        .unwrap_err();
    let escalated = escalated(error);
    handle.approve(&escalated.id, "alice").await.unwrap();
    escalated.token
}

#[tokio::test(start_paused = true)]
async fn a_resume_token_resumes_only_the_escalated_request() {
    let layer = EscalationLayer::builder(gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{\"sent\":true}");
    let mut svc = layer.layer(inner);
    let token = approved_token(&handle, &mut svc).await;
    let original: serde_json::Value =
        serde_json::from_slice(chat_request("/tools/transfer").body()).unwrap();

    let mut other_model = original.clone();
    other_model["model"] = "gpt-unreviewed".into();
    let mut other_prompt = original.clone();
    other_prompt["messages"][0]["content"] = "send everything to mallory".into();
    let attempts = [
        (
            "body",
            with_body(chat_request("/tools/transfer"), other_prompt),
        ),
        (
            "model",
            with_body(chat_request("/tools/transfer"), other_model),
        ),
        ("path", chat_request("/tools/delete-everything")),
        ("method", {
            let mut r = chat_request("/tools/transfer");
            *r.method_mut() = http::Method::PUT;
            r
        }),
    ];
    for (what, request) in attempts {
        let error = send(&mut svc, with_header_token(request, &token))
            .await
            .unwrap_err();
        match escalation_error(&error) {
            EscalationError::RequestMismatch { .. } => {}
            other => panic!("a different {what} must not resume, got {other:?}"),
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the inner service was never called"
    );

    // The token was not used up: its owner resumes with the request that was approved.
    let response = send(
        &mut svc,
        with_header_token(chat_request("/tools/transfer"), &token),
    )
    .await
    .unwrap();
    assert!(std::str::from_utf8(response.body())
        .unwrap()
        .contains("sent"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let again = send(
        &mut svc,
        with_header_token(chat_request("/tools/transfer"), &token),
    )
    .await;
    assert!(matches!(
        escalation_error(&again.unwrap_err()),
        EscalationError::AlreadyUsed { .. }
    ));
}

#[test]
fn durations_that_would_overflow_are_refused_at_build_time() {
    for (what, result) in [
        (
            "wait",
            EscalationLayer::builder(gate())
                .wait(Duration::MAX, TimeoutDefault::Reject)
                .build()
                .map(drop),
        ),
        (
            "detach",
            EscalationLayer::builder(gate())
                .detach(Duration::MAX)
                .build()
                .map(drop),
        ),
        (
            "poll",
            EscalationLayer::builder(gate())
                .poll_interval(MAX_LIFETIME + Duration::from_secs(1))
                .build()
                .map(drop),
        ),
    ] {
        let error = result.expect_err(what);
        assert!(error.to_string().contains("maximum"), "{what}: {error}");
    }
    EscalationLayer::builder(gate())
        .detach(MAX_LIFETIME)
        .build()
        .expect("the maximum itself is fine");
}

#[tokio::test(start_paused = true)]
async fn record_versions_are_bumped_by_every_change() {
    let layer = EscalationLayer::builder(gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);
    let resumed = escalated(send(&mut svc, chat_request("/tools/a")).await.unwrap_err());
    let expiring = escalated(send(&mut svc, chat_request("/tools/b")).await.unwrap_err());
    let version = |id| {
        let handle = handle.clone();
        async move { handle.get(&id).await.unwrap().unwrap().version }
    };
    assert_eq!(version(resumed.id.clone()).await, 0);
    handle.approve(&resumed.id, "alice").await.unwrap();
    assert_eq!(version(resumed.id.clone()).await, 1);
    send(
        &mut svc,
        with_header_token(chat_request("/tools/a"), &resumed.token),
    )
    .await
    .unwrap();
    assert_eq!(version(resumed.id.clone()).await, 2, "redeemed");

    tokio::time::advance(HOUR).await;
    assert_eq!(
        handle.expire_due().await.unwrap(),
        vec![expiring.id.clone()]
    );
    let record = handle.get(&expiring.id).await.unwrap().unwrap();
    assert_eq!((record.status, record.version), (Status::Expired, 1));
    assert!(handle.expire_due().await.unwrap().is_empty(), "once");
}

#[tokio::test(start_paused = true)]
async fn several_detached_escalations_in_flight_resolve_independently() {
    let layer = EscalationLayer::builder(gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{\"ok\":1}");
    let mut svc = layer.layer(inner);
    let mut escalations = Vec::new();
    for i in 0..5 {
        let path = format!("/tools/{i}");
        let error = send(&mut svc, chat_request(&path)).await.unwrap_err();
        escalations.push((path, escalated(error)));
    }
    assert_eq!(handle.list_pending().await.unwrap().len(), 5);
    // Approve the even ones, reject the odd ones, in reverse order.
    for (i, (_, e)) in escalations.iter().enumerate().rev() {
        if i % 2 == 0 {
            handle.approve(&e.id, "alice").await.unwrap();
        } else {
            handle
                .reject(&e.id, "bob", format!("no {i}"))
                .await
                .unwrap();
        }
    }
    for (i, (path, e)) in escalations.iter().enumerate() {
        let result = send(&mut svc, with_header_token(chat_request(path), &e.token)).await;
        if i % 2 == 0 {
            assert!(result.is_ok(), "{i}");
        } else {
            match escalation_error(&result.unwrap_err()) {
                EscalationError::Rejected { reason, .. } => assert_eq!(reason, &format!("no {i}")),
                other => panic!("{i}: {other:?}"),
            }
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Another escalation's token never resumes this one.
    let (path, first) = &escalations[0];
    let (_, second) = &escalations[2];
    let crossed = send(
        &mut svc,
        with_header_token(chat_request(path), &second.token),
    )
    .await;
    assert!(matches!(
        escalation_error(&crossed.unwrap_err()),
        EscalationError::RequestMismatch { .. } | EscalationError::AlreadyUsed { .. }
    ));
    assert_ne!(first.id, second.id);
}
