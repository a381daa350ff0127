//! `GET /v1/admin/audit`: the operators' actions kept in PostgreSQL (see
//! [`crate::audit`]), oldest first, a page at a time.
//!
//! Query: `after` (a `seq` from a previous page; default the start), `limit`
//! (1 to 1000, default 100). Answer: `{"object": "list", "data": [{"seq",
//! "at", "actor", "action", "subject", "detail"}], "next_after"}` where
//! `next_after` is the last `seq` (pass it as `after` for the next page), or
//! `null` at the end. A proxy without `[state] postgres_url` keeps no table: a
//! 404 `no_audit_log` says where its actions are (its log).

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_llm_resilience::postgres::AUDIT_MAX_PAGE;

use crate::error::ApiError;
use crate::state::Shared;

pub(crate) fn routes() -> Router<Shared> {
    Router::new().route("/v1/admin/audit", get(list))
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

const DEFAULT_LIMIT: usize = 100;

async fn list(
    State(state): State<Shared>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let Some(log) = state.audit.log() else {
        return Err(ApiError::not_found(
            "no_audit_log",
            "this proxy keeps its audit trail in its log (target llm_proxy::audit); \
             the table is kept with [state] postgres_url",
        ));
    };
    let after = match page.after.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::bad_request("after: a seq from a previous page"))?,
        ),
    };
    let limit = match page.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=AUDIT_MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit: a number from 1 to {AUDIT_MAX_PAGE}"))
            })?,
    };
    let events = log
        .list(after, limit)
        .await
        .map_err(|e| ApiError::store_unavailable("audit", &e))?;
    let next_after = (events.len() == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    // A time humantime cannot print (past year 9999, set by hand) is skipped.
    let printable = |at: std::time::SystemTime| {
        at.duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() < 253_402_300_800)
    };
    let data: Vec<Value> = events
        .iter()
        .filter(|e| printable(e.at))
        .map(|e| {
            json!({
                "seq": e.seq,
                "at": humantime::format_rfc3339_millis(e.at).to_string(),
                "actor": e.event.actor,
                "action": e.event.action,
                "subject": e.event.subject,
                "detail": e.event.detail,
            })
        })
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "next_after": next_after}),
    ))
}
