//! The webhook notifier against a real receiver on 127.0.0.1.
#![cfg(feature = "reqwest")]
mod escalation_util;
mod support;

use std::time::Duration;

use bytes::Bytes;
use escalation_util::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{Reply, Upstream};
use tower::Layer;
use tower_llm_resilience::escalation::notify::{verify_signature, SIGNATURE_HEADER};
use tower_llm_resilience::escalation::{
    AuditAction, EscalationId, EscalationLayer, Handle, NotificationState, NotifyRetry,
    RequestPredicate, Status, WebhookNotifier,
};

const SECRET: &[u8] = b"webhook-shared-secret";
const HOUR: Duration = Duration::from_secs(3600);

type Gate = RequestPredicate<fn(&http::Request<Bytes>) -> bool>;

fn gate() -> Gate {
    RequestPredicate::new("refund needs approval", |req: &http::Request<Bytes>| {
        req.uri().path() == "/refund"
    })
}

fn layer_for(receiver: &Upstream, retry: NotifyRetry) -> EscalationLayer<Gate> {
    let notifier =
        WebhookNotifier::new(&format!("{}/hooks/escalations", receiver.url()), SECRET).unwrap();
    EscalationLayer::builder(gate())
        .notifier(notifier)
        .notify_retry(retry)
        .review_url("https://review.example/escalations")
        .detach(HOUR)
        .build()
        .unwrap()
}

async fn notification_settled(handle: &Handle, id: &EscalationId) -> NotificationState {
    eventually("the notification outcome is recorded", || async {
        let record = handle.get(id).await.unwrap().unwrap();
        record.notification.delivered.is_some()
    })
    .await;
    handle.get(id).await.unwrap().unwrap().notification
}

/// The expected signature, computed here independently of the library.
fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test(start_paused = true)]
async fn webhook_receives_a_signed_payload() {
    let receiver = Upstream::always(Reply::ok_json("{}")).await;
    let layer = layer_for(&receiver, NotifyRetry::default());
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/refund")).await.unwrap_err());

    let state = notification_settled(&handle, &escalated.id).await;
    assert_eq!(
        state,
        NotificationState {
            attempts: 1,
            delivered: Some(true),
            last_error: None
        }
    );
    assert_eq!(receiver.hits(), 1);

    let request = &receiver.requests()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/escalations");
    assert_eq!(request.headers["content-type"], "application/json");
    let signature = request.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert_eq!(signature, expected_signature(&request.body));
    assert!(verify_signature(SECRET, &request.body, signature));
    let mut tampered = request.body.to_vec();
    tampered[0] = b' ';
    assert!(!verify_signature(SECRET, &tampered, signature));

    let payload = request.json();
    let review_url = format!("https://review.example/escalations/{}", escalated.id);
    assert_eq!(payload["escalation_id"], escalated.id.as_str());
    assert_eq!(payload["reason"], "refund needs approval");
    assert_eq!(payload["stage"], "request");
    assert_eq!(
        payload["expires_at"],
        humantime::format_rfc3339_seconds(escalated.expires_at).to_string()
    );
    assert_eq!(payload["review_url"], review_url.as_str());
    let text = payload["text"].as_str().unwrap();
    assert!(
        text.contains("refund needs approval") && text.contains(&review_url),
        "{text}"
    );

    let raw = String::from_utf8_lossy(&request.body);
    assert!(!raw.contains(API_KEY));
    assert!(!raw.contains("PROMPT-TEXT"));
    assert!(!raw.contains(escalated.token.expose()));
    assert!(!raw.contains(std::str::from_utf8(SECRET).unwrap()));

    let audit = handle.audit(Some(&escalated.id)).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == AuditAction::NotificationDelivered { attempts: 1 }));
}

#[tokio::test(start_paused = true)]
async fn failing_receiver_is_retried_with_backoff() {
    let receiver = Upstream::sequence(vec![
        Reply::status(500, "{}"),
        Reply::status(500, "{}"),
        Reply::ok_json("{}"),
    ])
    .await;
    let retry = NotifyRetry::new(
        5,
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::from_secs(30),
    )
    .unwrap();
    let layer = layer_for(&receiver, retry);
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/refund")).await.unwrap_err());

    let state = notification_settled(&handle, &escalated.id).await;
    assert_eq!(state.attempts, 3);
    assert_eq!(state.delivered, Some(true));
    assert_eq!(receiver.hits(), 3);
    for request in receiver.requests() {
        assert_eq!(
            request.headers[SIGNATURE_HEADER].to_str().unwrap(),
            expected_signature(&request.body)
        );
    }

    // Backoff: 1 s after the first failure, 2 s after the second.
    let record = handle.get(&escalated.id).await.unwrap().unwrap();
    let audit = handle.audit(Some(&escalated.id)).await.unwrap();
    let delivered = audit
        .iter()
        .find(|e| e.action == AuditAction::NotificationDelivered { attempts: 3 })
        .expect("delivery recorded");
    let took = delivered.at.duration_since(record.created_at).unwrap();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_notification_never_loses_the_escalation() {
    let receiver = Upstream::always(Reply::status(503, "{\"error\":\"down\"}")).await;
    let retry = NotifyRetry::new(
        3,
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap();
    let layer = layer_for(&receiver, retry);
    let handle = layer.handle();
    let (inner, calls) = llm("{\"refunded\":true}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/refund")).await.unwrap_err());

    let state = notification_settled(&handle, &escalated.id).await;
    assert_eq!(state.attempts, 3);
    assert_eq!(state.delivered, Some(false));
    assert!(
        state.last_error.as_deref().unwrap().contains("503"),
        "{state:?}"
    );
    assert_eq!(receiver.hits(), 3);

    // Still pending, listed, with the failure visible in the audit trail.
    let pending = handle.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status, Status::Pending);
    assert_eq!(pending[0].notification.delivered, Some(false));
    let audit = handle.audit(Some(&escalated.id)).await.unwrap();
    assert!(audit.iter().any(|e| matches!(
        &e.action,
        AuditAction::NotificationFailed { attempts: 3, error } if error.contains("503")
    )));

    // And it can still be resolved and resumed.
    handle.approve(&escalated.id, "ops").await.unwrap();
    let response = send(
        &mut svc,
        with_header_token(chat_request("/refund"), &escalated.token),
    )
    .await
    .unwrap();
    assert!(std::str::from_utf8(response.body())
        .unwrap()
        .contains("refunded"));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn webhook_settings_are_validated() {
    assert!(WebhookNotifier::new("ftp://example.com/hook", SECRET).is_err());
    // Plain http only on loopback: elsewhere the payload and its signature
    // would cross the network readable and replayable.
    for url in [
        "http://hooks.example.com/hook",
        "http://10.0.0.5:8080/hook",
        "http://localhost.example.com/hook",
    ] {
        let e = WebhookNotifier::new(url, SECRET).unwrap_err();
        assert!(e.to_string().contains("https"), "{url}: {e}");
    }
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/hook",
        "http://[::1]:9000/hook",
    ] {
        assert!(WebhookNotifier::new(url, SECRET).is_ok(), "{url}");
    }
    assert!(WebhookNotifier::new("not a url", SECRET).is_err());
    assert!(WebhookNotifier::new("https://example.com/hook", Vec::new()).is_err());
    assert!(NotifyRetry::new(
        0,
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1)
    )
    .is_err());
    let notifier =
        WebhookNotifier::new("https://hooks.example.com/T000/B000/XXXX", SECRET).unwrap();
    let debug = format!("{notifier:?}");
    assert!(
        !debug.contains("webhook-shared-secret") && !debug.contains("XXXX"),
        "{debug}"
    );
}
