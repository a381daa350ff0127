//! Detach mode: escalate at once with a token, resume later.
mod escalation_util;

use std::sync::atomic::Ordering;
use std::time::Duration;

use escalation_util::*;
use serde_json::json;
use tower::Layer;
use tower_llm_resilience::escalation::{
    AuditAction, EscalationError, EscalationLayer, InvalidJsonAnswer, ResolveError, ResumeToken,
    Status,
};

#[tokio::test(start_paused = true)]
async fn seed_scenario_escalate_answer_resume() {
    let layer = EscalationLayer::builder(form_gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{}");
    let mut svc = layer.layer(inner);

    // First call escalates and returns a token, without calling the model.
    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(escalated.reason, "ambiguous form needs a human");
    let pending = handle.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, escalated.id);

    // A human answers; resuming with the token returns the answer.
    handle
        .answer(&escalated.id, "alice", json!({"name": "Ada", "age": 36}))
        .await
        .unwrap();
    let response = send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body, json!({"name": "Ada", "age": 36}));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the answer replaces the model"
    );

    // A made-up token, and a real id with a made-up secret: both invalid.
    for fake in [
        "RESUME-123".to_string(),
        format!(
            "{}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            escalated.id
        ),
    ] {
        let error = send(
            &mut svc,
            with_header_token(chat_request("/forms"), &ResumeToken::from_string(fake)),
        )
        .await
        .unwrap_err();
        assert!(matches!(
            escalation_error(&error),
            EscalationError::InvalidToken
        ));
    }

    let record = handle.get(&escalated.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Answered);
    assert_eq!(record.resolution.unwrap().resolved_by, "alice");
    assert!(record.used_at.is_some());
}

#[tokio::test(start_paused = true)]
async fn still_pending_then_single_use() {
    let layer = EscalationLayer::builder(form_gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{\"ok\":true}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());

    let error = send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap_err();
    match escalation_error(&error) {
        EscalationError::StillPending { id, expires_at } => {
            assert_eq!(id, &escalated.id);
            assert_eq!(*expires_at, escalated.expires_at);
        }
        other => panic!("expected StillPending, got {other:?}"),
    }

    // Approving the gate: resuming (token as a request extension) calls the model.
    handle.approve(&escalated.id, "bob").await.unwrap();
    let mut request = chat_request("/forms");
    request.extensions_mut().insert(escalated.token.clone());
    let response = send(&mut svc, request).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(std::str::from_utf8(response.body()).unwrap().contains("ok"));

    let error = send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        escalation_error(&error),
        EscalationError::AlreadyUsed { .. }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let audit = handle.audit(Some(&escalated.id)).await.unwrap();
    let resumed = audit
        .iter()
        .filter(|e| e.action == AuditAction::Resumed)
        .count();
    assert_eq!(resumed, 1);
}

#[tokio::test(start_paused = true)]
async fn token_expires_with_paused_time() {
    let layer = EscalationLayer::builder(form_gate())
        .detach(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    let approved_late = escalated.clone();

    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(handle.list_pending().await.unwrap().len(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;

    let error = send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        escalation_error(&error),
        EscalationError::Expired { .. }
    ));
    assert!(handle.list_pending().await.unwrap().is_empty());
    assert!(matches!(
        handle.approve(&approved_late.id, "late").await,
        Err(ResolveError::Expired(_))
    ));
    let record = handle.get(&escalated.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Expired);
    let audit = handle.audit(Some(&escalated.id)).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == AuditAction::Expired)
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn approved_token_expires_too() {
    let layer = EscalationLayer::builder(form_gate())
        .detach(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    handle.approve(&escalated.id, "carol").await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    let error = send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        escalation_error(&error),
        EscalationError::Expired { .. }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn rejection_is_a_typed_error() {
    let layer = EscalationLayer::builder(form_gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    handle
        .reject(&escalated.id, "dave", "the form is a scam")
        .await
        .unwrap();
    let error = send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap_err();
    match escalation_error(&error) {
        EscalationError::Rejected {
            reason,
            resolved_by,
            ..
        } => {
            assert_eq!(reason, "the form is a scam");
            assert_eq!(resolved_by, "dave");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn reviewed_response_is_returned_on_approval() {
    let layer = EscalationLayer::builder(InvalidJsonAnswer)
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("Sorry, I cannot produce JSON today");
    let mut svc = layer.layer(inner);

    let escalated = escalated(send(&mut svc, chat_request("/v1/chat")).await.unwrap_err());
    let record = handle.get(&escalated.id).await.unwrap().unwrap();
    let result = record.result.expect("result snapshot");
    assert_eq!(
        result["body"]["choices"][0]["message"]["content"],
        "Sorry, I cannot produce JSON today"
    );
    assert_eq!(record.request["body"]["model"], "gpt-test");

    handle.approve(&escalated.id, "erin").await.unwrap();
    let response = send(
        &mut svc,
        with_header_token(chat_request("/v1/chat"), &escalated.token),
    )
    .await
    .unwrap();
    assert!(std::str::from_utf8(response.body())
        .unwrap()
        .contains("cannot produce JSON"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the reviewed response, not a new call"
    );
}

#[tokio::test(start_paused = true)]
async fn first_resolution_wins_and_races_have_one_winner() {
    let layer = EscalationLayer::builder(form_gate())
        .store(RacyStore::default())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);

    let first = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    handle.approve(&first.id, "a").await.unwrap();
    match handle.reject(&first.id, "b", "no").await {
        Err(ResolveError::AlreadyResolved(record)) => assert_eq!(record.status, Status::Approved),
        other => panic!("expected AlreadyResolved, got {other:?}"),
    }

    // Both resolvers read the pending record before either writes.
    let second = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    let (a, b) = tokio::join!(
        handle.approve(&second.id, "approver"),
        handle.reject(&second.id, "rejecter", "no")
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
    let loser = if a.is_ok() { b } else { a };
    assert!(matches!(loser, Err(ResolveError::AlreadyResolved(_))));
    let audit = handle.audit(Some(&second.id)).await.unwrap();
    let resolutions = audit
        .iter()
        .filter(|e| matches!(e.action, AuditAction::Resolved { .. }))
        .count();
    assert_eq!(resolutions, 1);

    // Two concurrent resumes with one token: exactly one gets through.
    let (mut svc1, mut svc2) = (svc.clone(), svc.clone());
    let (r1, r2) = tokio::join!(
        send(
            &mut svc1,
            with_header_token(chat_request("/forms"), &second.token)
        ),
        send(
            &mut svc2,
            with_header_token(chat_request("/forms"), &second.token)
        )
    );
    let outcomes = [r1, r2];
    let used = outcomes
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| matches!(escalation_error(e), EscalationError::AlreadyUsed { .. }))
        })
        .count();
    assert_eq!(used, 1, "{outcomes:?}");
}

#[tokio::test(start_paused = true)]
async fn requests_that_need_no_human_pass_through() {
    let layer = EscalationLayer::builder(form_gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, calls) = llm("{}");
    let mut svc = layer.layer(inner);
    send(&mut svc, chat_request("/v1/chat")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(handle.list(None).await.unwrap().is_empty());
}

#[test]
fn builders_validate() {
    assert!(EscalationLayer::builder(form_gate())
        .detach(Duration::ZERO)
        .build()
        .is_err());
    assert!(EscalationLayer::builder(form_gate())
        .review_url("not a url")
        .build()
        .is_err());
    assert!(EscalationLayer::builder(form_gate())
        .poll_interval(Duration::ZERO)
        .build()
        .is_err());
}
