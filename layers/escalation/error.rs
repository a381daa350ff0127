use std::fmt;
use std::time::SystemTime;

use super::id::EscalationId;
use super::record::EscalationRecord;
use super::token::ResumeToken;
use crate::BoxError;

/// Returned at once by a detach-mode escalation: resend the request with this token
/// once a human has resolved it.
///
/// `Display` does not show the token; read it with [`Escalated::token`].
#[derive(Clone, Debug)]
pub struct Escalated {
    /// The escalation's public id.
    pub id: EscalationId,
    /// The resume token (secret, single use).
    pub token: ResumeToken,
    /// After this the token is refused with [`EscalationError::Expired`].
    pub expires_at: SystemTime,
    /// The policy's reason.
    pub reason: String,
}

impl Escalated {
    /// The resume token.
    pub fn token(&self) -> &ResumeToken {
        &self.token
    }
}

/// The errors an [`Escalation`](super::Escalation) service returns itself (the inner
/// service's errors pass through unchanged). Downcast a `BoxError` to this type.
#[derive(Debug)]
#[non_exhaustive]
pub enum EscalationError {
    /// Detach mode: the call was escalated; resume later with the token.
    Escalated(Escalated),
    /// A human (or the timeout default) rejected the call.
    Rejected {
        /// The escalation.
        id: EscalationId,
        /// The reason given.
        reason: String,
        /// Who rejected it.
        resolved_by: String,
    },
    /// Resumed before anyone resolved the escalation; try again later.
    StillPending {
        /// The escalation.
        id: EscalationId,
        /// When it expires.
        expires_at: SystemTime,
    },
    /// The escalation or its token expired.
    Expired {
        /// The escalation.
        id: EscalationId,
    },
    /// The token was already used to resume.
    AlreadyUsed {
        /// The escalation.
        id: EscalationId,
    },
    /// The token is malformed, unknown, or does not match.
    InvalidToken,
    /// The token is valid, but the request resuming with it is not the one that was
    /// escalated (its [`Adapter`](super::Adapter) fingerprint differs: for HTTP, the
    /// method, path and query, or body). The inner service was not called and the
    /// token was not used up: its owner can still resume with the right request.
    RequestMismatch {
        /// The escalation the token belongs to.
        id: EscalationId,
    },
    /// Wait mode: the wait was ended early by
    /// [`Handle::release_waiters`](super::Handle::release_waiters) (e.g. the process is
    /// shutting down). The escalation stays pending and is now resumable like a
    /// detached one: resend the same request with `resume_token` once a human has
    /// resolved it (before its original expiry).
    Released {
        /// The escalation.
        id: EscalationId,
        /// The token to resume with (secret, single use; not shown by `Display`).
        resume_token: ResumeToken,
    },
    /// The escalation store failed; nothing was lost that had been stored.
    Store(StoreError),
    /// A human's answer could not be turned into a response.
    Answer(BoxError),
    /// No escalation id could be generated (OS random source failure).
    Random(super::token::RandomUnavailable),
}

impl fmt::Display for EscalationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EscalationError::Escalated(e) => write!(
                f,
                "escalated to a human ({}): resume with the token before {}",
                e.id,
                super::record::to_rfc3339(e.expires_at)
            ),
            EscalationError::Rejected {
                id,
                reason,
                resolved_by,
            } => write!(f, "escalation {id} rejected by {resolved_by}: {reason}"),
            EscalationError::StillPending { id, .. } => {
                write!(f, "escalation {id} is still waiting for a human")
            }
            EscalationError::Expired { id } => write!(f, "escalation {id} expired"),
            EscalationError::AlreadyUsed { id } => {
                write!(f, "the resume token of escalation {id} was already used")
            }
            EscalationError::InvalidToken => f.write_str("invalid resume token"),
            EscalationError::RequestMismatch { id } => write!(
                f,
                "the resume token of escalation {id} was granted for a different request"
            ),
            EscalationError::Released { id, .. } => write!(
                f,
                "the wait for escalation {id} was released: resume later with its token"
            ),
            EscalationError::Store(e) => write!(f, "escalation store failed: {e}"),
            EscalationError::Answer(e) => {
                write!(f, "the human answer is not a valid response: {e}")
            }
            EscalationError::Random(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for EscalationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EscalationError::Store(e) => Some(e),
            EscalationError::Answer(e) => Some(&**e),
            EscalationError::Random(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for EscalationError {
    fn from(e: StoreError) -> Self {
        EscalationError::Store(e)
    }
}

/// A store operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// An escalation with this id already exists.
    Duplicate(EscalationId),
    /// No escalation with this id.
    NotFound(EscalationId),
    /// The backend failed (I/O, database, connection).
    Backend(BoxError),
    /// A stored record could not be read back.
    Corrupt(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Duplicate(id) => write!(f, "escalation {id} already exists"),
            StoreError::NotFound(id) => write!(f, "no escalation {id}"),
            StoreError::Backend(e) => write!(f, "store backend: {e}"),
            StoreError::Corrupt(what) => write!(f, "corrupt stored escalation: {what}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Backend(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Why a [`Handle`](super::Handle) could not resolve an escalation.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResolveError {
    /// No escalation with this id.
    NotFound(EscalationId),
    /// Someone resolved it first; their resolution stands.
    AlreadyResolved(Box<EscalationRecord>),
    /// It expired unresolved.
    Expired(EscalationId),
    /// Wait mode: the waiting caller went away, so nothing would act on a decision.
    Abandoned(EscalationId),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::NotFound(id) => write!(f, "no escalation {id}"),
            ResolveError::AlreadyResolved(r) => {
                write!(f, "escalation {} was already resolved ({})", r.id, r.status)
            }
            ResolveError::Expired(id) => write!(f, "escalation {id} expired"),
            ResolveError::Abandoned(id) => write!(
                f,
                "escalation {id} was abandoned: the waiting caller went away, nothing would act on a decision"
            ),
            ResolveError::Store(e) => write!(f, "escalation store failed: {e}"),
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolveError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for ResolveError {
    fn from(e: StoreError) -> Self {
        ResolveError::Store(e)
    }
}

/// A builder was given an invalid setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError(pub(crate) String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid escalation configuration: {}", self.0)
    }
}

impl std::error::Error for BuildError {}

impl crate::classify::ClassifyError for EscalationError {
    /// A pending, rejected or wrongly resumed escalation needs a human or the caller
    /// to act: it classifies as [`BadRequest`](crate::classify::FailureKind::BadRequest),
    /// so by default it is never retried, never counted against a circuit, and never
    /// hidden by a fallback. Store and internal failures are `Other`.
    fn classify_error(&self) -> crate::classify::FailureKind {
        use crate::classify::FailureKind;
        match self {
            EscalationError::Escalated(_)
            | EscalationError::Rejected { .. }
            | EscalationError::StillPending { .. }
            | EscalationError::Expired { .. }
            | EscalationError::AlreadyUsed { .. }
            | EscalationError::InvalidToken
            | EscalationError::RequestMismatch { .. }
            | EscalationError::Released { .. } => FailureKind::BadRequest,
            EscalationError::Store(_) | EscalationError::Answer(_) | EscalationError::Random(_) => {
                FailureKind::Other
            }
        }
    }
}
