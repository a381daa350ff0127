//! Telling humans that an escalation waits for them: the [`Notifier`] trait, the
//! built-in [`WebhookNotifier`] (feature `reqwest`), and what a webhook receiver
//! needs to check a payload ([`verify_signature`], [`SIGNATURE_HEADER`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use super::error::BuildError;
use super::id::EscalationId;
use super::record::{EscalationRecord, Stage};
use crate::BoxError;

mod dispatch;
mod webhook;

#[cfg(feature = "reqwest")]
pub use self::webhook::WebhookNotifier;
pub use self::webhook::{sign_body, verify_signature, WebhookPayload, SIGNATURE_HEADER};

/// What a notifier is told: never the token, never the snapshots (they may hold
/// prompt text); the reviewer follows `review_url` to see them.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Notification {
    /// The escalation.
    pub id: EscalationId,
    /// Approval gate or response review.
    pub stage: Stage,
    /// The policy's reason.
    pub reason: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it expires.
    pub expires_at: SystemTime,
    /// Where a human reviews it, if a review URL base was configured.
    pub review_url: Option<String>,
}

impl Notification {
    pub(crate) fn for_record(record: &EscalationRecord, review_base: Option<&str>) -> Self {
        Self {
            id: record.id.clone(),
            stage: record.stage,
            reason: record.reason.clone(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            review_url: review_base
                .map(|base| format!("{}/{}", base.trim_end_matches('/'), record.id)),
        }
    }
}

/// The future a [`Notifier`] returns.
pub type NotifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>>;

/// Delivers one notification, once. The layer retries failed attempts with backoff
/// (see [`NotifyRetry`]) and records the outcome on the escalation.
pub trait Notifier: Send + Sync + fmt::Debug + 'static {
    /// One delivery attempt.
    fn notify<'a>(&'a self, notification: &'a Notification) -> NotifyFuture<'a>;
}

/// One failed delivery attempt.
#[derive(Debug)]
#[non_exhaustive]
pub enum NotifyError {
    /// The receiver answered with a non-success status.
    Rejected {
        /// The HTTP status.
        status: u16,
    },
    /// The attempt did not finish within [`NotifyRetry::attempt_timeout`].
    TimedOut,
    /// Connecting or sending failed.
    Transport(BoxError),
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyError::Rejected { status } => write!(f, "receiver answered {status}"),
            NotifyError::TimedOut => f.write_str("notification attempt timed out"),
            NotifyError::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

impl std::error::Error for NotifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NotifyError::Transport(e) => Some(&**e),
            _ => None,
        }
    }
}

/// How failed notification attempts are retried: exponential backoff from
/// `initial_backoff`, doubling up to `max_backoff`, for at most `attempts` attempts.
///
/// Defaults: 5 attempts, 1 s doubling to 60 s, 10 s per attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifyRetry {
    attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    attempt_timeout: Duration,
}

impl Default for NotifyRetry {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl NotifyRetry {
    /// A retry schedule; `attempts` counts the first try. Errors on zero attempts,
    /// a zero timeout, or `max_backoff < initial_backoff`.
    pub fn new(
        attempts: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
        attempt_timeout: Duration,
    ) -> Result<Self, BuildError> {
        if attempts == 0 {
            return Err(BuildError(
                "notification attempts must be at least 1".into(),
            ));
        }
        if attempt_timeout.is_zero() {
            return Err(BuildError(
                "notification attempt timeout must be positive".into(),
            ));
        }
        if max_backoff < initial_backoff {
            return Err(BuildError(
                "max_backoff is shorter than initial_backoff".into(),
            ));
        }
        Ok(Self {
            attempts,
            initial_backoff,
            max_backoff,
            attempt_timeout,
        })
    }

    /// Attempts in all.
    pub const fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time allowed for one attempt.
    pub const fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}
