//! [`ApiError`]: every error the proxy answers, as clients see it: JSON in the
//! OpenAI error format (`{"error": {"message", "type", "param", "code"}}`),
//! with `Retry-After` when coming back later may help, and the escalation
//! details when a request waits for a human. Handlers return
//! `Result<_, ApiError>`; [`ApiError::from_service`] maps what a model's
//! service failed with.

use std::borrow::Cow;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use tower_llm_resilience::classify::{classify_dyn_error, FailureKind};
use tower_llm_resilience::escalation::{EscalationError, StoreError, RESUME_TOKEN_HEADER};
use tower_llm_resilience::fallback::AllTiersFailed;
use tower_llm_resilience::BoxError;

use crate::pipeline::NO_TIER;

/// An error answer in the OpenAI format. Boxed: a `Result<_, ApiError>` stays
/// one pointer wide.
#[derive(Debug)]
pub(crate) struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    status: StatusCode,
    kind: &'static str,
    code: Cow<'static, str>,
    message: String,
    retry_after: Option<Duration>,
    /// Sent as `"escalation"` next to `"error"`.
    escalation: Option<serde_json::Value>,
    /// Sent as the `x-resume-token` header.
    resume_token: Option<HeaderValue>,
    /// `WWW-Authenticate: Bearer` (a 401).
    challenge: bool,
}

impl ApiError {
    /// `status`, with `type` `kind`, `code` and `message`.
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self(Box::new(Inner {
            status,
            kind,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            escalation: None,
            resume_token: None,
            challenge: false,
        }))
    }

    /// 400: the request is not something the proxy can forward.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    /// 401: a missing or wrong key.
    pub(crate) fn unauthorized(message: &'static str) -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message,
        );
        error.0.challenge = true;
        error
    }

    /// 403 on the admin side: no admin key is configured.
    pub(crate) fn admin_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "admin_disabled",
            "no admin key is configured ([auth] admin_keys)",
        )
    }

    /// 403: a request from another site, refused.
    pub(crate) fn cross_origin(why: &'static str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "cross_origin",
            why,
        )
    }

    /// 404 for a path nothing serves, or `code` for a thing that is not there.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// 404 for a model the config does not have.
    pub(crate) fn unknown_model(model: &str) -> Self {
        Self::not_found(
            "model_not_found",
            format!("The model `{model}` does not exist"),
        )
    }

    /// 413: the body is over the limit.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 500: something on the proxy's side failed (`code` says what).
    pub(crate) fn internal(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            code,
            message,
        )
    }

    /// With a `Retry-After` of `wait` (whole seconds, rounded up, at least one).
    pub(crate) fn retry_after(mut self, wait: Duration) -> Self {
        self.0.retry_after = Some(wait);
        self
    }

    fn escalation(mut self, details: serde_json::Value) -> Self {
        self.0.escalation = Some(details);
        self
    }

    fn resume_token(mut self, token: &str) -> Self {
        self.0.resume_token = HeaderValue::from_str(token).ok();
        self
    }

    /// Its status.
    pub(crate) fn status(&self) -> StatusCode {
        self.0.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Inner {
            status,
            kind,
            code,
            message,
            retry_after,
            escalation,
            resume_token,
            challenge,
        } = *self.0;
        crate::telemetry::report_server_error(status, kind, &code);
        let mut body = serde_json::json!({
            "error": {
                "message": message,
                "type": kind,
                "param": null,
                "code": code,
            }
        });
        if let Some(escalation) = escalation {
            body["escalation"] = escalation;
        }
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(wait) = retry_after {
            // Whole seconds, rounded up, at least one: clients should not come back early.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(token) = resume_token {
            headers.insert(RESUME_TOKEN_HEADER, token);
        }
        if challenge {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl ApiError {
    /// The answer for an error of a model's service.
    pub(crate) fn from_service(err: &BoxError) -> Self {
        if let Some(refused) = crate::escalation_caps::cap_error(err) {
            return refused;
        }
        if let Some(e) = err.downcast_ref::<EscalationError>() {
            return from_escalation(e);
        }
        if let Some(all) = err.downcast_ref::<AllTiersFailed>() {
            return from_all_failed(all);
        }
        from_kind(&classify_dyn_error(&**err), &err.to_string())
    }
}

fn from_kind(kind: &FailureKind, message: &str) -> ApiError {
    match kind {
        FailureKind::BadRequest | FailureKind::ContextLengthExceeded => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            kind.name(),
            message,
        ),
        FailureKind::ContentFiltered => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "content_filter",
            message,
        ),
        FailureKind::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "timeout",
            message,
        ),
        FailureKind::CircuitOpen { retry_after } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_error",
            "circuit_open",
            message,
        )
        .retry_after(*retry_after),
        FailureKind::RateLimited { retry_after } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limited",
            message,
        )
        .retry_after(retry_after.unwrap_or(Duration::from_secs(1))),
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            kind.name(),
            message,
        ),
    }
}

fn from_all_failed(all: &AllTiersFailed) -> ApiError {
    let tiers: Vec<_> = all.tiers().iter().filter(|t| t.name() != NO_TIER).collect();
    let summary = tiers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut circuit_wait: Option<Duration> = None;
    let mut rate_wait: Option<Duration> = None;
    let (mut limited, mut other) = (0, 0);
    let earliest = |slot: &mut Option<Duration>, wait: Duration| {
        *slot = Some(slot.map_or(wait, |w| w.min(wait)));
    };
    for tier in &tiers {
        match tier.kind() {
            FailureKind::CircuitOpen { retry_after } => earliest(&mut circuit_wait, *retry_after),
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
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "all_tiers_failed",
            format!("every upstream of this model failed: {summary}"),
        );
    }
    if limited == 0 {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_error",
            "circuit_open",
            format!("every upstream of this model is suspended (circuit open): {summary}"),
        )
        .retry_after(circuit_wait.unwrap_or(Duration::from_secs(1)));
    }
    let wait = match (rate_wait, circuit_wait) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(Duration::from_secs(1)),
    };
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "rate_limited",
        format!("every upstream of this model is rate limited: {summary}"),
    )
    .retry_after(wait)
}

fn from_escalation(e: &EscalationError) -> ApiError {
    match e {
        EscalationError::Escalated(escalated) => ApiError::new(
            StatusCode::ACCEPTED,
            "escalated",
            "pending_human_review",
            format!(
                "this request waits for a human ({}); send it again with the header \
                 x-resume-token once it is resolved",
                escalated.reason
            ),
        )
        .escalation(serde_json::json!({
            "id": escalated.id.as_str(),
            "resume_token": escalated.token().expose(),
            "expires_at": humantime::format_rfc3339_seconds(escalated.expires_at).to_string(),
            "reason": escalated.reason,
        }))
        .resume_token(escalated.token().expose()),
        EscalationError::StillPending { id, .. } => ApiError::new(
            StatusCode::ACCEPTED,
            "escalated",
            "still_pending",
            format!("escalation {id} is still waiting for a human"),
        )
        .escalation(serde_json::json!({"id": id.as_str()}))
        .retry_after(Duration::from_secs(5)),
        EscalationError::Rejected {
            reason,
            resolved_by,
            ..
        } => ApiError::new(
            StatusCode::FORBIDDEN,
            "escalation_rejected",
            "rejected",
            format!("rejected by {resolved_by}: {reason}"),
        ),
        EscalationError::Expired { id } => escalation_expired(id),
        EscalationError::AlreadyUsed { id } => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "resume_token_used",
            format!("the resume token of escalation {id} was already used"),
        ),
        // The proxy is shutting down: the wait ends, the escalation does not.
        EscalationError::Released { id, resume_token } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "escalated",
            "proxy_restarting",
            format!(
                "the proxy is restarting; escalation {id} still waits for a human: \
                 once it is resolved, send this same request again with the header \
                 x-resume-token"
            ),
        )
        .escalation(serde_json::json!({"id": id.as_str(), "resume_token": resume_token.expose()}))
        .retry_after(Duration::from_secs(5))
        .resume_token(resume_token.expose()),
        EscalationError::RequestMismatch { id } => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "resume_request_mismatch",
            format!(
                "the resume token of escalation {id} was approved for another request: \
                 send the request that was escalated, unchanged"
            ),
        ),
        EscalationError::InvalidToken => ApiError::invalid_resume_token(),
        EscalationError::Store(e @ StoreError::Backend(_)) => {
            ApiError::store_unavailable("escalation", e)
        }
        other => ApiError::internal("escalation_failed", other.to_string()),
    }
}

impl ApiError {
    /// 503 for an operation its store (`what`: escalation, batch...) could not
    /// serve: unreachable, timed out, refused. Nothing was done; the same
    /// request may be sent again. The store's own words are logged, not sent.
    pub(crate) fn store_unavailable(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(store = what, error = %e, "store unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "store_unavailable",
            format!("the {what} store is unavailable; try again shortly"),
        )
        .retry_after(Duration::from_secs(5))
    }

    /// 400 for an unknown or foreign resume token.
    pub(crate) fn invalid_resume_token() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_resume_token",
            "invalid resume token",
        )
    }
}

/// 410 for an escalation past its expiry.
pub(crate) fn escalation_expired(id: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "invalid_request_error",
        "escalation_expired",
        format!("escalation {id} expired"),
    )
}
