//! Authentication, in one place: every request passes [`authenticate`] before
//! it reaches a handler.
//!
//! | route | needs |
//! |---|---|
//! | `POST /v1/chat/completions`, `GET /v1/models`, `POST /v1/batch`, `GET /v1/circuits` | a client key (`Authorization: Bearer`), unless the proxy runs without client keys |
//! | `/v1/escalations...`, `/v1/admin/...`, `POST /escalations/logout` | an admin key (bearer) or a review-page session cookie |
//! | `GET /escalations` | nothing: without an admin it shows the sign-in form |
//! | `POST /escalations/login` | nothing; throttled per client address |
//! | `/healthz`, `/metrics`, unknown paths | nothing |
//!
//! A request that changes state on the admin side (anything but `GET`/`HEAD`)
//! must not come from another site: a `Sec-Fetch-Site` other than
//! `same-origin`/`none`, or an `Origin` that is not this proxy's, is refused
//! (403 `cross_origin`). When it is authenticated by the session cookie (which
//! the browser attaches on its own) it must also *prove* where it comes from:
//! `Sec-Fetch-Site: same-origin` or a matching `Origin`, and a JSON content type
//! (which another site cannot send without a CORS preflight that fails) or the
//! session's `x-csrf-token`. Bearer keys are never attached by a browser on its
//! own, so API clients such as `curl` need neither.
//!
//! Failed client and admin authentications are logged on the target
//! `llm_proxy::auth` (the client address and why; never a key), at most one
//! line per second per kind, with the count of the lines left out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use http::{HeaderMap, Method, StatusCode};

use crate::client_id::ClientId;
use crate::errors;
use crate::sessions::{Session, SESSION_COOKIE};
use crate::state::AppState;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Nothing.
    Open,
    /// A client key.
    Client,
    /// An admin; `mutation`: it changes state.
    Admin {
        /// Not `GET`/`HEAD`.
        mutation: bool,
    },
}

/// What `path` needs.
pub fn route(method: &Method, path: &str) -> Route {
    let mutation = !(method == Method::GET || method == Method::HEAD);
    match path {
        "/v1/chat/completions" | "/v1/models" | "/v1/batch" | "/v1/circuits" => Route::Client,
        "/escalations/logout" => Route::Admin { mutation },
        _ if path == "/v1/escalations"
            || path.starts_with("/v1/escalations/")
            || path.starts_with("/v1/admin/") =>
        {
            Route::Admin { mutation }
        }
        _ => Route::Open,
    }
}

/// An authenticated admin, in the extensions of admin requests.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The id of the admin key.
    pub admin_id: String,
    /// The session, when signed in through the review page (not a bearer key).
    pub session: Option<Session>,
}

/// Logs at most one line per second, counting the ones it leaves out.
#[derive(Debug)]
pub struct FailureLog {
    kind: &'static str,
    last: Mutex<(Option<Instant>, u64)>,
}

impl FailureLog {
    /// A log of failed `kind` authentications.
    pub const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            last: Mutex::new((None, 0)),
        }
    }

    /// One failure, from `addr`, for `reason` (never a key).
    pub fn record(&self, addr: Option<IpAddr>, reason: &str) {
        metrics::counter!("llm_proxy_auth_failures_total", "kind" => self.kind).increment(1);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .0
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            last.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut last.1);
        last.0 = Some(now);
        drop(last);
        let addr = addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        tracing::warn!(
            target: "llm_proxy::auth",
            kind = %self.kind,
            client_addr = %addr,
            reason = %reason,
            suppressed,
            "authentication failed"
        );
    }
}

/// The client address of a request (when served with connect info).
pub fn client_addr(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

/// Checks `request` for what its route needs, and records who it is in its
/// extensions ([`ClientId`], [`Admin`]); `Err` is the response to send.
pub fn authenticate(state: &AppState, request: &mut Request) -> Result<(), Response> {
    match route(request.method(), request.uri().path()) {
        Route::Open => Ok(()),
        Route::Client => {
            let id = client(state, request)?;
            request.extensions_mut().insert(id);
            Ok(())
        }
        Route::Admin { mutation } => {
            let addr = client_addr(request);
            let Some(admin) = admin(state, request.headers()) else {
                if state.admin_keys.is_empty() {
                    return Err(errors::error(
                        StatusCode::FORBIDDEN,
                        "invalid_request_error",
                        "admin_disabled",
                        "no admin key is configured ([auth] admin_keys)",
                    ));
                }
                let reason = if request.headers().contains_key(AUTHORIZATION) {
                    "wrong admin key"
                } else {
                    "no admin key or session"
                };
                state.admin_failures.record(addr, reason);
                return Err(errors::unauthorized("an admin key is needed"));
            };
            if mutation {
                if let Err(why) = check_same_origin(request.headers(), admin.session.as_ref()) {
                    state.admin_failures.record(addr, why);
                    return Err(errors::error(
                        StatusCode::FORBIDDEN,
                        "invalid_request_error",
                        "cross_origin",
                        why,
                    ));
                }
            }
            request.extensions_mut().insert(admin);
            Ok(())
        }
    }
}

fn client(state: &AppState, request: &Request) -> Result<ClientId, Response> {
    if state.client_keys.is_empty() {
        return Ok(ClientId(None));
    }
    let headers = request.headers();
    if let Some(id) = crate::auth::bearer(headers).and_then(|key| state.client_keys.id_of(key)) {
        return Ok(ClientId(Some(id)));
    }
    let addr = client_addr(request);
    if headers.contains_key(AUTHORIZATION) {
        state.client_failures.record(addr, "wrong client key");
        Err(errors::unauthorized("Incorrect API key provided"))
    } else {
        state.client_failures.record(addr, "no client key");
        Err(errors::unauthorized(
            "You didn't provide an API key: send it as `Authorization: Bearer KEY`",
        ))
    }
}

/// The admin a request is authenticated as: an admin bearer key, or a live
/// review-page session.
pub fn admin(state: &AppState, headers: &HeaderMap) -> Option<Admin> {
    if let Some(id) = crate::auth::bearer(headers).and_then(|key| state.admin_keys.id_of(key)) {
        return Some(Admin {
            admin_id: id,
            session: None,
        });
    }
    let token = cookie(headers, SESSION_COOKIE)?;
    let session = state.sessions.get(token, Instant::now())?;
    Some(Admin {
        admin_id: session.admin_id.clone(),
        session: Some(session),
    })
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request says it comes from this proxy's own pages: `Ok(true)`
/// proven, `Ok(false)` no browser header says either way, `Err` another site.
pub fn origin_of(headers: &HeaderMap) -> Result<bool, &'static str> {
    let mut proven = false;
    if let Some(site) = headers.get("sec-fetch-site") {
        match site.as_bytes() {
            b"same-origin" => proven = true,
            b"none" => {}
            _ => return Err("cross-site request refused (Sec-Fetch-Site)"),
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || origin_host != Some(host) {
            return Err("cross-origin request refused (Origin)");
        }
        proven = true;
    }
    Ok(proven)
}

fn check_same_origin(headers: &HeaderMap, session: Option<&Session>) -> Result<(), &'static str> {
    let proven = origin_of(headers)?;
    let Some(session) = session else {
        return Ok(());
    };
    if !proven {
        return Err("a signed-in request must show it comes from this page (Origin)");
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    let token_ok = headers
        .get("x-csrf-token")
        .is_some_and(|v| crate::auth::equal(v.as_bytes(), session.csrf_token.as_bytes()));
    if json || token_ok {
        Ok(())
    } else {
        Err("a signed-in request must be JSON or carry the x-csrf-token of its session")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn routes_by_path() {
        assert_eq!(route(&Method::POST, "/v1/chat/completions"), Route::Client);
        assert_eq!(
            route(&Method::POST, "/v1/escalations/x/resolve"),
            Route::Admin { mutation: true }
        );
        assert_eq!(
            route(&Method::GET, "/v1/escalations"),
            Route::Admin { mutation: false }
        );
        assert_eq!(route(&Method::GET, "/escalations"), Route::Open);
        assert_eq!(route(&Method::POST, "/escalations/login"), Route::Open);
    }

    #[test]
    fn origins() {
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(origin_of(&headers(&[host])), Ok(false));
        assert_eq!(
            origin_of(&headers(&[host, ("origin", "http://127.0.0.1:8080")])),
            Ok(true)
        );
        assert!(origin_of(&headers(&[host, ("origin", "http://127.0.0.1:9999")])).is_err());
        assert!(origin_of(&headers(&[host, ("origin", "null")])).is_err());
        assert!(origin_of(&headers(&[host, ("sec-fetch-site", "same-site")])).is_err());
        assert_eq!(
            origin_of(&headers(&[host, ("sec-fetch-site", "same-origin")])),
            Ok(true)
        );
    }

    #[test]
    fn sessions_need_proof_and_json_or_token() {
        let session = Session {
            admin_id: "a".into(),
            csrf_token: "t".repeat(64),
            expires_at: Instant::now(),
        };
        let origin = [("host", "h:1"), ("origin", "http://h:1")];
        assert!(check_same_origin(&headers(&origin), Some(&session)).is_err());
        let mut json = headers(&origin);
        json.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(check_same_origin(&json, Some(&session)).is_ok());
        let mut form = headers(&origin);
        form.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(check_same_origin(&form, Some(&session)).is_err());
        form.insert("x-csrf-token", session.csrf_token.parse().unwrap());
        assert!(check_same_origin(&form, Some(&session)).is_ok());
        // JSON without any origin proof: refused for a session, fine for a bearer key.
        let bare = headers(&[("host", "h:1"), ("content-type", "application/json")]);
        assert!(check_same_origin(&bare, Some(&session)).is_err());
        assert!(check_same_origin(&bare, None).is_ok());
    }
}
