//! The slow paths: escalating, waiting, resuming. Each runs as one boxed future.

use std::future::poll_fn;
use std::sync::Arc;

use serde_json::Value;
use tower_service::Service;
use tracing::Span;

use super::builder::{Config, Mode};
use super::engine::NewEscalation;
use super::error::{Escalated, EscalationError};
use super::policy::{EscalationPolicy, Verdict};
use super::record::{Decision, EscalationRecord, ModeKind, Stage};
use super::snapshot::Adapter;
use super::token::ResumeToken;
use crate::BoxError;

/// The `escalation` span of one slow path (`stage`: `request`, `response` or
/// `resume`); the flow records the escalation's id and outcome on it.
pub(crate) fn span(stage: &'static str) -> Span {
    tracing::info_span!(
        "escalation",
        llm.escalation.stage = stage,
        llm.escalation.id = tracing::field::Empty,
        llm.escalation.outcome = tracing::field::Empty,
    )
}

/// Record the escalation's id on the current `escalation` span.
fn record_id(id: &impl std::fmt::Display) {
    Span::current().record("llm.escalation.id", tracing::field::display(id));
}

/// An approval gate fired: record, then return a token or wait for the human.
pub(crate) async fn escalate_request<S, P, A, Req>(
    config: Arc<Config<P, A>>,
    service: S,
    request: Req,
    reason: String,
) -> Result<S::Response, BoxError>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    P: EscalationPolicy<Req, S::Response>,
    A: Adapter<Req, S::Response>,
{
    let snapshot = config.adapter.snapshot_request(&request);
    let fingerprint = config.adapter.fingerprint_request(&request);
    let escalated = Escalating {
        stage: Stage::Request,
        reason,
        request: snapshot.clone(),
        fingerprint: fingerprint.clone(),
        result: None,
    };
    let record = match create(&config, escalated).await? {
        Created::Detached(escalated) => return Err(EscalationError::Escalated(escalated).into()),
        Created::Waited(record) => record,
    };
    match decision(&record)? {
        Decision::Approve => {
            let reviewed = Reviewed {
                snapshot,
                fingerprint,
            };
            call_and_review(config, service, request, reviewed).await
        }
        Decision::Answer { payload } => answer(&config, payload),
        Decision::Reject { reason } => Err(rejected(&record, reason)),
    }
}

/// A review fired on `response`: record, then return a token or wait for the human.
pub(crate) async fn escalate_response<P, A, Req, Res>(
    config: Arc<Config<P, A>>,
    request: Reviewed,
    response: Res,
    reason: String,
) -> Result<Res, BoxError>
where
    Res: Send + 'static,
    A: Adapter<Req, Res>,
{
    let result = config.adapter.snapshot_response(&response);
    let escalated = Escalating {
        stage: Stage::Response,
        reason,
        request: request.snapshot,
        fingerprint: request.fingerprint,
        result: Some(result),
    };
    let record = match create(&config, escalated).await? {
        Created::Detached(escalated) => {
            let parked = Box::new(response);
            config
                .shared
                .park(escalated.id.clone(), escalated.expires_at, parked);
            return Err(EscalationError::Escalated(escalated).into());
        }
        Created::Waited(record) => record,
    };
    match decision(&record)? {
        Decision::Approve => Ok(response),
        Decision::Answer { payload } => answer(&config, payload),
        Decision::Reject { reason } => Err(rejected(&record, reason)),
    }
}

/// A caller came back with a token.
pub(crate) async fn resume<S, P, A, Req>(
    config: Arc<Config<P, A>>,
    service: S,
    request: Req,
    token: ResumeToken,
) -> Result<S::Response, BoxError>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    P: EscalationPolicy<Req, S::Response>,
    A: Adapter<Req, S::Response>,
{
    let fingerprint = config.adapter.fingerprint_request(&request);
    let record = config.shared.redeem(&token, fingerprint.as_deref()).await?;
    let parked = config.shared.unpark(&record.id);
    match decision(&record)? {
        Decision::Reject { reason } => Err(rejected(&record, reason)),
        Decision::Answer { payload } => answer(&config, payload),
        Decision::Approve => {
            if record.stage == Stage::Response {
                if let Some(Ok(response)) = parked.map(|p| p.downcast::<S::Response>()) {
                    return Ok(*response);
                }
                // The reviewed response is gone (the process restarted): call again,
                // and review the new response like any other.
            }
            let reviewed = Reviewed {
                snapshot: config.adapter.snapshot_request(&request),
                fingerprint,
            };
            call_and_review(config, service, request, reviewed).await
        }
    }
}

async fn call_and_review<S, P, A, Req>(
    config: Arc<Config<P, A>>,
    mut service: S,
    request: Req,
    reviewed: Reviewed,
) -> Result<S::Response, BoxError>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    P: EscalationPolicy<Req, S::Response>,
    A: Adapter<Req, S::Response>,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = service.call(request).await.map_err(Into::into)?;
    match config.policy.check_response(&response) {
        Verdict::Proceed => Ok(response),
        Verdict::Escalate { reason } => {
            Box::pin(escalate_response(config, reviewed, response, reason)).await
        }
    }
}

/// What a response review keeps of the request: its snapshot and fingerprint.
pub(crate) struct Reviewed {
    pub(crate) snapshot: Value,
    pub(crate) fingerprint: Option<String>,
}

/// What is being escalated.
struct Escalating {
    stage: Stage,
    reason: String,
    request: Value,
    fingerprint: Option<String>,
    result: Option<Value>,
}

enum Created {
    Detached(Escalated),
    Waited(Box<EscalationRecord>),
}

async fn create<P, A>(
    config: &Config<P, A>,
    escalating: Escalating,
) -> Result<Created, EscalationError> {
    let (mode, ttl) = match &config.mode {
        Mode::Detach { ttl } => (ModeKind::Detach, *ttl),
        Mode::Wait { timeout, .. } => (ModeKind::Wait, *timeout),
    };
    let new = NewEscalation {
        stage: escalating.stage,
        mode,
        reason: escalating.reason,
        request: escalating.request,
        fingerprint: escalating.fingerprint,
        result: escalating.result,
        ttl,
    };
    match &config.mode {
        Mode::Detach { .. } => match config.shared.create(new).await? {
            (record, Some(token)) => {
                record_id(&record.id);
                Span::current().record("llm.escalation.outcome", "detached");
                Ok(Created::Detached(Escalated {
                    id: record.id,
                    token,
                    expires_at: record.expires_at,
                    reason: record.reason,
                }))
            }
            (_, None) => Err(EscalationError::InvalidToken),
        },
        Mode::Wait { on_timeout, .. } => {
            let resolved = config
                .shared
                .create_and_wait(new, &on_timeout.decision(), config.poll_interval)
                .await?;
            Ok(Created::Waited(Box::new(resolved)))
        }
    }
}

fn decision(record: &EscalationRecord) -> Result<Decision, EscalationError> {
    record_id(&record.id);
    let (outcome, decision) = match &record.resolution {
        Some(resolution) => {
            let outcome = match &resolution.decision {
                Decision::Approve => "approved",
                Decision::Reject { .. } => "rejected",
                Decision::Answer { .. } => "answered",
            };
            (outcome, Ok(resolution.decision.clone()))
        }
        None => (
            "expired",
            Err(EscalationError::Expired {
                id: record.id.clone(),
            }),
        ),
    };
    Span::current().record("llm.escalation.outcome", outcome);
    decision
}

fn rejected(record: &EscalationRecord, reason: String) -> BoxError {
    let resolved_by = record
        .resolution
        .as_ref()
        .map(|r| r.resolved_by.clone())
        .unwrap_or_default();
    EscalationError::Rejected {
        id: record.id.clone(),
        reason,
        resolved_by,
    }
    .into()
}

fn answer<P, A, Req, Res>(config: &Config<P, A>, payload: Value) -> Result<Res, BoxError>
where
    A: Adapter<Req, Res>,
{
    config
        .adapter
        .answer(payload)
        .map_err(|e| EscalationError::Answer(e).into())
}
