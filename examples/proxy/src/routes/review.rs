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
<body><h1>{{title}}</h1>{{error}}
<form method="post" action="/escalations/login">
<input type="hidden" name="next" value="{{next}}">
<label>Admin key <input id="admin-key" name="key" type="password" autocomplete="current-password" required autofocus></label>
<button id="sign-in" type="submit">Sign in</button></form></body></html>"#;

/// The page a sign-in goes back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignInTo {
    /// The review page, `GET /escalations`.
    Review,
    /// The operator dashboard, `GET /dashboard`.
    Dashboard,
}

impl SignInTo {
    /// Its path (the form's `next` field, and where a sign-in redirects).
    pub(crate) fn path(self) -> &'static str {
        match self {
            SignInTo::Review => "/escalations",
            SignInTo::Dashboard => "/dashboard",
        }
    }

    /// The page a sign-in form's `next` field names (the review page unless it
    /// is exactly another known page: never a redirect to anywhere else).
    pub(crate) fn from_field(next: Option<&str>) -> Self {
        match next {
            Some("/dashboard") => SignInTo::Dashboard,
            _ => SignInTo::Review,
        }
    }
}

/// The sign-in form (with the page's security headers).
pub(crate) fn login_page(status: StatusCode, error: &str) -> Response {
    login_page_to(status, error, SignInTo::Review)
}

/// The sign-in form that comes back to `to`.
pub(crate) fn login_page_to(status: StatusCode, error: &str, to: SignInTo) -> Response {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\">{error}</p>")
    };
    let title = match to {
        SignInTo::Review => "Escalation review",
        SignInTo::Dashboard => "Operator dashboard",
    };
    let page = LOGIN
        .replace("{{title}}", title)
        .replace("{{next}}", to.path())
        .replace("{{error}}", &error);
    with_page_headers((status, Html(page)).into_response())
}

/// The review page's policy: its script and style are inline.
const REVIEW_CSP: &str =
    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The review page may not be framed (clickjacking), loads nothing from
/// elsewhere, and is never cached.
fn with_page_headers(response: Response) -> Response {
    with_headers_of_admin_pages(response, REVIEW_CSP)
}

/// An admin page's security headers, with the content security policy `csp`:
/// no framing, no sniffing, never cached.
pub(crate) fn with_headers_of_admin_pages(mut response: Response, csp: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(csp));
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
