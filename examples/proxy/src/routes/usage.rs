//! `GET /v1/usage` (a client key: its own usage) and `GET /v1/admin/usage`
//! (an admin: every client's, or one's with `client=`).
//!
//! Query: `from`, `to` (unix seconds or RFC 3339; default the last 30 days up
//! to now; `to` exclusive), `group_by` (a comma list of `client`, `model`,
//! `day`; default `client,model,day` for admins, `model,day` for clients).

use axum::extract::{Query, Request, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client_id::ClientId;
use crate::error::ApiError;
use crate::state::Shared;
use crate::usage;

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/usage", get(own))
        .route("/v1/admin/usage", get(all))
}

#[derive(Deserialize)]
struct UsageQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    client: Option<String>,
}

/// The default time range when `from` is not given.
const DEFAULT_RANGE_SECS: i64 = 30 * 24 * 3600;

async fn own(
    State(state): State<Shared>,
    Query(query): Query<UsageQuery>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let client = request
        .extensions()
        .get::<ClientId>()
        .map_or("-", ClientId::as_str)
        .to_owned();
    if query.client.is_some() {
        return Err(ApiError::bad_request(
            "client= is for admins; a client key sees its own usage",
        ));
    }
    answer(&state, &query, Some(client), "model,day").await
}

async fn all(
    State(state): State<Shared>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    let client = query.client.clone();
    answer(&state, &query, client, "client,model,day").await
}

async fn answer(
    state: &Shared,
    query: &UsageQuery,
    client: Option<String>,
    default_groups: &str,
) -> Result<Json<Value>, ApiError> {
    let Some(log) = &state.usage else {
        return Err(ApiError::not_found(
            "usage_disabled",
            "usage records are off ([usage] enabled = false)",
        ));
    };
    let now = usage::unix_now();
    let to = time_param("to", query.to.as_deref())?.unwrap_or(now.saturating_add(1));
    let from =
        time_param("from", query.from.as_deref())?.unwrap_or(to.saturating_sub(DEFAULT_RANGE_SECS));
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    let groups = query.group_by.as_deref().unwrap_or(default_groups);
    let (mut by_client, mut by_model, mut by_day) = (false, false, false);
    for name in groups.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "client" => by_client = true,
            "model" => by_model = true,
            "day" => by_day = true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "group_by: unknown group {other:?} (client, model, day)"
                )))
            }
        }
    }
    let (groups, totals, truncated) = log
        .query(usage::Query {
            from,
            to,
            client,
            by_client,
            by_model,
            by_day,
        })
        .await
        .map_err(|e| {
            ApiError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "usage_unavailable",
                format!("usage records cannot be read: {e}"),
            )
            .retry_after(std::time::Duration::from_secs(5))
        })?;
    Ok(Json(json!({
        "object": "usage",
        "from": from,
        "to": to,
        "groups": groups,
        "totals": totals,
        "truncated": truncated,
    })))
}

/// A time: unix seconds or RFC 3339.
fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if let Ok(seconds) = value.parse::<i64>() {
        return Ok(Some(seconds));
    }
    humantime::parse_rfc3339_weak(value)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} must be unix seconds or an RFC 3339 time, not {value:?}"
            ))
        })
}
