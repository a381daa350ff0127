//! `POST /v1/batch`: many chat requests in one, each reported on its own (see
//! [`crate::batch`] for how they run).
//!
//! ```json
//! {"batch_id": "nightly-42", "requests": [{"key": "a", "body": {"model": "smart", "messages": [...]}}]}
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest as _;
use tower::Service;
use tower_llm_resilience::partial_batch::{Batch, BatchError, BatchItem, ItemOutcome};
use tower_llm_resilience::usage::{TokenUsage, UsageReport};

use crate::batch::{ItemAnswer, ItemRequest};
use crate::client_id::ClientId;
use crate::dashboard::batches::BatchSummary;
use crate::error::ApiError;
use crate::state::Shared;
use crate::usage::Answered;

#[derive(Deserialize)]
struct BatchBody {
    #[serde(default)]
    batch_id: Option<String>,
    requests: Vec<BatchEntry>,
}

#[derive(Deserialize)]
struct BatchEntry {
    key: String,
    body: Box<serde_json::value::RawValue>,
}

/// `POST /v1/batch`.
///
/// With `[budgets]`, the batch is admitted (or refused) as one request before
/// any item runs; with `[usage]`, each item answered by an upstream in this
/// run is recorded (and charged) like a chat request.
pub(crate) async fn handler(
    State(state): State<Shared>,
    client: Option<Extension<ClientId>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let client: Arc<str> = client.map_or_else(|| "-".into(), |Extension(id)| id.as_str().into());
    if let Some(budgets) = &state.budgets {
        budgets.admit(&client).await?;
    }
    if super::batch_jobs::wants_async(&headers) {
        return super::batch_jobs::submit(&state, &client, &headers, &uri, body).await;
    }
    let bytes: Bytes = super::read_body(&headers, body, state.max_body).await?;
    let parsed: BatchBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed batch request: {e}")))?;
    if parsed.requests.len() > state.batch.max_items {
        return Err(ApiError::bad_request(format!(
            "a batch may have at most {} requests",
            state.batch.max_items
        )));
    }
    let max_id = state.batch.max_id_bytes;
    if let Some(id) = &parsed.batch_id {
        if let Err(why) = check_name(id, max_id) {
            return Err(ApiError::bad_request(format!("batch_id {why}")));
        }
    }
    // Each item is stored under its key and the digest of its request: a
    // changed request is a different item and runs again.
    let mut keys = HashMap::with_capacity(parsed.requests.len());
    // The model each stored key asked for (usage records name it).
    let mut models: HashMap<String, Arc<str>> = HashMap::new();
    let mut seen = std::collections::HashSet::with_capacity(parsed.requests.len());
    let mut items = Vec::with_capacity(parsed.requests.len());
    for entry in parsed.requests {
        if let Err(why) = check_name(&entry.key, max_id) {
            return Err(ApiError::bad_request(format!("the key of an item {why}")));
        }
        let body = entry.body.get().as_bytes();
        if !seen.insert(entry.key.clone()) {
            return Err(ApiError::bad_request(format!(
                "the key {:?} is used twice in this batch",
                entry.key
            )));
        }
        let stored_key = format!("{}#{}", entry.key, digest(body));
        keys.insert(stored_key.clone(), entry.key);
        let request = match super::chat::prepare(&state.models, body, true) {
            Ok((model, prepared)) => {
                if let Some(name) = model.name_header.as_ref().and_then(|h| h.to_str().ok()) {
                    models.insert(stored_key.clone(), name.into());
                }
                ItemRequest::Ready(Box::new(prepared.request))
            }
            Err(refused) => ItemRequest::Invalid(invalid_reason(refused.status()).into()),
        };
        items.push(BatchItem::new(stored_key, request));
    }
    let mut batch = Batch::new(items);
    if let Some(id) = &parsed.batch_id {
        // Scoped to the client key: another client's same batch_id is another
        // batch, and never sees these results.
        let owner = crate::client_id::from_headers(&headers);
        let owner = owner.as_deref().unwrap_or("anonymous");
        batch = batch.with_id(format!("{owner}/{id}"));
    }
    let running = {
        let mut service = state
            .batch
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        service.call(batch)
    };
    let report = match running.await {
        Ok(report) => report,
        Err(BatchError::DuplicateKey { key }) => {
            let key = keys.get(&key).unwrap_or(&key);
            return Err(ApiError::bad_request(format!(
                "the key {key:?} is used twice in this batch"
            )));
        }
        Err(BatchError::Store(e)) => return Err(ApiError::store_unavailable("batch", &e)),
        Err(e) => return Err(ApiError::internal("batch_failed", e.to_string())),
    };
    let items: Vec<Value> = report
        .items
        .iter()
        .map(|item| {
            let key = keys.get(&item.key).unwrap_or(&item.key);
            item_json(key, item.attempts, item.from_store, &item.outcome)
        })
        .collect();
    crate::metrics::record_batch(report.ok, report.failed, report.cached);
    if let Some(log) = &state.usage {
        for item in report.items.iter().filter(|item| !item.from_store) {
            if let ItemOutcome::Success(answer) = &item.outcome {
                let model = models.get(&item.key).cloned().unwrap_or_else(|| "-".into());
                let answered = Answered {
                    client: client.clone(),
                    model,
                    tier: answer.tier.as_str().into(),
                    cached: false,
                    degraded: answer.degraded,
                };
                log.record(&answered, usage_of(answer));
            }
        }
    }
    state.recent_batches.record(BatchSummary::finished_now(
        parsed.batch_id.clone(),
        client.to_string(),
        [
            items.len(),
            report.ok,
            report.failed,
            report.cached,
            report.unfinished,
        ],
        report.duration,
    ));
    Ok(Json(serde_json::json!({
        "object": "batch.report",
        "batch_id": parsed.batch_id,
        "ok": report.ok,
        "failed": report.failed,
        "cached": report.cached,
        "unfinished": report.unfinished,
        "duration_ms": report.duration.as_millis() as u64,
        "items": items,
    }))
    .into_response())
}

/// One item of a batch report, as the batch endpoints answer it (in-process
/// and asynchronous alike).
pub(crate) fn item_json(
    key: &str,
    attempts: u32,
    cached: bool,
    outcome: &ItemOutcome<ItemAnswer>,
) -> Value {
    let mut out = serde_json::json!({
        "key": key,
        "attempts": attempts,
        "cached": cached,
    });
    match outcome {
        ItemOutcome::Success(answer) => {
            out["status"] = "ok".into();
            out["tier"] = answer.tier.clone().into();
            out["degraded"] = answer.degraded.into();
            out["response"] = answer.response.clone();
        }
        ItemOutcome::Failed(failure) => {
            out["status"] = "failed".into();
            out["error"] = serde_json::json!({
                "type": failure.kind.name(),
                "message": failure.message,
                "fatal": failure.fatal,
            });
        }
        ItemOutcome::InProgress { in_flight } => {
            out["status"] = if *in_flight { "running" } else { "pending" }.into();
        }
        other => {
            out["status"] = if matches!(other, ItemOutcome::NotAttempted) {
                "not_attempted"
            } else {
                "timed_out"
            }
            .into();
        }
    }
    out
}

/// The model and tokens an item's answer reports.
pub(crate) fn usage_of(answer: &ItemAnswer) -> Option<UsageReport> {
    let tokens = TokenUsage::from_json(&answer.response)?;
    let model = answer.response["model"].as_str().unwrap_or("-");
    Some(UsageReport::new(model, tokens))
}

/// Why a `batch_id` or item key is refused, if it is.
pub(crate) fn check_name(name: &str, max_bytes: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max_bytes {
        return Err(format!(
            "must be 1 to {max_bytes} bytes long (batch.max_id_bytes), not {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err("may hold only letters, digits and - _ . :".into());
    }
    Ok(())
}

/// The first 16 hex characters of the SHA-256 of an item's request bytes.
fn digest(body: &[u8]) -> String {
    crate::client_id::hex16(&sha2::Sha256::digest(body))
}

pub(crate) fn invalid_reason(status: StatusCode) -> &'static str {
    if status == StatusCode::NOT_FOUND {
        "unknown model"
    } else {
        "malformed chat request (a JSON object with `model` and `messages` is needed)"
    }
}
