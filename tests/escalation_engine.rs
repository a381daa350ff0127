//! The escalation engine's bookkeeping, seen through the public API: every change
//! of a record bumps its version once, expiry is written once, and several
//! detached escalations in flight at once each keep their own reviewed response.
mod escalation_util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use escalation_util::*;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::escalation::store::{StoreFuture, Update};
use tower_llm_resilience::escalation::{
    AuditAction, AuditEntry, Escalation, EscalationError, EscalationId, EscalationLayer,
    EscalationRecord, EscalationStore, Handle, HttpAdapter, InvalidJsonAnswer, MemoryStore,
    RequestPredicate, ResolveError, Status, TimeoutDefault,
};
use tower_llm_resilience::BoxError;

/// An LLM whose n-th answer (from 1) is `answer n`, never JSON, so every answer
/// is held for review by `InvalidJsonAnswer`.
fn numbered_llm() -> (Llm, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |_req: http::Request<Bytes>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let body = serde_json::json!({
            "choices": [{"message": {"role": "assistant", "content": format!("answer {n}")}}]
        })
        .to_string();
        async move { Ok::<_, BoxError>(http::Response::new(Bytes::from(body))) }
    });
    (BoxCloneService::new(service), calls)
}

/// A detach-mode layer (an hour) with `policy` over `inner`, and its handle.
fn detached<P>(policy: P, inner: Llm) -> (Handle, Escalation<Llm, P, HttpAdapter>) {
    let layer = EscalationLayer::builder(policy)
        .detach(HOUR)
        .build()
        .unwrap();
    (layer.handle(), layer.layer(inner))
}

/// Sends a gated request and polls the call until it waits for a human.
async fn waiting_call<S>(svc: &mut S) -> std::pin::Pin<Box<S::Future>>
where
    S: Service<http::Request<Bytes>, Response = http::Response<Bytes>, Error = BoxError>,
{
    let mut call = Box::pin(svc.ready().await.unwrap().call(chat_request("/tools")));
    assert!(
        tokio::time::timeout(Duration::from_millis(1), &mut call)
            .await
            .is_err(),
        "the call waits for a human"
    );
    call
}

fn content(response: &http::Response<Bytes>) -> String {
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn every_change_bumps_the_version_once() {
    let (inner, _) = llm("{}");
    let (handle, mut svc) = detached(form_gate(), inner);

    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    let version = |record: Option<_>| -> u64 {
        let record: tower_llm_resilience::escalation::EscalationRecord = record.unwrap();
        record.version
    };
    assert_eq!(version(handle.get(&escalated.id).await.unwrap()), 0);
    let approved = handle.approve(&escalated.id, "alice").await.unwrap();
    assert_eq!(approved.version, 1);
    assert_eq!(version(handle.get(&escalated.id).await.unwrap()), 1);
    send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap();
    let used = handle.get(&escalated.id).await.unwrap().unwrap();
    assert_eq!(used.version, 2, "redeeming is one more change");
    assert!(used.used_at.is_some());
    // A refused second use writes nothing.
    let again = send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        escalation_error(&again),
        EscalationError::AlreadyUsed { .. }
    ));
    assert_eq!(version(handle.get(&escalated.id).await.unwrap()), 2);
}

#[tokio::test(start_paused = true)]
async fn expiry_is_written_once_with_one_version_bump() {
    let (inner, calls) = llm("{}");
    let (handle, mut svc) = detached(form_gate(), inner);
    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());

    // Just before its expiry the record is still pending: nothing to expire.
    tokio::time::advance(HOUR - Duration::from_millis(1)).await;
    assert!(handle.expire_due().await.unwrap().is_empty());
    assert_eq!(
        handle.get(&escalated.id).await.unwrap().unwrap().status,
        Status::Pending
    );
    tokio::time::advance(Duration::from_millis(1)).await;

    // Resuming past the expiry: `Expired`, never `StillPending`, and written down.
    for _ in 0..2 {
        let error = send(
            &mut svc,
            with_header_token(chat_request("/forms"), &escalated.token),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(escalation_error(&error), EscalationError::Expired { id } if *id == escalated.id),
            "{error}"
        );
    }
    let record = handle.get(&escalated.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Expired);
    assert_eq!(record.version, 1, "expired once, however often it is read");
    let expiries = handle
        .audit(Some(&escalated.id))
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.action == AuditAction::Expired)
        .count();
    assert_eq!(expiries, 1);
    // Already expired: a sweep finds nothing more to do.
    assert!(handle.expire_due().await.unwrap().is_empty());
    // A human is too late too, and that writes nothing.
    assert!(matches!(
        handle.approve(&escalated.id, "late").await,
        Err(ResolveError::Expired(_))
    ));
    assert_eq!(handle.get(&escalated.id).await.unwrap().unwrap().version, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_sweep_expires_what_is_due_and_a_late_resolution_is_refused() {
    let (inner, _) = llm("{}");
    let (handle, mut svc) = detached(form_gate(), inner);
    let old = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    tokio::time::advance(HOUR / 2).await;
    let young = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    tokio::time::advance(HOUR / 2).await;

    assert_eq!(handle.expire_due().await.unwrap(), vec![old.id.clone()]);
    let record = handle.get(&old.id).await.unwrap().unwrap();
    assert_eq!((record.status, record.version), (Status::Expired, 1));
    let record = handle.get(&young.id).await.unwrap().unwrap();
    assert_eq!((record.status, record.version), (Status::Pending, 0));

    // Resolving a record whose expiry passed but that no sweep has written yet
    // writes the expiry and refuses.
    tokio::time::advance(HOUR / 2).await;
    assert!(matches!(
        handle.reject(&young.id, "bob", "too late").await,
        Err(ResolveError::Expired(id)) if id == young.id
    ));
    let record = handle.get(&young.id).await.unwrap().unwrap();
    assert_eq!((record.status, record.version), (Status::Expired, 1));
    assert!(record.resolution.is_none());
}

#[tokio::test(start_paused = true)]
async fn several_detached_reviews_in_flight_each_return_their_own_response() {
    let (inner, calls) = numbered_llm();
    let (handle, mut svc) = detached(InvalidJsonAnswer, inner);

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(escalated(
            send(&mut svc, chat_request("/v1/chat")).await.unwrap_err(),
        ));
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(handle.list_pending().await.unwrap().len(), 3);

    // Approved and resumed out of order: each token returns the response that was
    // reviewed under it, none is lost when a later one is held.
    for index in [2, 0, 1] {
        handle.approve(&held[index].id, "erin").await.unwrap();
        let response = send(
            &mut svc,
            with_header_token(chat_request("/v1/chat"), &held[index].token),
        )
        .await
        .unwrap();
        assert_eq!(content(&response), format!("answer {}", index + 1));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the reviewed responses, not new calls"
    );
}

#[tokio::test(start_paused = true)]
async fn a_response_held_past_its_expiry_is_dropped_for_later_ones() {
    let (inner, calls) = numbered_llm();
    let (handle, mut svc) = detached(InvalidJsonAnswer, inner);

    let first = escalated(send(&mut svc, chat_request("/v1/chat")).await.unwrap_err());
    tokio::time::advance(HOUR * 2).await;
    let second = escalated(send(&mut svc, chat_request("/v1/chat")).await.unwrap_err());
    // The first expired; its token is refused and says so.
    let error = send(
        &mut svc,
        with_header_token(chat_request("/v1/chat"), &first.token),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        escalation_error(&error),
        EscalationError::Expired { .. }
    ));
    // The second still returns its own reviewed response.
    handle.approve(&second.id, "erin").await.unwrap();
    let response = send(
        &mut svc,
        with_header_token(chat_request("/v1/chat"), &second.token),
    )
    .await
    .unwrap();
    assert_eq!(content(&response), "answer 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn debug_output_names_the_shared_state_without_secrets() {
    let layer = EscalationLayer::builder(form_gate())
        .review_url("https://review.example/escalations")
        .detach(HOUR)
        .build()
        .unwrap();
    let text = format!("{layer:?}");
    assert!(text.contains("MemoryStore"), "{text}");
    assert!(
        text.contains("https://review.example/escalations"),
        "{text}"
    );
}

/// A request gate, as `form_gate` builds one.
type Gate = RequestPredicate<fn(&http::Request<Bytes>) -> bool>;

fn tool_gate() -> Gate {
    RequestPredicate::new("tool call needs approval", |req: &http::Request<Bytes>| {
        req.uri().path() == "/tools"
    })
}

/// A wait-mode layer (an hour, then `on_timeout`) gating `/tools` over `inner`,
/// and its handle.
fn waiting(on_timeout: TimeoutDefault, inner: Llm) -> (Handle, Escalation<Llm, Gate, HttpAdapter>) {
    let layer = EscalationLayer::builder(tool_gate())
        .wait(HOUR, on_timeout)
        .build()
        .unwrap();
    (layer.handle(), layer.layer(inner))
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_went_away_refuses_a_late_approval_at_once() {
    let (inner, calls) = llm("{}");
    let (handle, mut svc) = waiting(TimeoutDefault::Reject, inner);
    let call = waiting_call(&mut svc).await;
    let id = handle.list_pending().await.unwrap()[0].id.clone();
    drop(call);
    // The record is being marked abandoned in the background; an approval that
    // lands meanwhile is refused, not applied to a call that will never run.
    assert!(matches!(
        handle.approve(&id, "late").await,
        Err(ResolveError::Abandoned(abandoned)) if abandoned == id
    ));
    eventually("the record is abandoned", || {
        let (handle, id) = (handle.clone(), id.clone());
        async move { handle.get(&id).await.unwrap().unwrap().status == Status::Abandoned }
    })
    .await;
    let record = handle.get(&id).await.unwrap().unwrap();
    assert!(record.resolution.is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_default_applies_after_another_process_wrote_the_expiry() {
    let store = Arc::new(MemoryStore::default());
    let layer = EscalationLayer::builder(tool_gate())
        .store(store.clone())
        .wait(HOUR, TimeoutDefault::Approve)
        .build()
        .unwrap();
    // Another process sharing the store, listing for its review page.
    let other = Handle::new(store.clone());
    let (inner, calls) = llm("{\"approved\":true}");
    let mut svc = layer.layer(inner);
    let call = waiting_call(&mut svc).await;
    let id = other.list_pending().await.unwrap()[0].id.clone();
    // The wait runs out; before the waiting call gets to run, the other process
    // lists and writes the expiry.
    tokio::time::advance(HOUR).await;
    assert!(other.list_pending().await.unwrap().is_empty());
    assert_eq!(
        other.get(&id).await.unwrap().unwrap().status,
        Status::Expired
    );
    // A human is too late: only the waiter's own default may still resolve it.
    assert!(matches!(
        other.approve(&id, "late").await,
        Err(ResolveError::Expired(_))
    ));
    // The waiting call still gets its configured default, and it is audited.
    let response = call.await.unwrap();
    assert!(std::str::from_utf8(response.body())
        .unwrap()
        .contains("approved"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let record = other.get(&id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Approved);
    assert_eq!(
        record.resolution.unwrap().resolved_by,
        tower_llm_resilience::escalation::Resolution::TIMEOUT_DEFAULT
    );
}

/// A store where every compare-and-swap loses to someone else.
#[derive(Debug, Default)]
struct AlwaysConflicting(MemoryStore);

impl EscalationStore for AlwaysConflicting {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        self.0.insert(record, audit)
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        self.0.get(id)
    }

    fn update(&self, _: u64, _: EscalationRecord, _: AuditEntry) -> StoreFuture<'_, Update> {
        Box::pin(std::future::ready(Ok(Update::Conflict(None))))
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        self.0.list(status)
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        self.0.audit(id)
    }
}

#[tokio::test(start_paused = true)]
async fn endless_conflicts_end_in_a_clear_store_error() {
    let layer = EscalationLayer::builder(form_gate())
        .store(AlwaysConflicting::default())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    match handle.approve(&escalated.id, "alice").await {
        Err(ResolveError::Store(error)) => {
            assert!(
                error.to_string().contains("too many concurrent changes"),
                "{error}"
            );
        }
        other => panic!("expected a store error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_listing_in_the_waiters_process_leaves_the_expiry_to_the_waiter() {
    let (inner, calls) = llm("{\"approved\":true}");
    let (handle, mut svc) = waiting(TimeoutDefault::Approve, inner);
    let call = waiting_call(&mut svc).await;
    let id = handle.list_pending().await.unwrap()[0].id.clone();
    tokio::time::advance(HOUR).await;
    // Due, so not listed as pending; but its waiter applies the default at this
    // very instant, so the listing writes nothing.
    assert!(handle.list_pending().await.unwrap().is_empty());
    let stored = handle.list(Some(Status::Pending)).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].version, 0);
    call.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let record = handle.get(&id).await.unwrap().unwrap();
    assert_eq!((record.status, record.version), (Status::Approved, 1));
    let actions: Vec<_> = handle
        .audit(Some(&id))
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert!(
        !actions.contains(&AuditAction::Expired),
        "no expiry written: {actions:?}"
    );
}
