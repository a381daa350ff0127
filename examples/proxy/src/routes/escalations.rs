//! Escalations for humans: the admin API.
//!
//! - `GET /v1/escalations` (`?status=pending|approved|rejected|answered|expired|all`,
//!   default pending; `limit` 1 to 500, default 50; `cursor`: the `next_cursor` of
//!   the previous page), oldest first, one page at a time: `{"data": [...],
//!   "has_more", "next_cursor", "unreadable"}` (records that could not be read
//!   back are skipped and counted, never an error for the page);
//!   `GET /v1/escalations/{id}`,
//!   `POST /v1/escalations/{id}/resolve` with
//!   `{"decision": "approve"}`, `{"decision": "reject", "reason": "..."}` or
//!   `{"decision": "answer", "answer": "text or JSON"}` (optional `"by"`).
//!
//! Every route needs an admin key (bearer or the review page's cookie). The
//! review page itself is [`super::review`].

use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tower_llm_resilience::escalation::{
    Cursor, Decision, EscalationId, EscalationRecord, ResolveError, Status,
};

use super::PathParam;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::Shared;

/// The routes of this module.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/escalations", get(list))
        .route("/v1/escalations/{id}", get(one))
        .route("/v1/escalations/{id}/resolve", post(resolve))
}

/// An escalation as the API shows it: the record without its token hash, with
/// readable times, the client's model and the draft answer pulled out.
pub(crate) fn view(record: &EscalationRecord) -> Value {
    let mut out = serde_json::to_value(record).unwrap_or_default();
    if let Some(object) = out.as_object_mut() {
        object.remove("token_hash");
        object.insert("created_at".into(), rfc3339(record.created_at).into());
        object.insert("expires_at".into(), rfc3339(record.expires_at).into());
        let model = record
            .request
            .pointer("/headers/x-llm-proxy-model")
            .or_else(|| record.request.pointer("/body/model"))
            .cloned()
            .unwrap_or(Value::Null);
        object.insert("model".into(), model);
        let draft = record
            .result
            .as_ref()
            .and_then(|r| r.pointer("/body/choices/0/message/content"))
            .cloned()
            .unwrap_or(Value::Null);
        object.insert("draft_answer".into(), draft);
    }
    out
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

/// Records per page unless `limit` says otherwise.
pub(crate) const DEFAULT_PAGE: usize = 50;
/// The largest `limit`.
pub(crate) const MAX_PAGE: usize = 500;

async fn list(
    State(state): State<Shared>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match query.status.as_deref() {
        None | Some("pending") => Some(Status::Pending),
        Some("all") => None,
        Some(name) => match Status::parse(name) {
            Some(status) => Some(status),
            None => return Err(ApiError::bad_request(format!("unknown status {name:?}"))),
        },
    };
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_PAGE,
        Some(Ok(limit)) if (1..=MAX_PAGE).contains(&limit) => limit,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )))
        }
    };
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => match Cursor::parse(text) {
            Some(cursor) => Some(cursor),
            None => {
                return Err(ApiError::bad_request(
                    "cursor is not one this endpoint returned (use next_cursor)",
                ))
            }
        },
    };
    let store = state.pipeline.escalations.store();
    let page = store
        .list_page(status, after, limit)
        .await
        .map_err(|e| store_failed(&e))?;
    let now = std::time::SystemTime::now();
    let data: Vec<Value> = page
        .records
        .iter()
        // A pending record past its expiry is expired, whether or not it was
        // written down yet.
        .filter(|r| status != Some(Status::Pending) || r.status_at(now) == Status::Pending)
        .map(view)
        .collect();
    let mut body = serde_json::json!({
        "object": "list",
        "data": data,
        "has_more": page.next.is_some(),
        "next_cursor": page.next.as_ref().map(ToString::to_string),
        "unreadable": page.unreadable,
    });
    if status == Some(Status::Pending) {
        body["pending_total"] = state.pipeline.escalation_caps.pending().into();
    }
    Ok(Json(body))
}

fn store_failed(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::store_unavailable("escalation", e)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("escalation_not_found", format!("no escalation {id}"))
}

async fn one(
    State(state): State<Shared>,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
    match state
        .pipeline
        .escalations
        .get(&EscalationId::new(&id))
        .await
    {
        Ok(Some(record)) => Ok(Json(view(&record))),
        Ok(None) => Err(not_found(&id)),
        Err(e) => Err(store_failed(&e)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
enum ResolveBody {
    Approve {
        #[serde(default)]
        by: Option<String>,
    },
    Reject {
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        by: Option<String>,
    },
    Answer {
        answer: Value,
        #[serde(default)]
        by: Option<String>,
    },
}

fn reviewer(by: Option<String>) -> String {
    let name: String = by
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    if name.trim().is_empty() {
        "admin".into()
    } else {
        name
    }
}

async fn resolve(
    State(state): State<Shared>,
    Extension(admin): Extension<Admin>,
    headers: HeaderMap,
    PathParam(id): PathParam,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = super::read_body(&headers, body, state.max_body).await?;
    let parsed: ResolveBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"decision\": \"approve\" | \"reject\" | \"answer\", ...}}: {e}"
        ))
    })?;
    let (decision, by) = match parsed {
        ResolveBody::Approve { by } => (Decision::Approve, by),
        ResolveBody::Reject { reason, by } => (
            Decision::Reject {
                reason: reason
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| "rejected by a reviewer".into()),
            },
            by,
        ),
        ResolveBody::Answer { answer, by } => (Decision::Answer { payload: answer }, by),
    };
    let id = EscalationId::new(id);
    let resolved = state
        .pipeline
        .escalations
        .resolve(&id, &reviewer(by), decision)
        .await;
    match resolved {
        Ok(record) => {
            // The store's audit trail has the resolution under the reviewer's
            // name; this line ties it to the admin key that sent it.
            tracing::info!(
                target: "llm_proxy::audit",
                admin = %admin.admin_id,
                action = "resolve",
                escalation_id = %record.id,
                status = record.status.as_str(),
                "admin resolved an escalation"
            );
            state.audit.record(
                &admin.admin_id,
                "escalation_resolve",
                record.id.as_str(),
                serde_json::json!({"status": record.status.as_str()}).to_string(),
            );
            metrics::counter!("llm_proxy_escalations_resolved_total", "status" => record.status.as_str())
                .increment(1);
            Ok(Json(view(&record)))
        }
        Err(ResolveError::NotFound(id)) => Err(not_found(id.as_str())),
        Err(ResolveError::AlreadyResolved(record)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "already_resolved",
            format!(
                "escalation {} was already resolved ({})",
                record.id, record.status
            ),
        )),
        Err(ResolveError::Expired(id)) => Err(crate::error::escalation_expired(id)),
        Err(ResolveError::Abandoned(id)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "escalation_abandoned",
            format!(
                "the client waiting for escalation {id} went away: nobody would get the decision"
            ),
        )),
        Err(e) => Err(store_failed(&e)),
    }
}

/// RFC 3339 text, UTC, whole seconds.
fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
