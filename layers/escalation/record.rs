use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::id::EscalationId;
use super::token::TokenHash;

/// Where in the call the policy escalated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Before the inner service was called: an approval gate.
    Request,
    /// After the inner service answered: a review of its response.
    Response,
}

/// How the caller waits for the human.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeKind {
    /// The response future waits for the resolution.
    Wait,
    /// The call returned a resume token at once.
    Detach,
}

/// The life-cycle state of an escalation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a human.
    Pending,
    /// A human (or the timeout default) let the call go on.
    Approved,
    /// A human (or the timeout default) refused it.
    Rejected,
    /// A human supplied the answer to return instead.
    Answered,
    /// Nobody resolved it before it expired.
    Expired,
    /// Wait mode: the waiting caller went away (its response future was dropped)
    /// before anyone resolved it. Nothing would act on a decision, so it can no
    /// longer be resolved: [`ResolveError::Abandoned`](super::ResolveError::Abandoned).
    Abandoned,
}

impl Status {
    /// Every status, in declaration order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Approved,
        Status::Rejected,
        Status::Answered,
        Status::Expired,
        Status::Abandoned,
    ];

    /// The lower-case name used in stores and payloads.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Answered => "answered",
            Status::Expired => "expired",
            Status::Abandoned => "abandoned",
        }
    }

    /// The status for a name written by [`Status::as_str`].
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a human decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Go on: call the inner service (approval gate) or return the reviewed response.
    Approve,
    /// Refuse, with a reason the caller sees in its error.
    Reject {
        /// Why.
        reason: String,
    },
    /// Return this payload as the response, converted by the
    /// [`Adapter`](super::Adapter).
    Answer {
        /// The human's answer.
        payload: serde_json::Value,
    },
}

impl Decision {
    /// The status a record gets when this decision resolves it.
    pub const fn status(&self) -> Status {
        match self {
            Decision::Approve => Status::Approved,
            Decision::Reject { .. } => Status::Rejected,
            Decision::Answer { .. } => Status::Answered,
        }
    }
}

/// A decision, who made it, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
    /// Who resolved it: a user name, or [`Resolution::TIMEOUT_DEFAULT`].
    pub resolved_by: String,
    /// When.
    #[serde(with = "unix_ms")]
    pub resolved_at: SystemTime,
}

impl Resolution {
    /// The `resolved_by` of a resolution applied because a wait timed out.
    pub const TIMEOUT_DEFAULT: &'static str = "system:timeout-default";
}

/// Delivery state of the notification about one escalation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationState {
    /// Attempts made so far.
    pub attempts: u32,
    /// `None` while no notifier is configured or delivery is in progress;
    /// `Some(true)` once delivered, `Some(false)` once every attempt failed.
    pub delivered: Option<bool>,
    /// The last delivery error (never contains the token or the shared secret).
    pub last_error: Option<String>,
}

/// One escalation, as a store keeps it.
///
/// Snapshots are whatever the [`Adapter`](super::Adapter) produced; the built-in
/// [`HttpAdapter`](super::HttpAdapter) never includes credentials. The resume token
/// itself is never stored, only its SHA-256 hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EscalationRecord {
    /// Public id.
    pub id: EscalationId,
    /// Bumped by every change; stores compare it to apply changes atomically.
    pub version: u64,
    /// Approval gate or response review.
    pub stage: Stage,
    /// Wait or detach.
    pub mode: ModeKind,
    /// Why the policy escalated.
    pub reason: String,
    /// Snapshot of the request.
    pub request: serde_json::Value,
    /// The [`Adapter`](super::Adapter)'s fingerprint of the escalated request: a
    /// resume is accepted only for a request with the same fingerprint. `None` when
    /// the adapter gives none (then any request may resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_fingerprint: Option<String>,
    /// Snapshot of the result so far (the response under review), if any.
    pub result: Option<serde_json::Value>,
    /// When it was created.
    #[serde(with = "unix_ms")]
    pub created_at: SystemTime,
    /// After this it can no longer be resolved or resumed.
    #[serde(with = "unix_ms")]
    pub expires_at: SystemTime,
    /// Current status.
    pub status: Status,
    /// The resolution, once resolved.
    pub resolution: Option<Resolution>,
    /// Hash of the resume token (detach mode only).
    pub token_hash: Option<TokenHash>,
    /// When the token was used to resume; a token resumes once.
    #[serde(with = "unix_ms_opt", default)]
    pub used_at: Option<SystemTime>,
    /// Delivery of the notification.
    pub notification: NotificationState,
}

impl EscalationRecord {
    /// A new pending record (version 0).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pending(
        id: EscalationId,
        stage: Stage,
        mode: ModeKind,
        reason: String,
        request: serde_json::Value,
        request_fingerprint: Option<String>,
        result: Option<serde_json::Value>,
        created_at: SystemTime,
        ttl: Duration,
        token_hash: Option<TokenHash>,
    ) -> Self {
        Self {
            id,
            version: 0,
            stage,
            mode,
            reason,
            request,
            request_fingerprint,
            result,
            created_at,
            // Builders cap every lifetime far below the overflow; saturate anyway.
            expires_at: created_at
                .checked_add(ttl)
                .unwrap_or(created_at + super::clock::MAX_LIFETIME),
            status: Status::Pending,
            resolution: None,
            token_hash,
            used_at: None,
            notification: NotificationState::default(),
        }
    }

    /// Whether the expiry time has passed at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// The status as seen at `now`: a pending record past its expiry is expired even
    /// before a store has written that down.
    pub fn status_at(&self, now: SystemTime) -> Status {
        if self.status == Status::Pending && self.is_expired_at(now) {
            Status::Expired
        } else {
            self.status
        }
    }
}

/// What happened, in an [`AuditEntry`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AuditAction {
    /// The escalation was created.
    Created {
        /// The policy's reason.
        reason: String,
    },
    /// Resolved by a human (or the timeout default, see `resolved_by`).
    Resolved {
        /// The resolution.
        resolution: Resolution,
    },
    /// The wait timed out and the configured default was applied.
    TimeoutDefault {
        /// The resolution applied.
        resolution: Resolution,
    },
    /// It expired unresolved.
    Expired,
    /// The caller resumed with its token.
    Resumed,
    /// Wait mode: the waiting caller went away before a resolution.
    Abandoned,
    /// Wait mode: the waiting call was released (shutdown) and the escalation
    /// became resumable with a token, as in detach mode.
    Released,
    /// The notification was delivered.
    NotificationDelivered {
        /// Attempts it took.
        attempts: u32,
    },
    /// Every notification attempt failed; the escalation stays pending.
    NotificationFailed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// One line of the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The escalation it is about.
    pub escalation_id: EscalationId,
    /// When.
    #[serde(with = "unix_ms")]
    pub at: SystemTime,
    /// Who: a user, `system`, or [`Resolution::TIMEOUT_DEFAULT`].
    pub actor: String,
    /// What.
    #[serde(flatten)]
    pub action: AuditAction,
}

impl AuditEntry {
    /// An entry by `actor` about `id`.
    pub fn new(
        escalation_id: EscalationId,
        at: SystemTime,
        actor: impl Into<String>,
        action: AuditAction,
    ) -> Self {
        Self {
            escalation_id,
            at,
            actor: actor.into(),
            action,
        }
    }
}

/// Milliseconds since the Unix epoch; the time format of stores and payloads, and
/// the order of [`Cursor`](super::Cursor)s, for your own [`EscalationStore`](super::EscalationStore).
pub fn to_unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The inverse of [`to_unix_ms`].
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// RFC 3339 text for humans (notifications), UTC, whole seconds.
pub(crate) fn to_rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

mod unix_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::to_unix_ms(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        u64::deserialize(d).map(super::from_unix_ms)
    }
}

mod unix_ms_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub(super) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::to_unix_ms(*t)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<u64>::deserialize(d).map(|ms| ms.map(super::from_unix_ms))
    }
}
