//! `POST /v1/chat/completions`: parse and check the request, run it through its
//! model's service, and turn the answer into the client's response (the tier
//! headers, a stream or server-sent events when asked).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue};
use tower::ServiceExt;
use tower_llm_resilience::escalation::RESUME_TOKEN_HEADER;

use super::read_body;
use crate::body::{completion_to_sse, ClientStream, ProxyBody};
use crate::cache::{Lookup, CACHE_HEADER};
use crate::client_id::ClientId;
use crate::error::ApiError;
use crate::pipeline::{answered_by, RequestMeta, Res};
use crate::request::{ChatBody, Invalid};
use crate::service::LoggedModel;
use crate::state::{AppState, Model, Shared};
use crate::usage::{report_from_body, Answered, UsageBody, UsageLog};

/// The header naming the tier that answered.
pub(crate) const TIER_HEADER: HeaderName = HeaderName::from_static("x-llm-proxy-tier");
/// The header saying whether the answer is degraded (not from the first tier).
pub(crate) const DEGRADED_HEADER: HeaderName = HeaderName::from_static("x-llm-proxy-degraded");
/// The client's model name, on requests inside the proxy (and in escalation snapshots).
pub(crate) const MODEL_HEADER: HeaderName = HeaderName::from_static("x-llm-proxy-model");

/// A chat request the proxy understood.
pub(crate) struct Prepared {
    /// The request for the model's service.
    pub(crate) request: http::Request<Bytes>,
    /// The client asked for a stream.
    pub(crate) stream: bool,
}

/// Parse and check a chat completion body, and build the request for its model.
/// `Err` is the 400 or 404 to answer.
pub(crate) fn prepare<'m>(
    models: &'m HashMap<Arc<str>, Model>,
    body: &[u8],
    force_no_stream: bool,
) -> Result<(&'m Model, Prepared), ApiError> {
    prepare_bytes(models, &Bytes::copy_from_slice(body), force_no_stream)
}

/// [`prepare`] for a body already in a `Bytes`: kept without a copy, and what
/// every tier is sent is made from it (see [`crate::request::TierBody`]).
pub(crate) fn prepare_bytes<'m>(
    models: &'m HashMap<Arc<str>, Model>,
    body: &Bytes,
    force_no_stream: bool,
) -> Result<(&'m Model, Prepared), ApiError> {
    let chat = ChatBody::parse(body).map_err(|invalid| match invalid {
        Invalid::Json(e) => ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {e}"
        )),
        Invalid::Shape(why) => ApiError::bad_request(why),
    })?;
    let Some((key, model)) = models.get_key_value(&*chat.model) else {
        return Err(ApiError::unknown_model(&chat.model));
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
    let mut response = chat_inner(&state, parts.headers, body, &client)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    crate::metrics::record_request(response.status(), started.elapsed());
    if crate::service::access_logged() {
        response.extensions_mut().insert(client);
    }
    response
}

/// The header carrying the client key id into the pipeline, where the
/// escalation snapshot keeps it: the record of who may resume.
pub(crate) const CLIENT_HEADER: HeaderName = crate::escalation_caps::CLIENT_HEADER;

/// [`chat`] without the request metrics: also the dashboard's test prompt.
pub(crate) async fn chat_inner(
    state: &AppState,
    headers: HeaderMap,
    body: Body,
    client: &ClientId,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_body).await?;
    let (mut model, mut prepared) = prepare_bytes(&state.models, &bytes, false)?;
    // With usage on, a stream is asked for its usage, which the client did not
    // ask for: taken out again on the way back (see `UsageBody`).
    let mut strip_usage = false;
    if state.usage.is_some() && prepared.stream {
        if let Some(asking) = crate::usage::with_stream_usage(&bytes) {
            (model, prepared) = prepare_bytes(&state.models, &asking, false)?;
            strip_usage = true;
        }
    }
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
        crate::resume::check_owner(state, token, client).await?;
    }
    let client_name: Arc<str> = client.as_str().into();
    if let Some(budgets) = &state.budgets {
        budgets.admit(&client_name).await?;
    }
    // A request the escalation rules may send to a human (or resuming one) is
    // never answered from the cache: that would skip the review.
    let escalating = state
        .approval_header
        .iter()
        .chain([&RESUME_TOKEN_HEADER])
        .any(|name| headers.contains_key(name));
    let lookup = match &state.cache {
        Some(_) if escalating => Some(Lookup::Bypass),
        Some(cache) => Some(
            cache
                .lookup(&headers, &bytes, &client_name, prepared.stream)
                .await,
        ),
        None => None,
    };
    if let (Some(Lookup::Hit(answer) | Lookup::Coalesced(answer)), Some(model_name)) =
        (&lookup, &model_name)
    {
        model.stats.cached();
        return Ok(cache_hit(
            state,
            answer,
            prepared.stream,
            &client_name,
            model_name,
        ));
    }
    if let Some(id) = client
        .0
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        prepared.request.headers_mut().insert(CLIENT_HEADER, id);
    }
    let tap = state
        .usage
        .clone()
        .zip(model_name.clone())
        .map(|(log, model)| UsageTap {
            log,
            client: client_name,
            model,
            strip_usage,
        });
    let cache_header = lookup.as_ref().map(Lookup::as_str);
    let mut response = match model.service.clone().oneshot(prepared.request).await {
        Ok(answer) => {
            // Only the first tier's whole, successful answers are kept.
            let keep = match answer.body() {
                ProxyBody::Full(body)
                    if answer.status().is_success()
                        && answered_by(&answer, &model.primary) == &*model.primary =>
                {
                    Some(body.clone())
                }
                _ => None,
            };
            if let (Some(Lookup::Miss(miss)), Some(cache), Some(body)) =
                (lookup, &state.cache, keep)
            {
                miss.store(cache, body).await;
            }
            respond(answer, model, prepared.stream, tap)
        }
        Err(e) => {
            model.stats.error(&e);
            ApiError::from_service(&e).into_response()
        }
    };
    if let Some(value) = cache_header {
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(value));
    }
    // For the access log only (two allocations a request when nobody reads it).
    if let Some(name) = model_name.filter(|_| crate::service::access_logged()) {
        response.extensions_mut().insert(LoggedModel(name));
    }
    Ok(response)
}

/// The response for an answer served from the cache (as an event stream when
/// the client asked for one); recorded as a cached request of no cost.
fn cache_hit(
    state: &AppState,
    answer: &Bytes,
    stream: bool,
    client: &Arc<str>,
    model: &Arc<str>,
) -> Response {
    if let Some(log) = &state.usage {
        let answered = Answered {
            client: client.clone(),
            model: model.clone(),
            tier: "cache".into(),
            cached: true,
            degraded: false,
        };
        log.record_cache_hit(&answered, answer);
    }
    let events = stream.then(|| completion_to_sse(answer)).flatten();
    let mut response = match events {
        Some(events) => {
            let mut response = Response::new(Body::from(events));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => {
            let mut response = Response::new(Body::from(answer.clone()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    headers.insert(TIER_HEADER, HeaderValue::from_static("cache"));
    headers.insert(DEGRADED_HEADER, HeaderValue::from_static("false"));
    response
}

/// Where an answer's usage is recorded: the log, who asked, for which model.
pub(crate) struct UsageTap {
    pub(crate) log: Arc<UsageLog>,
    pub(crate) client: Arc<str>,
    pub(crate) model: Arc<str>,
    /// The proxy asked the upstream for stream usage: take it out of the stream.
    pub(crate) strip_usage: bool,
}

/// The client's response for a model's answer (its usage recorded to `tap`
/// when it is a success: now for a buffered answer, at its end for a stream).
pub(crate) fn respond(answer: Res, model: &Model, stream: bool, tap: Option<UsageTap>) -> Response {
    let tier = answered_by(&answer, &model.primary);
    let degraded = tier != &*model.primary && tier != "human";
    model.stats.answer(&answer, degraded);
    let tier_header = if tier == &*model.primary {
        model.primary_answers.increment(1);
        model.primary_header.clone()
    } else {
        crate::metrics::record_answer(tier, degraded);
        HeaderValue::from_str(tier).ok()
    };
    let usage_tier = tap.as_ref().map(|_| Arc::<str>::from(tier));
    let (mut parts, body) = answer.into_parts();
    parts.extensions.clear();
    let success = parts.status.is_success();
    let strip_usage = tap.as_ref().is_some_and(|tap| tap.strip_usage);
    let usage = tap.zip(usage_tier).filter(|_| success).map(|(tap, tier)| {
        let answered = Answered {
            client: tap.client,
            model: tap.model,
            tier,
            cached: false,
            degraded,
        };
        (tap.log, answered)
    });
    let body = match body {
        ProxyBody::Full(bytes) => {
            if let Some((log, answered)) = &usage {
                log.record(answered, report_from_body(&bytes));
            }
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
            match usage {
                Some((log, answered)) => Body::new(ClientStream::new(UsageBody::new(
                    stream_body,
                    log,
                    answered,
                    strip_usage,
                ))),
                None => Body::new(ClientStream::new(stream_body)),
            }
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
