//! No secret or prompt reaches a stored snapshot, the audit trail, or a log line.
//!
//! In its own test binary: it installs a thread-local `tracing` subscriber, and
//! `tracing` caches per-callsite interest process-wide, so a test running on another
//! thread at the same moment can register a callsite as "never interested" and hide
//! this test's events (a known race of scoped subscribers).
mod escalation_util;

use escalation_util::*;
use tower::Layer;
use tower_llm_resilience::escalation::EscalationLayer;

#[tokio::test(start_paused = true)]
async fn no_secret_or_prompt_in_snapshots_or_logs() {
    let logs = CapturedLogs::default();
    let _guard = tracing::subscriber::set_default(logs.clone());

    let layer = EscalationLayer::builder(form_gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, _) = llm("{}");
    let mut svc = layer.layer(inner);
    let escalated = escalated(send(&mut svc, chat_request("/forms")).await.unwrap_err());
    handle
        .answer(&escalated.id, "frank", serde_json::json!("done"))
        .await
        .unwrap();
    send(
        &mut svc,
        with_header_token(chat_request("/forms"), &escalated.token),
    )
    .await
    .unwrap();

    let record = handle.get(&escalated.id).await.unwrap().unwrap();
    let stored = serde_json::to_string(&record).unwrap();
    assert!(!stored.contains(API_KEY), "{stored}");
    assert!(!stored.contains(escalated.token.expose()));
    assert!(record.request["headers"].get("authorization").is_none());
    assert!(record.request["headers"].get("x-api-key").is_none());
    assert_eq!(
        record.request["headers"]["content-type"],
        "application/json"
    );
    assert_eq!(record.request["body"]["messages"][0]["content"], PROMPT);
    let audit = serde_json::to_string(&handle.audit(None).await.unwrap()).unwrap();
    assert!(!audit.contains(API_KEY) && !audit.contains(escalated.token.expose()));

    let text = logs.text();
    assert!(text.contains("escalated to a human"), "{text}");
    // The stage and mode are named in the event (and the metrics labels).
    assert!(text.contains(r#"stage="request""#), "{text}");
    assert!(text.contains(r#"mode="detach""#), "{text}");
    assert!(text.contains(escalated.id.as_str()));
    assert!(!text.contains(API_KEY));
    assert!(!text.contains("PROMPT-TEXT"));
    assert!(!text.contains(escalated.token.expose()));
    assert!(!format!("{escalated:?}").contains(escalated.token.expose()));
}
