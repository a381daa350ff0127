//! Pause a call that needs a human, notify someone, resume with their decision.
//!
//! When a model hits a case it cannot resolve (an ambiguous form, an answer that
//! fails validation, an action that needs approval), an [`EscalationLayer`] records
//! an escalation, notifies a human, and continues once the human has approved,
//! rejected, or answered in the model's place.
//!
//! # The pieces
//!
//! - **Policy** ([`EscalationPolicy`]): decides from the request before the call (an
//!   approval gate) and from the response after it (a review). Built in:
//!   [`RequestPredicate`], [`ResponsePredicate`], [`policy_fn`], and the reviews
//!   [`InvalidJsonAnswer`] and [`ContentFiltered`]. Tuples combine policies.
//! - **Adapter** ([`Adapter`]): snapshots requests and responses into the record
//!   (never credentials), finds the resume token in a request, turns a human's answer
//!   into a response. [`HttpAdapter`] does this for buffered `http` types.
//! - **Mode** ([`Mode`]):
//!   - *detach*: the call fails at once with [`EscalationError::Escalated`], carrying
//!     a [`ResumeToken`] and its expiry. The caller resends the request later with the
//!     token (a `ResumeToken` request extension, or the `x-resume-token` header) and
//!     gets the resolution, or [`StillPending`](EscalationError::StillPending),
//!     [`Expired`](EscalationError::Expired), [`AlreadyUsed`](EscalationError::AlreadyUsed),
//!     [`InvalidToken`](EscalationError::InvalidToken).
//!   - *wait*: the response future waits for the resolution up to a timeout, then
//!     applies a [`TimeoutDefault`] (reject, approve, or an answer), which is recorded.
//!     The wait ends exactly when the record expires, and a reviewer listing
//!     escalations meanwhile never turns the default into an expiry. A caller that
//!     goes away (its future dropped) leaves the escalation
//!     [`Abandoned`](Status::Abandoned): it can no longer be approved or rejected
//!     ([`ResolveError::Abandoned`]). At shutdown,
//!     [`Handle::release_waiters`] ends every wait at once with
//!     [`EscalationError::Released`] and a token, so the decision can still be picked
//!     up later in detach style.
//! - **Resolution**: an approval continues (calls the inner service, or returns the
//!   reviewed response), an answer is returned as the response (through the adapter),
//!   a rejection is [`EscalationError::Rejected`].
//! - **Tokens**: 256 random bits from the OS, URL-safe; only their SHA-256 hash is
//!   stored, compared in constant time; they expire with the escalation and resume
//!   once. A token resumes only the request it was granted for: the record keeps the
//!   [`Adapter`]'s fingerprint of the escalated request (for HTTP: method, path and
//!   query, and a digest of the body), and a resume with any other request fails
//!   with [`EscalationError::RequestMismatch`], without calling the inner service
//!   and without using the token up (so a stolen token cannot be burnt for its
//!   owner). The first resolution wins, later ones get
//!   [`ResolveError::AlreadyResolved`].
//! - **[`Handle`]**: list pending escalations, get one, approve, reject with a
//!   reason, answer with a payload, naming who; read the audit trail (every change is
//!   written to it atomically with the change). A review page is built on it.
//! - **Notification** ([`Notifier`]): told about each new escalation in the
//!   background, retried with backoff ([`NotifyRetry`]). A notification that keeps
//!   failing never loses the escalation: it stays pending and the failure is
//!   recorded on it and in the audit trail. Built in: [`WebhookNotifier`] (feature
//!   `reqwest`), which POSTs a Slack-compatible JSON [`notify::WebhookPayload`] signed with
//!   HMAC-SHA256 ([`notify::sign_body`], [`notify::verify_signature`]).
//! - **Store** ([`EscalationStore`]): [`MemoryStore`], and [`SqliteStore`] (feature
//!   `sqlite`), durable across restarts. The trait is a versioned compare-and-swap,
//!   so other backends (Redis) plug in.
//!
//! What the layer's users need is at this module's root. Writing a backend, a
//! notifier or an adapter of your own takes the items of [`store`], [`notify`] and
//! [`snapshot`].
//!
//! # Example
//!
//! The seed scenario, in detach mode: the first call escalates and returns a token;
//! a human answers; the caller resumes with the token and gets the answer.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::escalation::{
//!     EscalationError, EscalationLayer, InvalidJsonAnswer, RESUME_TOKEN_HEADER,
//! };
//! use tower_llm_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // The model was asked for JSON; an answer that is not JSON goes to a human.
//! let layer = EscalationLayer::builder(InvalidJsonAnswer)
//!     .detach(Duration::from_secs(3600))
//!     .build()?;
//! let handle = layer.handle();
//!
//! let mut llm = ServiceBuilder::new().layer(layer).service_fn(|_: http::Request<Bytes>| async {
//!     let body = r#"{"choices":[{"message":{"content":"I am not sure, sorry"}}]}"#;
//!     Ok::<_, BoxError>(http::Response::new(Bytes::from(body)))
//! });
//! let request = || http::Request::post("/v1/chat/completions")
//!     .header("authorization", "Bearer sk-never-stored")
//!     .body(Bytes::from(r#"{"messages":[{"role":"user","content":"parse this form"}]}"#))
//!     .unwrap();
//!
//! // 1. The call escalates at once and hands out a token.
//! let error = llm.ready().await?.call(request()).await.unwrap_err();
//! let Some(EscalationError::Escalated(escalated)) = error.downcast_ref::<EscalationError>()
//! else { panic!("expected an escalation, got {error}") };
//!
//! // 2. A human answers (from a review page, a CLI, a Slack bot ...).
//! let pending = handle.list_pending().await?;
//! assert_eq!(pending[0].id, escalated.id);
//! assert!(!pending[0].request.to_string().contains("sk-never-stored"));
//! handle.answer(&escalated.id, "alice", serde_json::json!({"name": "Ada"})).await?;
//!
//! // 3. The caller resends the request with the token and gets the answer, once.
//! let mut resumed = request();
//! resumed.headers_mut().insert(RESUME_TOKEN_HEADER, escalated.token().expose().parse()?);
//! let response = llm.ready().await?.call(resumed).await?;
//! assert_eq!(response.body().as_ref(), br#"{"name":"Ada"}"#);
//! # Ok(())
//! # }
//! ```
//!
//! In wait mode the same call would wait for the human instead:
//! `.wait(Duration::from_secs(300), TimeoutDefault::Reject)`.
//!
//! # Readiness
//!
//! `poll_ready` is the inner service's and never fails because of escalation state.
//! Escalating and resuming calls use a clone of the inner service and drive its
//! readiness only when they call it, so no capacity is held while a human thinks.
//!
//! # Observability
//!
//! `tracing` events on creation, resolution, expiry, resume and notification, with
//! the escalation id; never prompt text, snapshots, tokens or secrets. Counters:
//! `escalation_created_total{stage,mode}`, `escalation_resolved_total{status,by_timeout}`,
//! `escalation_expired_total`, `escalation_abandoned_total`,
//! `escalation_released_total`, `escalation_resume_total{outcome}` (`resumed`,
//! `still_pending`, `expired`, `already_used`, `invalid_token`, `request_mismatch`,
//! `error`), `escalation_notifications_total{outcome}`.

mod builder;
mod clock;
mod engine;
mod error;
mod flow;
mod future;
mod handle;
mod id;
mod layer;
pub mod notify;
mod policy;
mod record;
mod service;
mod slot;
pub mod snapshot;
pub mod store;
mod token;
mod waiter;

pub use self::builder::{Builder, Mode, TimeoutDefault};
pub use self::clock::MAX_LIFETIME;
pub use self::error::{BuildError, Escalated, EscalationError, ResolveError, StoreError};
pub use self::future::ResponseFuture;
pub use self::handle::Handle;
pub use self::id::EscalationId;
pub use self::layer::EscalationLayer;
#[cfg(feature = "reqwest")]
pub use self::notify::WebhookNotifier;
pub use self::notify::{Notification, Notifier, NotifyRetry};
pub use self::policy::{
    answer_is_json, is_content_filtered, policy_fn, Check, ContentFiltered, EscalationPolicy,
    InvalidJsonAnswer, PolicyFn, RequestPredicate, ResponsePredicate, Verdict,
};
pub use self::record::{
    AuditAction, AuditEntry, Decision, EscalationRecord, ModeKind, NotificationState, Resolution,
    Stage, Status,
};
pub use self::service::Escalation;
pub use self::snapshot::{Adapter, HttpAdapter, RESUME_TOKEN_HEADER};
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use self::store::store_unreadable;
#[cfg(feature = "sqlite")]
pub use self::store::SqliteStore;
pub use self::store::{Cursor, EscalationStore, MemoryStore, Page};
pub use self::token::{RandomUnavailable, ResumeToken, TokenHash};

/// The kind of an error of one of this module's types, for the walk over a
/// type-erased error's sources (see [`ClassifyError`](crate::classify::ClassifyError)).
pub(crate) fn error_kind(
    err: &(dyn std::error::Error + 'static),
) -> Option<crate::classify::FailureKind> {
    crate::classify::kind_if::<EscalationError>(err)
}
