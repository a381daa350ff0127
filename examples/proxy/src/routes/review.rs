//! `GET /escalations`: the review page, where a human lists and resolves
//! escalations (through [`super::escalations`]). Without an admin it shows a
//! sign-in form, which starts a server-side session (see [`super::admin`]).
//! `GET /escalations/{id}` is the same page with that escalation's card
//! marked: the link `[escalation.webhook]` notifications carry.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::state::Shared;

const PAGE: &str = include_str!("review.html");

/// The routes of this module.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/escalations", get(page))
        .route("/escalations/{id}", get(page))
}

const LOGIN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llm-proxy · sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}
input,button{font:inherit;padding:.4rem .6rem}p.error{color:#b00020}</style></head>
<body><h1>Escalation review</h1>{{error}}
<form method="post" action="/escalations/login">
<label>Admin key <input id="admin-key" name="key" type="password" autocomplete="current-password" required autofocus></label>
<button id="sign-in" type="submit">Sign in</button></form></body></html>"#;

/// The sign-in form (with the page's security headers).
pub(crate) fn login_page(status: StatusCode, error: &str) -> Response {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\">{error}</p>")
    };
    with_page_headers((status, Html(LOGIN.replace("{{error}}", &error))).into_response())
}

/// The review page may not be framed (clickjacking), loads nothing from
/// elsewhere, and is never cached.
fn with_page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

async fn page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if state.admin_keys.is_empty() {
        return login_page(
            StatusCode::FORBIDDEN,
            "No admin key is configured ([auth] admin_keys): the review page is off.",
        );
    }
    if crate::auth::admin(&state, &headers).is_none() {
        return login_page(StatusCode::UNAUTHORIZED, "");
    }
    with_page_headers(Html(PAGE).into_response())
}
