//! Errors as clients see them: JSON in the OpenAI error format.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use tower_llm_resilience::classify::{classify_dyn_error, FailureKind};
use tower_llm_resilience::escalation::{EscalationError, RESUME_TOKEN_HEADER};
use tower_llm_resilience::fallback::AllTiersFailed;
use tower_llm_resilience::BoxError;

use crate::pipeline::NO_TIER;

/// An OpenAI-format error response.
pub fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "error": {
            "message": message.into(),
            "type": kind,
            "param": null,
            "code": code,
        }
    });
    json_response(status, &body)
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// 400: the request is not something the proxy can forward.
pub fn bad_request(message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_request",
        message,
    )
}

/// 401: a missing or wrong key.
pub fn unauthorized(message: &str) -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "invalid_api_key",
        message,
    );
    response
        .headers_mut()
        .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    response
}

/// 404 for a model the config does not have.
pub fn unknown_model(model: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!("The model `{model}` does not exist"),
    )
}

/// 413: the body is over the limit.
pub fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    // Whole seconds, rounded up, at least one: clients should not come back early.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

/// The response for an error of a model's service.
pub fn from_service_error(err: &BoxError) -> Response {
    if let Some(response) = crate::escalation_caps::cap_response(err) {
        return response;
    }
    if let Some(e) = err.downcast_ref::<EscalationError>() {
        return from_escalation(e);
    }
    if let Some(all) = err.downcast_ref::<AllTiersFailed>() {
        return from_all_failed(all);
    }
    from_kind(&classify_dyn_error(&**err), &err.to_string())
}

fn from_kind(kind: &FailureKind, message: &str) -> Response {
    match kind {
        FailureKind::BadRequest | FailureKind::ContextLengthExceeded => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            kind.name(),
            message,
        ),
        FailureKind::ContentFiltered => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "content_filter",
            message,
        ),
        FailureKind::Timeout => error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "timeout",
            message,
        ),
        FailureKind::CircuitOpen { retry_after } => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_error",
                "circuit_open",
                message,
            ),
            *retry_after,
        ),
        FailureKind::RateLimited { retry_after } => with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limited",
                message,
            ),
            retry_after.unwrap_or(Duration::from_secs(1)),
        ),
        _ => error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            kind.name(),
            message,
        ),
    }
}

fn from_all_failed(all: &AllTiersFailed) -> Response {
    let tiers: Vec<_> = all.tiers().iter().filter(|t| t.name() != NO_TIER).collect();
    let summary = tiers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut circuit_wait: Option<Duration> = None;
    let mut rate_wait: Option<Duration> = None;
    let (mut open, mut limited, mut other) = (0, 0, 0);
    let earliest = |slot: &mut Option<Duration>, wait: Duration| {
        *slot = Some(slot.map_or(wait, |w| w.min(wait)));
    };
    for tier in &tiers {
        match tier.kind() {
            FailureKind::CircuitOpen { retry_after } => {
                open += 1;
                earliest(&mut circuit_wait, *retry_after);
            }
            FailureKind::RateLimited { retry_after } => {
                limited += 1;
                earliest(
                    &mut rate_wait,
                    retry_after.unwrap_or(Duration::from_secs(1)),
                );
            }
            FailureKind::QuotaExhausted => limited += 1,
            _ => other += 1,
        }
    }
    if tiers.is_empty() || other > 0 {
        return error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "all_tiers_failed",
            format!("every upstream of this model failed: {summary}"),
        );
    }
    if limited == 0 {
        let response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_error",
            "circuit_open",
            format!("every upstream of this model is suspended (circuit open): {summary}"),
        );
        return with_retry_after(response, circuit_wait.unwrap_or(Duration::from_secs(1)));
    }
    let _ = open;
    let wait = match (rate_wait, circuit_wait) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(Duration::from_secs(1)),
    };
    let response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "rate_limited",
        format!("every upstream of this model is rate limited: {summary}"),
    );
    with_retry_after(response, wait)
}

fn from_escalation(e: &EscalationError) -> Response {
    match e {
        EscalationError::Escalated(escalated) => {
            let body = serde_json::json!({
                "error": {
                    "message": format!(
                        "this request waits for a human ({}); send it again with the header \
                         x-resume-token once it is resolved",
                        escalated.reason
                    ),
                    "type": "escalated",
                    "param": null,
                    "code": "pending_human_review",
                },
                "escalation": {
                    "id": escalated.id.as_str(),
                    "resume_token": escalated.token().expose(),
                    "expires_at": humantime::format_rfc3339_seconds(escalated.expires_at).to_string(),
                    "reason": escalated.reason,
                },
            });
            let mut response = json_response(StatusCode::ACCEPTED, &body);
            if let Ok(value) = HeaderValue::from_str(escalated.token().expose()) {
                response.headers_mut().insert(RESUME_TOKEN_HEADER, value);
            }
            response
        }
        EscalationError::StillPending { id, .. } => {
            let body = serde_json::json!({
                "error": {
                    "message": format!("escalation {id} is still waiting for a human"),
                    "type": "escalated",
                    "param": null,
                    "code": "still_pending",
                },
                "escalation": {"id": id.as_str()},
            });
            with_retry_after(
                json_response(StatusCode::ACCEPTED, &body),
                Duration::from_secs(5),
            )
        }
        EscalationError::Rejected {
            reason,
            resolved_by,
            ..
        } => error(
            StatusCode::FORBIDDEN,
            "escalation_rejected",
            "rejected",
            format!("rejected by {resolved_by}: {reason}"),
        ),
        EscalationError::Expired { id } => error(
            StatusCode::GONE,
            "invalid_request_error",
            "escalation_expired",
            format!("escalation {id} expired"),
        ),
        EscalationError::AlreadyUsed { id } => error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "resume_token_used",
            format!("the resume token of escalation {id} was already used"),
        ),
        EscalationError::Released { id, resume_token } => {
            // The proxy is shutting down: the wait ends, the escalation does not.
            let body = serde_json::json!({
                "error": {
                    "message": format!(
                        "the proxy is restarting; escalation {id} still waits for a human: \
                         once it is resolved, send this same request again with the header \
                         x-resume-token"
                    ),
                    "type": "escalated",
                    "param": null,
                    "code": "proxy_restarting",
                },
                "escalation": {"id": id.as_str(), "resume_token": resume_token.expose()},
            });
            let mut response = with_retry_after(
                json_response(StatusCode::SERVICE_UNAVAILABLE, &body),
                Duration::from_secs(5),
            );
            if let Ok(value) = HeaderValue::from_str(resume_token.expose()) {
                response.headers_mut().insert(RESUME_TOKEN_HEADER, value);
            }
            response
        }
        EscalationError::RequestMismatch { id } => error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "resume_request_mismatch",
            format!(
                "the resume token of escalation {id} was approved for another request: \
                 send the request that was escalated, unchanged"
            ),
        ),
        EscalationError::InvalidToken => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_resume_token",
            "invalid resume token",
        ),
        other => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "escalation_failed",
            other.to_string(),
        ),
    }
}
