//! Asynchronous batches: `POST /v1/batch` with `Prefer: respond-async` (or a
//! JSONL body) submits the items as jobs for `llm-proxy worker` and answers
//! 202 at once; `GET /v1/batch/{id}` reports progress and the items' results.
//!
//! Needs `[state] redis_url` or `postgres_url` (the queue and the results live
//! there; see [`crate::jobs`]). A batch
//! id belongs to the client key that submitted it: another key neither reads
//! nor resubmits it (its same id is another batch). Submitting a batch again
//! pushes only the items that did not succeed; an item is known by its key.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde::Deserialize;
use serde_json::Value;
use tower_llm_resilience::jobs::{ItemState, JobStore, Progress};
use tower_llm_resilience::partial_batch::{ItemFailure, ItemOutcome};

use super::batch::{check_name, item_json};
use super::PathParam;
use crate::batch::ItemAnswer;
use crate::error::ApiError;
use crate::jobs::{JobRequest, Jobs};
use crate::state::{AppState, Shared};

/// The JSONL media type (one JSON value per line), in and out.
const JSONL: &str = "application/jsonl";
/// The longest a submission may take (registering and pushing its items).
const SUBMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Items per page of `GET /v1/batch/{id}`, by default and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Whether a `POST /v1/batch` asks for the asynchronous mode: `Prefer:
/// respond-async`, or a JSONL body (which has no other mode).
pub(crate) fn wants_async(headers: &HeaderMap) -> bool {
    let prefers = headers.get_all("prefer").iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("respond-async"))
        })
    });
    prefers || is_jsonl(headers.get(CONTENT_TYPE))
}

fn is_jsonl(value: Option<&HeaderValue>) -> bool {
    value.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let media = v.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case(JSONL) || media.eq_ignore_ascii_case("application/x-ndjson")
    })
}

#[derive(Deserialize)]
struct AsyncBody {
    #[serde(default)]
    batch_id: Option<String>,
    requests: Vec<AsyncEntry>,
}

#[derive(Deserialize)]
struct AsyncEntry {
    key: String,
    body: Value,
}

#[derive(Deserialize)]
struct SubmitQuery {
    #[serde(default)]
    batch_id: Option<String>,
}

/// The queue and store, or the 400 that says why there are none.
fn jobs_of(state: &AppState) -> Result<&Jobs, ApiError> {
    state.jobs.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "asynchronous batches need a shared queue: this proxy has no [state] \
             redis_url or postgres_url",
        )
    })
}

/// The batch as the store knows it: scoped to the client key, so another
/// client's same id is another batch.
fn scoped(headers: &HeaderMap, id: &str) -> String {
    let owner = crate::client_id::from_headers(headers);
    format!("{}/{id}", owner.as_deref().unwrap_or("anonymous"))
}

/// `POST /v1/batch` in asynchronous mode.
pub(crate) async fn submit(
    state: &AppState,
    client: &str,
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let jobs = jobs_of(state)?;
    let (max_items, max_bytes) = state.async_batch;
    let query: SubmitQuery = Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let bytes: Bytes = super::read_body(headers, body, max_bytes).await?;
    let (body_id, entries) = if is_jsonl(headers.get(CONTENT_TYPE)) {
        (None, parse_jsonl(&bytes, max_items)?)
    } else {
        let parsed: AsyncBody = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("malformed batch request: {e}")))?;
        (parsed.batch_id, parsed.requests)
    };
    drop(bytes);
    if entries.len() > max_items {
        return Err(ApiError::bad_request(format!(
            "an asynchronous batch may have at most {max_items} requests (batch.max_async_items)"
        )));
    }
    if entries.is_empty() {
        return Err(ApiError::bad_request("the batch has no requests"));
    }
    let id = match (query.batch_id, body_id) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "batch_id differs between the query and the body",
            ))
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => format!("b-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
    };
    let max_id = state.batch.max_id_bytes;
    check_name(&id, max_id).map_err(|why| ApiError::bad_request(format!("batch_id {why}")))?;
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let mut items = Vec::with_capacity(entries.len());
    for entry in entries {
        check_name(&entry.key, max_id)
            .map_err(|why| ApiError::bad_request(format!("the key of an item {why}")))?;
        if !seen.insert(entry.key.clone()) {
            return Err(ApiError::bad_request(format!(
                "the key {:?} is used twice in this batch",
                entry.key
            )));
        }
        // An item the worker cannot send (no model, unknown model, not a chat
        // request) is recorded there as a fatal bad request, as in-process.
        let model = entry.body["model"].as_str().unwrap_or("").to_owned();
        items.push((
            entry.key,
            JobRequest {
                client: client.to_owned(),
                model,
                body: entry.body,
            },
        ));
    }
    drop(seen);
    // Bounded as a whole: a store that stops answering mid-way is a 503, and
    // the items not pushed yet stay pending (submitting again pushes them).
    let store_id = jobs.batch_id(&scoped(headers, &id));
    let submitted = tokio::time::timeout(SUBMIT_TIMEOUT, jobs.submit(&store_id, items))
        .await
        .unwrap_or_else(|_| Err(format!("not submitted within {SUBMIT_TIMEOUT:?}")))
        .map_err(|e| ApiError::store_unavailable("batch queue", &e))?;
    state
        .recent_batches
        .record_submission(crate::dashboard::batches::AsyncSubmission {
            batch_id: id.clone(),
            client: client.to_owned(),
            pushed: submitted.pushed,
            already_done: submitted.already_done,
            running: submitted.running,
            submitted_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            store_id,
        });
    metrics::counter!("llm_proxy_batch_jobs_pushed_total").increment(submitted.pushed as u64);
    let status_url = format!("/v1/batch/{id}");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "object": "batch.job",
            "id": id,
            "status_url": status_url,
            "pushed": submitted.pushed,
            "already_done": submitted.already_done,
            "running": submitted.running,
        })),
    )
        .into_response();
    response.headers_mut().insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    if let Ok(location) = HeaderValue::try_from(status_url) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    Ok(response)
}

/// A JSONL body: one `{"key", "body"}` per line (blank lines skipped).
fn parse_jsonl(bytes: &[u8], max_items: usize) -> Result<Vec<AsyncEntry>, ApiError> {
    let mut entries = Vec::new();
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if entries.len() == max_items {
            return Err(ApiError::bad_request(format!(
                "an asynchronous batch may have at most {max_items} requests \
                 (batch.max_async_items)"
            )));
        }
        let entry: AsyncEntry = serde_json::from_slice(line).map_err(|e| {
            ApiError::bad_request(format!(
                "line {}: not a {{\"key\", \"body\"}} object: {e}",
                number + 1
            ))
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/batch/{id}`: progress and a page of items (`after`, `limit`), or
/// with `Accept: application/jsonl` every item, one per line.
pub(crate) async fn status(
    State(state): State<Shared>,
    PathParam(id): PathParam,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let jobs = jobs_of(&state)?;
    let query: StatusQuery = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let unknown = || ApiError::not_found("batch_not_found", "no such batch");
    if check_name(&id, state.batch.max_id_bytes).is_err() {
        return Err(unknown());
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    if let Some(after) = &query.after {
        check_name(after, state.batch.max_id_bytes)
            .map_err(|why| ApiError::bad_request(format!("after {why}")))?;
    }
    let batch = jobs.batch_id(&scoped(&headers, &id));
    let store = &jobs.store;
    let progress = store
        .progress(&batch)
        .await
        .map_err(|e| ApiError::store_unavailable("batch", &e))?
        .ok_or_else(unknown)?;
    if wants_jsonl(&headers) {
        return Ok(stream_items(store.clone(), batch, query.after));
    }
    let page = store
        .items(&batch, query.after.as_deref(), limit)
        .await
        .map_err(|e| ApiError::store_unavailable("batch", &e))?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|(key, item)| state_json(key, item))
        .collect();
    Ok(Json(serde_json::json!({
        "object": "batch.job",
        "id": id,
        "status": if progress.is_finished() { "completed" } else { "in_progress" },
        "progress": progress_json(&progress),
        "items": items,
        "next_after": page.next,
    }))
    .into_response())
}

fn wants_jsonl(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .any(|v| is_jsonl(Some(v)) || v.to_str().is_ok_and(|v| v.contains(JSONL)))
}

pub(crate) fn progress_json(progress: &Progress) -> Value {
    serde_json::json!({
        "total": progress.total,
        "done": progress.done,
        "failed": progress.failed,
        "pending": progress.pending,
        "in_flight": progress.in_flight,
    })
}

/// One stored item, in the in-process endpoint's item shape.
fn state_json(key: &str, item: &ItemState) -> Value {
    let outcome = match item {
        ItemState::Pending { .. } => ItemOutcome::InProgress { in_flight: false },
        ItemState::Running { .. } => ItemOutcome::InProgress { in_flight: true },
        ItemState::Done { response_json, .. } => {
            match serde_json::from_str::<ItemAnswer>(response_json) {
                Ok(answer) => ItemOutcome::Success(answer),
                Err(_) => unreadable(),
            }
        }
        ItemState::Failed { failure, .. } => ItemOutcome::Failed(failure.clone()),
        _ => unreadable(),
    };
    item_json(key, item.attempts(), false, &outcome)
}

/// A stored result that cannot be read back: reported as this item's failure,
/// never an error for the whole answer.
fn unreadable() -> ItemOutcome<ItemAnswer> {
    metrics::counter!("llm_proxy_batch_unreadable_results_total").increment(1);
    ItemOutcome::Failed(ItemFailure {
        kind: tower_llm_resilience::classify::FailureKind::InvalidResponse,
        message: "the stored result cannot be read back".into(),
        fatal: true,
    })
}

/// Every item of `batch`, one JSON per line, read from the store a page at a
/// time. A store error cuts the stream (the client sees a broken body, never
/// a short list that looks whole).
fn stream_items(store: Arc<dyn JobStore>, batch: String, after: Option<String>) -> Response {
    let pages = futures_util::stream::unfold(Some(after), move |cursor| {
        let (store, batch) = (store.clone(), batch.clone());
        async move {
            let after = cursor?;
            match store.items(&batch, after.as_deref(), MAX_PAGE).await {
                Ok(page) => {
                    let mut chunk = Vec::with_capacity(page.items.len() * 256);
                    for (key, item) in &page.items {
                        if serde_json::to_writer(&mut chunk, &state_json(key, item)).is_ok() {
                            chunk.push(b'\n');
                        }
                    }
                    let next = page.next.map(Some);
                    Some((
                        Ok::<_, tower_llm_resilience::BoxError>(Bytes::from(chunk)),
                        next,
                    ))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "batch items stream cut: store error");
                    Some((Err(e.into()), None))
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(pages));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSONL));
    response
}
