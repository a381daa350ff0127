//! The HTTP server: routes, request checks, and turning answers into responses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use tower::ServiceExt;
use tower_llm_resilience::circuit_breaker::CircuitState;
use tower_llm_resilience::escalation::RESUME_TOKEN_HEADER;

use crate::auth::Keys;
use crate::batch::BatchRunner;
use crate::body::{completion_to_sse, ClientStream, ProxyBody};
use crate::client_id::ClientId;
use crate::config::{Config, ConfigError};
use crate::errors;
use crate::pipeline::{self, answered_by, ModelService, Pipeline, RequestMeta, Res};
use crate::request::{ChatBody, Invalid};
pub use crate::service::{LoggedModel, ProxyService};

/// The header naming the tier that answered.
pub const TIER_HEADER: HeaderName = HeaderName::from_static("x-llm-proxy-tier");
/// The header saying whether the answer is degraded (not from the first tier).
pub const DEGRADED_HEADER: HeaderName = HeaderName::from_static("x-llm-proxy-degraded");
/// The client's model name, on requests inside the proxy (and in escalation snapshots).
pub const MODEL_HEADER: HeaderName = HeaderName::from_static("x-llm-proxy-model");

/// One model, as the routes see it.
pub struct Model {
    /// Its service.
    pub service: ModelService,
    /// The upstream of its first tier.
    pub primary: Arc<str>,
    /// The model name sent to the first tier.
    pub primary_model: String,
    /// `upstream/model` of each tier, and `template` if it has one.
    pub tiers: Vec<String>,
    /// The model's name, as the header the pipeline reads (`None`: not
    /// expressible in a header).
    pub name_header: Option<HeaderValue>,
    /// `primary`, as the `x-llm-proxy-tier` header (`None`: not expressible).
    pub primary_header: Option<HeaderValue>,
    /// Answers from the first tier.
    pub primary_answers: metrics::Counter,
}

/// What every handler shares.
pub struct AppState {
    /// Models by the name clients use.
    pub models: HashMap<Arc<str>, Model>,
    /// The layers' handles.
    pub pipeline: Pipeline,
    /// Client keys (empty: open).
    pub client_keys: Keys,
    /// Admin keys (empty: the admin endpoints are closed).
    pub admin_keys: Keys,
    /// The body size limit.
    pub max_body: usize,
    /// Rules: the approval header, forwarded into the pipeline.
    pub approval_header: Option<HeaderName>,
    /// The batch endpoint.
    pub batch: BatchRunner,
    /// Prometheus rendering.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Review-page sessions.
    pub sessions: crate::sessions::Sessions,
    /// Sign-in attempts per client address.
    pub login_throttle: crate::sessions::LoginThrottle,
    /// Failed client authentications (rate-limited log).
    pub client_failures: crate::guard::FailureLog,
    /// Failed admin authentications (rate-limited log).
    pub admin_failures: crate::guard::FailureLog,
    /// `auth.secure_cookies`.
    pub secure_cookies: bool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// Shared state.
pub type Shared = Arc<AppState>;

/// Build the state and the router from a config.
///
/// With `[state] redis_url` this must run inside the tokio runtime that serves
/// the router: the Redis backends spawn their tasks on it (they run as long as
/// the returned state lives).
pub fn build(config: &Config) -> Result<(ProxyService, Shared), ConfigError> {
    config.validate()?;
    config.check_secrets()?;
    // The recorder first: the models register their counters with it.
    let metrics = crate::metrics::handle();
    let pipeline = pipeline::build(config)?;
    let mut models = HashMap::new();
    for model in &config.models {
        let name: Arc<str> = model.name.as_str().into();
        let mut tiers: Vec<String> = model
            .tiers
            .iter()
            .map(|t| format!("{}/{}", t.upstream, t.model))
            .collect();
        if model.template.is_some() {
            tiers.push(pipeline::TEMPLATE_TIER.into());
        }
        let service = pipeline.models[&name].clone();
        let primary = model.tiers[0].upstream.as_str();
        models.insert(
            name,
            Model {
                service,
                primary: primary.into(),
                primary_model: model.tiers[0].model.clone(),
                tiers,
                name_header: HeaderValue::try_from(model.name.as_str()).ok(),
                primary_header: HeaderValue::try_from(primary).ok(),
                primary_answers: crate::metrics::primary_answers(primary),
            },
        );
    }
    let approval_header = match config.escalation.approval_header.as_str() {
        "" => None,
        name => HeaderName::try_from(name).ok(),
    };
    let batch = BatchRunner::new(
        &config.batch,
        pipeline.cores.clone(),
        pipeline.redis.as_ref(),
    )?;
    let state = Arc::new(AppState {
        models,
        client_keys: Keys::new(&config.client_keys()?),
        admin_keys: Keys::new(&config.admin_keys()?),
        max_body: config.limits.max_body_bytes,
        approval_header,
        batch,
        metrics,
        pipeline,
        sessions: crate::sessions::Sessions::new(
            crate::config::secs("auth.admin_session_secs", config.auth.admin_session_secs)?,
            config.auth.max_admin_sessions,
        ),
        login_throttle: crate::sessions::LoginThrottle::new(config.auth.login_attempts_per_minute),
        client_failures: crate::guard::FailureLog::new("client"),
        admin_failures: crate::guard::FailureLog::new("admin"),
        secure_cookies: config.auth.secure_cookies,
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(list_models))
        .route("/v1/batch", post(crate::batch::handler))
        .route("/v1/circuits", get(circuits))
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::render))
        .merge(crate::review::routes())
        .merge(crate::admin::routes())
        .fallback(not_found)
        .with_state(state.clone());
    let service = ProxyService::new(router, state.clone(), &config.auth.cors_allowed_origins)?;
    Ok((service, state))
}

async fn not_found() -> Response {
    errors::error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        "no such endpoint",
    )
}

async fn healthz() -> Response {
    errors::json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Checks the client key; `Err` is the 401 to send. Every request already
/// passed [`crate::guard::authenticate`]: handlers that call this check twice.
pub fn check_client(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    if state.client_keys.is_empty() || state.client_keys.bearer_ok(headers) {
        Ok(())
    } else {
        Err(errors::unauthorized("Incorrect API key provided"))
    }
}

/// Reads a body up to the limit; `Err` is the 413 or 400 to send.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Response> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(errors::too_large(limit));
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
                return Err(errors::too_large(limit))
            }
            Err(e) if crate::server::is_body_timeout(&*e) => {
                return Err(errors::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    "request_timeout",
                    e.to_string(),
                ))
            }
            Err(e) => {
                return Err(errors::bad_request(format!(
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

/// A chat request the proxy understood.
pub struct Prepared {
    /// The request for the model's service.
    pub request: http::Request<Bytes>,
    /// The client asked for a stream.
    pub stream: bool,
}

/// Parse and check a chat completion body, and build the request for its model.
/// `Err` is the 400 or 404 to send.
pub fn prepare<'m>(
    models: &'m HashMap<Arc<str>, Model>,
    body: &[u8],
    force_no_stream: bool,
) -> Result<(&'m Model, Prepared), Response> {
    prepare_bytes(models, &Bytes::copy_from_slice(body), force_no_stream)
}

/// [`prepare`] for a body already in a `Bytes`: kept without a copy, and what
/// every tier is sent is made from it (see [`crate::request::TierBody`]).
pub fn prepare_bytes<'m>(
    models: &'m HashMap<Arc<str>, Model>,
    body: &Bytes,
    force_no_stream: bool,
) -> Result<(&'m Model, Prepared), Response> {
    let chat = ChatBody::parse(body).map_err(|invalid| match invalid {
        Invalid::Json(e) => errors::bad_request(format!(
            "We could not parse the JSON body of your request: {e}"
        )),
        Invalid::Shape(why) => errors::bad_request(why),
    })?;
    let Some((key, model)) = models.get_key_value(&*chat.model) else {
        return Err(errors::unknown_model(&chat.model));
    };
    let stream = chat.stream && !force_no_stream;
    let tier_body = chat.tier_body(force_no_stream);
    let mut request = http::Request::new(tier_body.for_model(&model.primary_model));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static("/v1/chat/completions");
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(name) = &model.name_header {
        headers.insert(MODEL_HEADER, name.clone());
    }
    request.extensions_mut().insert(RequestMeta {
        stream,
        wants_json: chat.wants_json,
        model: key.clone(),
    });
    request.extensions_mut().insert(tier_body);
    Ok((model, Prepared { request, stream }))
}

pub(crate) async fn chat(State(state): State<Shared>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let client = parts
        .extensions
        .get::<ClientId>()
        .cloned()
        .unwrap_or(ClientId(None));
    let mut response = chat_inner(&state, parts.headers, body, &client).await;
    crate::metrics::record_request(response.status(), started.elapsed());
    if crate::service::access_logged() {
        response.extensions_mut().insert(client);
    }
    response
}

/// The header carrying the client key id into the pipeline, where the
/// escalation snapshot keeps it: the record of who may resume.
pub const CLIENT_HEADER: HeaderName = crate::escalation_caps::CLIENT_HEADER;

async fn chat_inner(
    state: &AppState,
    headers: HeaderMap,
    body: Body,
    client: &ClientId,
) -> Response {
    let bytes = match read_body(&headers, body, state.max_body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let (model, mut prepared) = match prepare_bytes(&state.models, &bytes, false) {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let model_name = prepared
        .request
        .extensions()
        .get::<RequestMeta>()
        .map(|meta| meta.model.clone());
    // The headers the escalation rules read.
    for name in state.approval_header.iter().chain([&RESUME_TOKEN_HEADER]) {
        if let Some(value) = headers.get(name) {
            prepared.request.headers_mut().insert(name, value.clone());
        }
    }
    if let Some(token) = headers.get(RESUME_TOKEN_HEADER) {
        if let Err(response) = crate::resume::check_owner(state, token, client).await {
            return response;
        }
    }
    if let Some(id) = client
        .0
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        prepared.request.headers_mut().insert(CLIENT_HEADER, id);
    }
    let mut response = match model.service.clone().oneshot(prepared.request).await {
        Ok(answer) => respond(answer, model, prepared.stream),
        Err(e) => errors::from_service_error(&e),
    };
    // For the access log only (two allocations a request when nobody reads it).
    if let Some(name) = model_name.filter(|_| crate::service::access_logged()) {
        response.extensions_mut().insert(LoggedModel(name));
    }
    response
}

/// The client's response for a model's answer.
pub fn respond(answer: Res, model: &Model, stream: bool) -> Response {
    let tier = answered_by(&answer, &model.primary);
    let degraded = tier != &*model.primary && tier != "human";
    let tier_header = if tier == &*model.primary {
        model.primary_answers.increment(1);
        model.primary_header.clone()
    } else {
        crate::metrics::record_answer(tier, degraded);
        HeaderValue::from_str(tier).ok()
    };
    let (mut parts, body) = answer.into_parts();
    parts.extensions.clear();
    let body = match body {
        ProxyBody::Full(bytes) => {
            let sse = (stream && parts.status.is_success())
                .then(|| completion_to_sse(&bytes))
                .flatten();
            match sse {
                Some(events) => {
                    parts
                        .headers
                        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                    parts.headers.remove(CONTENT_LENGTH);
                    Body::from(events)
                }
                None => Body::from(bytes),
            }
        }
        ProxyBody::Stream(stream_body) => {
            parts
                .headers
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            parts.headers.remove(CONTENT_LENGTH);
            Body::new(ClientStream::new(stream_body))
        }
    };
    if let Some(value) = tier_header {
        parts.headers.insert(TIER_HEADER, value);
    }
    parts.headers.insert(
        DEGRADED_HEADER,
        HeaderValue::from_static(if degraded { "true" } else { "false" }),
    );
    Response::from_parts(parts, body)
}

async fn list_models(State(state): State<Shared>) -> Response {
    let mut names: Vec<&Arc<str>> = state.models.keys().collect();
    names.sort();
    let data: Vec<Value> = names
        .into_iter()
        .map(|name| {
            serde_json::json!({
                "id": &**name,
                "object": "model",
                "created": 0,
                "owned_by": "llm-proxy",
                "tiers": state.models[name].tiers,
            })
        })
        .collect();
    errors::json_response(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": data}),
    )
}

/// The state name of a circuit.
pub fn state_name(state: CircuitState) -> &'static str {
    state.name()
}

async fn circuits(State(state): State<Shared>) -> Response {
    let data: Vec<Value> = state
        .pipeline
        .circuits
        .iter()
        .map(|(name, handle)| {
            let snapshot = handle.circuit().snapshot();
            serde_json::json!({
                "upstream": &**name,
                "state": state_name(snapshot.state),
                "forced": snapshot.forced,
                "retry_after_ms": snapshot.retry_after.map(|d| d.as_millis() as u64),
                "consecutive_failures": snapshot.consecutive_failures,
                "failures": snapshot.failures,
                "rejected": snapshot.rejected,
                "trips": snapshot.trips,
            })
        })
        .collect();
    errors::json_response(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": data}),
    )
}

impl IntoResponse for crate::config::ConfigError {
    fn into_response(self) -> Response {
        errors::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "config",
            self.to_string(),
        )
    }
}
