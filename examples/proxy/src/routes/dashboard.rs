//! The operator dashboard and the admin endpoints behind it.
//!
//! - `GET /dashboard`: the page (an admin session; without one it shows the
//!   sign-in form, which comes back here). It polls the JSON endpoints every
//!   2 s: every circuit with its state, counts and the force open / force
//!   closed / reset buttons ([`super::circuits`]); per model the share of
//!   answers by tier and the degraded share over the last 5 minutes and hour,
//!   and failures by kind; pending escalations (linking to the review page,
//!   with their webhook notification's state);
//!   recent batches; usage and cost when `[usage]` is on. A form sends a test
//!   prompt. Its script and style are served from `/dashboard/dashboard.js`
//!   and `/dashboard/dashboard.css` (embedded in the binary), so its
//!   `Content-Security-Policy` allows no inline script or style at all.
//! - `GET /v1/admin/stats`: per model, the windowed answer statistics (see
//!   [`crate::dashboard::stats`]).
//! - `GET /v1/admin/batches`: the last batches' summaries, newest first (see
//!   [`crate::dashboard::batches`]).
//! - `POST /v1/admin/test-prompt` (`{"model": "...", "prompt": "..."}`): sends
//!   one user message through the model's normal pipeline (escalation rules,
//!   tiers, circuits, usage records; never the cache), as the admin, and
//!   answers which tier answered, whether it is degraded, the status and the
//!   answer's text (or the error's message).

use axum::body::Body;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{json, Value};

use super::chat::{DEGRADED_HEADER, TIER_HEADER};
use crate::auth::Admin;
use crate::cache::CACHE_HEADER;
use crate::client_id::ClientId;
use crate::dashboard::stats::{BUCKET, WINDOWS};
use crate::error::ApiError;
use crate::state::Shared;

const PAGE: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The most of a test prompt's answer read back (a longer one is reported as
/// too long to show).
const MAX_TEST_ANSWER_BYTES: usize = 1 << 20;

/// The routes of this module.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/dashboard.js", get(script))
        .route("/dashboard/dashboard.css", get(style))
        .route("/v1/admin/stats", get(stats))
        .route("/v1/admin/batches", get(batches))
        .route("/v1/admin/test-prompt", post(test_prompt))
}

/// The page and its assets load nothing from elsewhere and run no inline
/// script or style (see [`super::review::with_headers_of_admin_pages`] for the
/// rest: no framing, never cached).
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; \
     base-uri 'none'";

fn with_strict_headers(response: Response) -> Response {
    super::review::with_headers_of_admin_pages(response, DASHBOARD_CSP)
}

async fn page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    use super::review::{login_page_to, SignInTo};
    if state.admin_keys.is_empty() {
        return login_page_to(
            StatusCode::FORBIDDEN,
            "No admin key is configured ([auth] admin_keys): the dashboard is off.",
            SignInTo::Dashboard,
        );
    }
    if crate::auth::admin(&state, &headers).is_none() {
        return login_page_to(StatusCode::UNAUTHORIZED, "", SignInTo::Dashboard);
    }
    with_strict_headers(Html(PAGE).into_response())
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    with_strict_headers(response)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn stats(State(state): State<Shared>) -> Json<Value> {
    let mut names: Vec<_> = state.models.keys().collect();
    names.sort();
    let models: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let model = &state.models[name];
            json!({
                "model": &**name,
                "tiers": model.tiers,
                "windows": model.stats.report(),
            })
        })
        .collect();
    let windows: Vec<&str> = WINDOWS.iter().map(|(name, _)| *name).collect();
    Json(json!({
        "object": "stats",
        "bucket_secs": BUCKET.as_secs(),
        "windows": windows,
        "models": models,
    }))
}

/// How long listing reads the asynchronous batches' progress, in all.
const PROGRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn batches(State(state): State<Shared>) -> Json<Value> {
    // The asynchronous batches this proxy accepted, with their progress read
    // from the job store (at most RECENT_BATCHES reads, bounded together: a
    // slow store shows `null` progress, not a slow page).
    let submissions = state.recent_batches.submissions_newest_first();
    let progress = async {
        let Some(jobs) = &state.jobs else {
            return vec![None; submissions.len()];
        };
        let reads = submissions.iter().map(|s| jobs.store.progress(&s.store_id));
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .map(|read| read.ok().flatten())
            .collect()
    };
    let progress = tokio::time::timeout(PROGRESS_WAIT, progress)
        .await
        .unwrap_or_else(|_| vec![None; submissions.len()]);
    let asynchronous: Vec<Value> = submissions
        .iter()
        .zip(progress)
        .map(|(submission, progress)| {
            let mut entry = json!(submission);
            entry["status"] = match &progress {
                Some(p) if p.is_finished() => "completed".into(),
                Some(_) => "in_progress".into(),
                None => "unknown".into(),
            };
            entry["progress"] = progress
                .as_ref()
                .map_or(Value::Null, super::batch_jobs::progress_json);
            entry
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": state.recent_batches.newest_first(),
        "asynchronous": asynchronous,
    }))
}

#[derive(Deserialize)]
struct TestPrompt {
    model: String,
    prompt: String,
}

async fn test_prompt(
    State(state): State<Shared>,
    Extension(admin): Extension<Admin>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = super::read_body(&headers, body, state.max_body).await?;
    let asked: TestPrompt = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed test prompt: {e}")))?;
    if !state.models.contains_key(asked.model.as_str()) {
        return Err(ApiError::unknown_model(&asked.model));
    }
    if asked.prompt.trim().is_empty() {
        return Err(ApiError::bad_request("the test prompt is empty"));
    }
    tracing::info!(
        target: "llm_proxy::audit",
        admin = %admin.admin_id,
        action = "test_prompt",
        model = %asked.model,
        "test prompt sent by an admin"
    );
    state
        .audit
        .record(&admin.admin_id, "test_prompt", &asked.model, String::new());
    let chat = json!({
        "model": asked.model,
        "messages": [{"role": "user", "content": asked.prompt}],
    });
    let mut inner = HeaderMap::new();
    inner.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    inner.insert(CACHE_HEADER, HeaderValue::from_static("bypass"));
    let client = ClientId(Some(format!("admin:{}", admin.admin_id)));
    let response = super::chat::chat_inner(&state, inner, Body::from(chat.to_string()), &client)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    Ok(Json(test_report(&asked.model, response).await))
}

/// What the dashboard shows of a test prompt's response.
async fn test_report(model: &str, response: Response) -> Value {
    let (parts, body) = response.into_parts();
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let tier = header(TIER_HEADER);
    let degraded = header(DEGRADED_HEADER).map(|v| v == "true");
    let retry_after = header(RETRY_AFTER);
    let body = match Limited::new(body, MAX_TEST_ANSWER_BYTES).collect().await {
        Ok(collected) => serde_json::from_slice::<Value>(&collected.to_bytes()).ok(),
        Err(_) => None,
    };
    let text = body
        .as_ref()
        .and_then(|b| b.pointer("/choices/0/message/content")?.as_str());
    let error = body.as_ref().and_then(|b| b.get("error"));
    json!({
        "model": model,
        "status": parts.status.as_u16(),
        "tier": tier,
        "degraded": degraded,
        "answer": text,
        "error": error.map(|e| json!({"code": e["code"], "message": e["message"]})),
        "escalation": body.as_ref().and_then(|b| b.get("escalation")).map(|e| e["id"].clone()),
        "retry_after": retry_after,
        "readable": body.is_some(),
    })
}
