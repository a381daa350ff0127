//! Authentication, in one place: [`AuthLayer`], the middleware every request
//! passes before it reaches a handler (the chat fast path included). It checks
//! what the route needs and records who the caller is in the request's
//! extensions ([`ClientId`], [`Admin`]), or answers the 401/403 itself.
//!
//! | route | needs |
//! |---|---|
//! | `POST /v1/chat/completions`, `GET /v1/models`, `POST /v1/batch`, `GET /v1/circuits` | a client key (`Authorization: Bearer`), unless the proxy runs without client keys |
//! | `/v1/escalations...`, `/v1/admin/...`, `POST /escalations/logout` | an admin key (bearer) or a review-page session cookie |
//! | `GET /escalations`, `GET /dashboard` | nothing: without an admin they show the sign-in form |
//! | `POST /escalations/login` | nothing; throttled per client address |
//! | `/healthz`, `/readyz`, `/metrics`, unknown paths | nothing |
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

//!
//! - [`keys`]: client and admin keys, kept as SHA-256 hashes and compared in
//!   constant time;
//! - [`sessions`]: the review page's server-side sessions and the sign-in
//!   throttle;
//! - [`origin`]: where a browser request comes from (the CSRF rules above);
//! - [`failures`]: the rate-limited log of failed authentications.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready};
use http::header::AUTHORIZATION;
use http::{HeaderMap, Method};
use tower::{Layer, Service};

use crate::client_id::ClientId;
use crate::error::ApiError;
use crate::state::{AppState, Shared};

mod failures;
mod keys;
mod origin;
mod sessions;

pub(crate) use failures::FailureLog;
pub(crate) use keys::{bearer, hex, Keys};
use origin::check_same_origin;
pub(crate) use origin::{cookie, origin_of};
pub(crate) use sessions::{LoginThrottle, Session, Sessions, SESSION_COOKIE};

/// The authentication middleware: [`authenticate`] in front of a service.
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer {
    state: Shared,
}

impl AuthLayer {
    /// Authenticate against the keys and sessions of `state`.
    pub(crate) fn new(state: Shared) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            state: self.state.clone(),
        }
    }
}

/// A service behind [`AuthLayer`]: it sees only the requests their route lets
/// through, with who sent them in their extensions.
#[derive(Clone, Debug)]
pub(crate) struct Authenticated<S> {
    inner: S,
    state: Shared,
}

impl<S> Service<Request> for Authenticated<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match authenticate(&self.state, &mut request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(refused) => Either::Left(futures_util::future::ready(Ok(refused.into_response()))),
        }
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
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
pub(crate) fn route(method: &Method, path: &str) -> Route {
    let mutation = !(method == Method::GET || method == Method::HEAD);
    match path {
        "/v1/chat/completions" | "/v1/models" | "/v1/batch" | "/v1/circuits" | "/v1/usage" => {
            Route::Client
        }
        _ if path.starts_with("/v1/batch/") => Route::Client,
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
pub(crate) struct Admin {
    /// The id of the admin key.
    pub(crate) admin_id: String,
    /// The session, when signed in through the review page (not a bearer key).
    pub(crate) session: Option<Session>,
}

/// The client address of a request (when served with connect info).
pub(crate) fn client_addr(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

/// Checks `request` for what its route needs, and records who it is in its
/// extensions ([`ClientId`], [`Admin`]); `Err` is the response to send.
fn authenticate(state: &AppState, request: &mut Request) -> Result<(), ApiError> {
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
                    return Err(ApiError::admin_disabled());
                }
                let reason = if request.headers().contains_key(AUTHORIZATION) {
                    "wrong admin key"
                } else {
                    "no admin key or session"
                };
                state.admin_failures.record(addr, reason);
                return Err(ApiError::unauthorized("an admin key is needed"));
            };
            if mutation {
                if let Err(why) = check_same_origin(request.headers(), admin.session.as_ref()) {
                    state.admin_failures.record(addr, why);
                    return Err(ApiError::cross_origin(why));
                }
            }
            request.extensions_mut().insert(admin);
            Ok(())
        }
    }
}

fn client(state: &AppState, request: &Request) -> Result<ClientId, ApiError> {
    if state.client_keys.is_empty() {
        return Ok(ClientId(None));
    }
    let headers = request.headers();
    if let Some(id) = bearer(headers).and_then(|key| state.client_keys.id_of(key)) {
        return Ok(ClientId(Some(id)));
    }
    let addr = client_addr(request);
    if headers.contains_key(AUTHORIZATION) {
        state.client_failures.record(addr, "wrong client key");
        Err(ApiError::unauthorized("Incorrect API key provided"))
    } else {
        state.client_failures.record(addr, "no client key");
        Err(ApiError::unauthorized(
            "You didn't provide an API key: send it as `Authorization: Bearer KEY`",
        ))
    }
}

/// The admin a request is authenticated as: an admin bearer key, or a live
/// review-page session.
pub(crate) fn admin(state: &AppState, headers: &HeaderMap) -> Option<Admin> {
    if let Some(id) = bearer(headers).and_then(|key| state.admin_keys.id_of(key)) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The middleware alone decides: the service behind it sees only the
    /// requests their route lets through, with who sent them.
    #[tokio::test]
    async fn only_what_the_route_allows_reaches_the_service_behind() {
        let config = crate::Config::from_toml(
            r#"
[[upstreams]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "m"
tiers = [ { upstream = "up", model = "x" } ]

[auth]
client_keys = ["the-client-key"]
admin_keys = ["the-admin-key"]

[escalation]
store = "memory"
"#,
        )
        .unwrap();
        let state = crate::state::build(&config).unwrap();
        type Seen = (String, Option<ClientId>, Option<String>);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Seen>::new()));
        let inner = tower::service_fn({
            let seen = seen.clone();
            move |request: Request| {
                let who = (
                    request.uri().path().to_owned(),
                    request.extensions().get::<ClientId>().cloned(),
                    request
                        .extensions()
                        .get::<Admin>()
                        .map(|a| a.admin_id.clone()),
                );
                seen.lock().unwrap().push(who);
                std::future::ready(Ok::<_, Infallible>(
                    Response::new(axum::body::Body::empty()),
                ))
            }
        });
        let mut service = AuthLayer::new(state).layer(inner);
        let request = |method: Method, path: &str, key: Option<&str>| {
            let mut request = http::Request::builder().method(method).uri(path);
            if let Some(key) = key {
                request = request.header(AUTHORIZATION, format!("Bearer {key}"));
            }
            request.body(axum::body::Body::empty()).unwrap()
        };
        let refusals = [
            (
                Method::GET,
                "/v1/models",
                None,
                "You didn't provide an API key",
            ),
            (
                Method::POST,
                "/v1/batch",
                Some("the-admin-key"),
                "Incorrect API key",
            ),
            (
                Method::GET,
                "/v1/escalations",
                Some("the-client-key"),
                "an admin key",
            ),
            (Method::GET, "/v1/admin/session", None, "an admin key"),
        ];
        for (method, path, key, message) in refusals {
            let refused = service.call(request(method, path, key)).await.unwrap();
            assert_eq!(refused.status(), 401, "{path}");
            assert_eq!(refused.headers()["www-authenticate"], "Bearer");
            let body = axum::body::to_bytes(refused.into_body(), 4096)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
            assert_eq!(body["error"]["type"], "invalid_request_error");
            assert!(body["error"]["param"].is_null());
            assert!(
                body["error"]["message"].as_str().unwrap().contains(message),
                "{body}"
            );
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing refused got through"
        );

        for (method, path, key) in [
            (Method::POST, "/v1/chat/completions", Some("the-client-key")),
            (Method::GET, "/v1/escalations", Some("the-admin-key")),
            (Method::GET, "/healthz", None),
        ] {
            let answer = service.call(request(method, path, key)).await.unwrap();
            assert_eq!(answer.status(), 200, "{path}");
        }
        let seen = seen.lock().unwrap();
        let client = crate::client_id::client_key_id("the-client-key");
        let admin = crate::client_id::client_key_id("the-admin-key");
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, "/v1/chat/completions");
        assert_eq!(seen[0].1.as_ref().and_then(|c| c.0.clone()), Some(client));
        assert_eq!(seen[1].2.as_deref(), Some(admin.as_str()));
        assert!(seen[2].1.is_none() && seen[2].2.is_none(), "an open route");
    }
}
