//! The service in front of the router: authentication, the chat fast path,
//! CORS and the access log.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use futures_util::future::Either;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue};
use tower::Layer;
use tower_llm_resilience::escalation::RESUME_TOKEN_HEADER;

use crate::auth::{AuthLayer, Authenticated};
use crate::client_id::ClientId;
use crate::config::ConfigError;
use tracing::Instrument;

use crate::routes::chat::{chat, DEGRADED_HEADER, TIER_HEADER};
use crate::state::Shared;

/// Every route, behind the authentication middleware ([`crate::auth`]), with
/// `POST /v1/chat/completions` answered before routing (the hot path skips the
/// router's matching and extractors), CORS on the client endpoints when
/// `auth.cors_allowed_origins` is set, and one access-log line per request.
///
/// # Access log
///
/// Each request is logged once it has its response head, as an `INFO` event on
/// the target `llm_proxy::access` with the fields `method`, `path`, `status`,
/// `model` (chat requests), `tier`, `degraded`, `duration_ms` (to the response
/// head: a stream's body may go on after it) and `client` (the
/// [client key id](crate::client_id::client_key_id), `-` when none). Route or
/// silence it like any target, e.g. `RUST_LOG=info,llm_proxy::access=off`.
#[derive(Clone)]
pub(crate) struct ProxyService {
    dispatch: Authenticated<Dispatch>,
    cors: Option<tower_http::cors::Cors<Authenticated<Dispatch>>>,
}

impl ProxyService {
    /// `router` behind authentication, with CORS for `cors_origins` (none: off).
    pub(crate) fn new(
        router: Router,
        state: Shared,
        cors_origins: &[String],
    ) -> Result<Self, ConfigError> {
        let dispatch = AuthLayer::new(state.clone()).layer(Dispatch { router, state });
        let cors = cors_layer(cors_origins)?.map(|layer| layer.layer(dispatch.clone()));
        Ok(Self { dispatch, cors })
    }
}

impl std::fmt::Debug for ProxyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyService").finish_non_exhaustive()
    }
}

/// The chat fast path or the router (behind [`AuthLayer`]).
#[derive(Clone)]
struct Dispatch {
    router: Router,
    state: Shared,
}

type BoxedResponse = futures_util::future::BoxFuture<'static, Result<Response, Infallible>>;

impl tower::Service<Request> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.method() == http::Method::POST && request.uri().path() == "/v1/chat/completions"
        {
            // `chat` puts the client id on its response itself.
            let state = self.state.clone();
            let span = crate::telemetry::request_span(request.headers());
            let hub = crate::telemetry::request_hub(request.headers(), &span);
            if span.is_disabled() && hub.is_none() {
                return Box::pin(async move { Ok(chat(State(state), request).await) });
            }
            let traced = async move {
                let response = chat(State(state), request).await;
                crate::telemetry::record_response(&tracing::Span::current(), &response);
                Ok(response)
            };
            return crate::telemetry::bind_hub(hub, traced.instrument(span));
        }
        // Who it was, for the access log.
        let who = match (
            request.extensions().get::<ClientId>(),
            request.extensions().get::<crate::auth::Admin>(),
        ) {
            (Some(client), _) => Some(client.clone()),
            (None, Some(admin)) => Some(ClientId(Some(format!("admin:{}", admin.admin_id)))),
            (None, None) => None,
        };
        let call = self.router.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            if let Some(who) = who {
                response.extensions_mut().insert(who);
            }
            Ok(response)
        })
    }
}

/// The model a chat response answered for, for the access log.
#[derive(Clone, Debug)]
pub(crate) struct LoggedModel(pub(crate) Arc<str>);

impl tower::Service<Request> for ProxyService {
    type Response = Response;
    type Error = Infallible;
    type Future = Logged;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: nothing in front of the handlers waits for capacity.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        // Copied only when someone listens (the bench runs with it off).
        let logged =
            access_logged().then(|| (request.method().clone(), request.uri().path().to_owned()));
        let client_side = self.cors.is_some()
            && crate::auth::route(request.method(), request.uri().path())
                == crate::auth::Route::Client;
        let answer = match &mut self.cors {
            Some(cors) if client_side => {
                Either::Left(Box::pin(cors.call(request)) as BoxedResponse)
            }
            _ => Either::Right(self.dispatch.call(request)),
        };
        Logged {
            answer,
            logged,
            started,
        }
    }
}

/// A response on its way, logged once it has its head (a named future: no
/// second allocation per request around the handler's).
pub(crate) struct Logged {
    answer: Either<BoxedResponse, <Authenticated<Dispatch> as tower::Service<Request>>::Future>,
    logged: Option<(http::Method, String)>,
    started: Instant,
}

impl std::future::Future for Logged {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match std::pin::Pin::new(&mut self.answer).poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        if let Some((method, path)) = self.logged.take() {
            access_log(&method, &path, &response, self.started);
        }
        Poll::Ready(Ok(response))
    }
}

/// Whether access-log lines are written (`llm_proxy::access` at `INFO`).
pub(crate) fn access_logged() -> bool {
    tracing::enabled!(target: "llm_proxy::access", tracing::Level::INFO)
}

fn access_log(method: &http::Method, path: &str, response: &Response, started: Instant) {
    let header = |name: &HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    let model = response
        .extensions()
        .get::<LoggedModel>()
        .map_or("-", |m| &*m.0);
    let client = response
        .extensions()
        .get::<ClientId>()
        .map_or("-", ClientId::as_str);
    tracing::info!(
        target: "llm_proxy::access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        model = %model,
        tier = %header(&TIER_HEADER),
        degraded = %header(&DEGRADED_HEADER),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        client = %client,
        "request"
    );
}

fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, ConfigError> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| HeaderValue::try_from(o.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ConfigError("auth.cors_allowed_origins holds an invalid origin".into()))?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([http::Method::GET, http::Method::POST])
            .allow_headers([
                http::header::AUTHORIZATION,
                CONTENT_TYPE,
                RESUME_TOKEN_HEADER,
                HeaderName::from_static("x-require-approval"),
                crate::cache::CACHE_HEADER,
            ])
            .expose_headers([
                TIER_HEADER,
                DEGRADED_HEADER,
                RESUME_TOKEN_HEADER,
                http::header::RETRY_AFTER,
                crate::cache::CACHE_HEADER,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}
