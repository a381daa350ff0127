//! Review-page sign-in and sign-out, and the session's CSRF token.
//!
//! - `POST /escalations/login` (form fields `key`, and `next`: `/dashboard`
//!   to come back to the dashboard, else the review page): a right admin key starts a
//!   session ([`crate::auth`]) and sets its cookie (`HttpOnly`,
//!   `SameSite=Strict`, `Max-Age` = `auth.admin_session_secs`, and `Secure` when
//!   the request came over TLS (`X-Forwarded-Proto: https`) or
//!   `auth.secure_cookies` is set). Attempts are throttled per client address
//!   (`auth.login_attempts_per_minute`, then 429 with `Retry-After`); a sign-in
//!   from another site (`Origin`, `Sec-Fetch-Site`) is refused.
//! - `POST /escalations/logout`: ends the session at once.
//! - `GET /v1/admin/session`: who is signed in, the session's `csrf_token`
//!   (for state-changing requests that are not JSON) and when it ends.
//!
//! Sign-ins, sign-outs and failed sign-ins are logged on `llm_proxy::audit` /
//! `llm_proxy::auth`, never with a key.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use http::header::{LOCATION, RETRY_AFTER, SET_COOKIE};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::review::{login_page, login_page_to, SignInTo};
use crate::auth::SESSION_COOKIE;
use crate::auth::{self, Admin};
use crate::error::ApiError;
use crate::state::{AppState, Shared};

/// The routes of this module.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/escalations/login", post(login))
        .route("/escalations/logout", post(logout))
        .route("/v1/admin/session", get(session))
}

fn over_tls(state: &AppState, headers: &HeaderMap) -> bool {
    state.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

fn see_page(to: SignInTo, set_cookie: Option<HeaderValue>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to.path()));
    if let Some(value) = set_cookie {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

async fn login(State(state): State<Shared>, request: Request) -> Result<Response, ApiError> {
    let addr = auth::client_addr(&request);
    if let Err(wait) = state.login_throttle.attempt(
        addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Instant::now(),
    ) {
        state
            .admin_failures
            .record(addr, "sign-in attempts throttled");
        let mut response = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts; wait a minute.",
        );
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Ok(response);
    }
    if let Err(why) = auth::origin_of(request.headers()) {
        state.admin_failures.record(addr, why);
        return Err(ApiError::cross_origin(why));
    }
    let secure = over_tls(&state, request.headers());
    let Form(form) = Form::<HashMap<String, String>>::from_request(request, &state)
        .await
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let key = form.get("key").map(String::as_str).unwrap_or_default();
    let to = SignInTo::from_field(form.get("next").map(String::as_str));
    if state.admin_keys.is_empty() {
        return Ok(login_page_to(
            StatusCode::FORBIDDEN,
            "No admin key is configured ([auth] admin_keys): the review page is off.",
            to,
        ));
    }
    let Some(admin_id) = state.admin_keys.id_of(key) else {
        state
            .admin_failures
            .record(addr, "wrong admin key at sign-in");
        return Ok(login_page_to(
            StatusCode::UNAUTHORIZED,
            "That key is not an admin key.",
            to,
        ));
    };
    let (token, _) = state
        .sessions
        .create(admin_id.clone(), Instant::now())
        .map_err(|e| ApiError::internal("session_failed", e.to_string()))?;
    tracing::info!(target: "llm_proxy::audit", admin = %admin_id, action = "sign_in", "admin signed in");
    state.audit.record(&admin_id, "sign_in", "", String::new());
    Ok(see_page(
        to,
        cookie(&token, state.sessions.lifetime().as_secs(), secure),
    ))
}

async fn logout(
    State(state): State<Shared>,
    Extension(admin): Extension<Admin>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = auth::cookie(&headers, SESSION_COOKIE) {
        state.sessions.end(token);
    }
    tracing::info!(target: "llm_proxy::audit", admin = %admin.admin_id, action = "sign_out", "admin signed out");
    state
        .audit
        .record(&admin.admin_id, "sign_out", "", String::new());
    see_page(SignInTo::Review, cookie("", 0, over_tls(&state, &headers)))
}

async fn session(Extension(admin): Extension<Admin>) -> Json<serde_json::Value> {
    let now = Instant::now();
    let body = match &admin.session {
        Some(session) => serde_json::json!({
            "admin_id": admin.admin_id,
            "csrf_token": session.csrf_token,
            "expires_in_secs": session.expires_at.saturating_duration_since(now).as_secs(),
        }),
        None => serde_json::json!({"admin_id": admin.admin_id, "csrf_token": null}),
    };
    Json(body)
}
