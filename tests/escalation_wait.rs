//! Wait mode: the call waits for the human, up to a timeout.
mod escalation_util;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use escalation_util::*;
use serde_json::json;
use tower::Layer;
use tower_llm_resilience::escalation::{
    AuditAction, ContentFiltered, EscalationError, EscalationLayer, Handle, MemoryStore,
    RequestPredicate, Resolution, Stage, Status, TimeoutDefault,
};
use tower_llm_resilience::BoxError;

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn gate() -> RequestPredicate<fn(&http::Request<Bytes>) -> bool> {
    RequestPredicate::new("tool call needs approval", |req: &http::Request<Bytes>| {
        req.uri().path() == "/tools/transfer"
    })
}

/// Waits until exactly one escalation is pending and returns its id.
async fn pending_id(handle: &Handle) -> tower_llm_resilience::escalation::EscalationId {
    eventually("an escalation is pending", || {
        let handle = handle.clone();
        async move { !handle.list_pending().await.unwrap().is_empty() }
    })
    .await;
    handle.list_pending().await.unwrap()[0].id.clone()
}

#[tokio::test(start_paused = true)]
async fn human_answers_while_the_call_waits() {
    let layer = EscalationLayer::builder(gate())
        .wait(FIVE_MINUTES, TimeoutDefault::Reject)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{}");
    let mut svc = layer.layer(inner);
    let start = tokio::time::Instant::now();
    let call = spawn_call(&mut svc, chat_request("/tools/transfer")).await;

    let id = pending_id(&handle).await;
    handle
        .answer(&id, "alice", json!({"transfer": "denied, use the form"}))
        .await
        .unwrap();
    let response = call.await.unwrap().unwrap();
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body, json!({"transfer": "denied, use the form"}));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "woken at once, not at a poll"
    );
    assert_eq!(
        handle.get(&id).await.unwrap().unwrap().status,
        Status::Answered
    );
}

#[tokio::test(start_paused = true)]
async fn approval_calls_the_model_and_rejection_fails() {
    let layer = EscalationLayer::builder(gate())
        .wait(FIVE_MINUTES, TimeoutDefault::Reject)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{\"done\":1}");
    let svc = layer.layer(inner);

    let mut approved = svc.clone();
    let call = spawn_call(&mut approved, chat_request("/tools/transfer")).await;
    let id = pending_id(&handle).await;
    handle.approve(&id, "bob").await.unwrap();
    let response = call.await.unwrap().unwrap();
    assert!(std::str::from_utf8(response.body())
        .unwrap()
        .contains("done"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let mut rejected = svc.clone();
    let call = spawn_call(&mut rejected, chat_request("/tools/transfer")).await;
    let id = pending_id(&handle).await;
    handle.reject(&id, "bob", "too much money").await.unwrap();
    let error = call.await.unwrap().unwrap_err();
    match escalation_error(&error) {
        EscalationError::Rejected {
            reason,
            resolved_by,
            ..
        } => {
            assert_eq!(reason, "too much money");
            assert_eq!(resolved_by, "bob");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn timeout_with(
    default: TimeoutDefault,
) -> (Result<http::Response<Bytes>, BoxError>, usize, Handle) {
    let layer = EscalationLayer::builder(gate())
        .wait(FIVE_MINUTES, default)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{\"model\":true}");
    let mut svc = layer.layer(inner);
    let start = tokio::time::Instant::now();
    let result = send(&mut svc, chat_request("/tools/transfer")).await;
    assert_eq!(start.elapsed(), FIVE_MINUTES, "waited exactly the timeout");
    (result, calls.load(Ordering::SeqCst), handle)
}

async fn assert_timeout_recorded(handle: &Handle, status: Status) {
    let records = handle.list(None).await.unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.status, status);
    let resolution = record.resolution.as_ref().unwrap();
    assert_eq!(resolution.resolved_by, Resolution::TIMEOUT_DEFAULT);
    let audit = handle.audit(Some(&record.id)).await.unwrap();
    let defaults: Vec<_> = audit
        .iter()
        .filter(|e| matches!(&e.action, AuditAction::TimeoutDefault { resolution } if resolution.decision.status() == status))
        .collect();
    assert_eq!(defaults.len(), 1, "{audit:?}");
    assert_eq!(defaults[0].actor, Resolution::TIMEOUT_DEFAULT);
}

#[tokio::test(start_paused = true)]
async fn timeout_default_reject_is_applied_and_recorded() {
    let (result, calls, handle) = timeout_with(TimeoutDefault::Reject).await;
    let error = result.unwrap_err();
    match escalation_error(&error) {
        EscalationError::Rejected { resolved_by, .. } => {
            assert_eq!(resolved_by, Resolution::TIMEOUT_DEFAULT)
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(calls, 0);
    assert_timeout_recorded(&handle, Status::Rejected).await;
}

#[tokio::test(start_paused = true)]
async fn timeout_default_approve_and_answer() {
    let (result, calls, handle) = timeout_with(TimeoutDefault::Approve).await;
    assert!(std::str::from_utf8(result.unwrap().body())
        .unwrap()
        .contains("model"));
    assert_eq!(calls, 1);
    assert_timeout_recorded(&handle, Status::Approved).await;

    let (result, calls, handle) =
        timeout_with(TimeoutDefault::Answer(json!({"fallback": true}))).await;
    assert_eq!(result.unwrap().body().as_ref(), br#"{"fallback":true}"#);
    assert_eq!(calls, 0);
    assert_timeout_recorded(&handle, Status::Answered).await;
}

#[tokio::test(start_paused = true)]
async fn content_filtered_answer_is_reviewed() {
    let filtered = tower::service_fn(|_req: http::Request<Bytes>| async {
        let body =
            json!({"choices": [{"message": {"content": ""}, "finish_reason": "content_filter"}]});
        Ok::<_, BoxError>(http::Response::new(Bytes::from(body.to_string())))
    });
    let layer = EscalationLayer::builder(ContentFiltered)
        .wait(FIVE_MINUTES, TimeoutDefault::Reject)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(filtered);
    let call = spawn_call(&mut svc, chat_request("/v1/chat")).await;
    let id = pending_id(&handle).await;
    let record = handle.get(&id).await.unwrap().unwrap();
    assert_eq!(record.stage, Stage::Response);
    assert_eq!(
        record.result.as_ref().unwrap()["body"]["choices"][0]["finish_reason"],
        "content_filter"
    );
    handle.approve(&id, "moderator").await.unwrap();
    let response = call.await.unwrap().unwrap();
    assert!(std::str::from_utf8(response.body())
        .unwrap()
        .contains("content_filter"));
}

#[tokio::test(start_paused = true)]
async fn resolution_from_another_process_is_seen_at_the_next_poll() {
    let store = Arc::new(MemoryStore::new());
    let layer = EscalationLayer::builder(gate())
        .store(store.clone())
        .wait(FIVE_MINUTES, TimeoutDefault::Reject)
        .poll_interval(Duration::from_secs(2))
        .build()
        .unwrap();
    // A handle over the same store but not this layer's state, like a review tool
    // in another process: no in-process wake-up.
    let elsewhere = Handle::new(store);
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);
    let start = tokio::time::Instant::now();
    let call = spawn_call(&mut svc, chat_request("/tools/transfer")).await;
    let id = pending_id(&elsewhere).await;
    elsewhere.answer(&id, "remote", json!(1)).await.unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.body().as_ref(), b"1");
    // Seen at the first poll after the answer (2 s), not at once and not at timeout.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}
