//! The HTTP routes, and the router that serves them.
//!
//! - [`chat`]: `POST /v1/chat/completions` (answered before routing, see
//!   [`crate::service`]);
//! - [`batch`]: `POST /v1/batch`;
//! - [`info`]: `GET /v1/models`, `GET /v1/circuits`, `GET /healthz`,
//!   `GET /metrics`; [`ready`]: `GET /readyz`;
//! - [`escalations`]: the admin API for escalations (`/v1/escalations...`);
//! - [`review`]: the review page (`GET /escalations`) and its sign-in form;
//! - [`admin`]: the review page's sign-in, sign-out and session;
//! - [`usage`]: `GET /v1/usage` (a client's own) and `GET /v1/admin/usage`;
//! - [`dashboard`]: the operator dashboard (`GET /dashboard`) and its admin
//!   endpoints (`/v1/admin/stats`, `/v1/admin/batches`,
//!   `/v1/admin/test-prompt`); [`circuits`]: the admin's circuit controls
//!   (`/v1/admin/circuits...`); [`audit`]: `GET /v1/admin/audit`.
//!
//! Who may call which route is decided before any handler runs, by the
//! authentication middleware ([`crate::auth`]).

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::config::{Config, ConfigError};
use crate::error::ApiError;
use crate::service::ProxyService;
use crate::state::Shared;

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod batch;
pub(crate) mod batch_jobs;
pub(crate) mod chat;
pub(crate) mod circuits;
pub(crate) mod dashboard;
pub(crate) mod escalations;
pub(crate) mod info;
pub(crate) mod ready;
pub(crate) mod review;
pub(crate) mod usage;

/// Build the state and the service that serves every route from a config.
///
/// With `[state] redis_url` this must run inside the tokio runtime that serves
/// it: the Redis backends spawn their tasks on it (they run as long as the
/// returned state lives).
pub(crate) fn build(config: &Config) -> Result<(ProxyService, Shared), ConfigError> {
    let state = crate::state::build(config)?;
    let router = Router::new()
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/models", get(info::list_models))
        .route("/v1/batch", post(batch::handler))
        .route("/v1/batch/{id}", get(batch_jobs::status))
        .route("/v1/circuits", get(info::circuits))
        .route("/healthz", get(info::healthz))
        .route("/readyz", get(ready::readyz))
        .route("/metrics", get(crate::metrics::render))
        .merge(escalations::routes())
        .merge(review::routes())
        .merge(admin::routes())
        .merge(usage::routes())
        .merge(circuits::routes())
        .merge(dashboard::routes())
        .merge(audit::routes())
        .fallback(not_found)
        .with_state(state.clone());
    let service = ProxyService::new(router, state.clone(), &config.auth.cors_allowed_origins)?;
    Ok((service, state))
}

/// One path parameter (`{id}`, `{upstream}`); a path that does not decode
/// is a 400 in the OpenAI error format, like every other bad request.
pub(crate) struct PathParam(pub(crate) String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParam(value))
            .map_err(|rejection| {
                ApiError::bad_request(format!("bad path parameter: {}", rejection.body_text()))
            })
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

/// Reads a body up to the limit; `Err` is the 413 or 400 to send.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = Limited::new(body, limit);
    // Most bodies come in one piece: kept as it is, without a copy.
    let (mut first, mut joined) = (None::<Bytes>, None::<BytesMut>);
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::too_large(limit))
            }
            Err(e) if crate::server::is_body_timeout(&*e) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    "request_timeout",
                    e.to_string(),
                ))
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )))
            }
        };
        match (&first, &mut joined) {
            (_, Some(joined)) => joined.extend_from_slice(&data),
            (Some(head), None) => {
                let mut both = BytesMut::with_capacity(head.len() + data.len());
                both.extend_from_slice(head);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
            (None, None) => first = Some(data),
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}
