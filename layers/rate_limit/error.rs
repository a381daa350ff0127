use std::fmt;
use std::time::Duration;

use crate::classify::{ClassifyError, FailureKind};

/// The error a [`RateLimit`](super::RateLimit) returns, at once and without
/// sending anything, while a limit is exhausted and its reset is further away than
/// the layer's `max_wait`.
///
/// It classifies as [`FailureKind::RateLimited`] with the wait until the reset,
/// the same kind a `429` gives, so a retry or fallback layer treats both alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitExceeded {
    retry_after: Duration,
}

impl RateLimitExceeded {
    /// An error that asks callers to wait `retry_after`.
    pub const fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }

    /// How long until the exhausted limit resets.
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for RateLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit exhausted: not sent, retry after {:.3}s",
            self.retry_after.as_secs_f64()
        )
    }
}

impl std::error::Error for RateLimitExceeded {}

impl ClassifyError for RateLimitExceeded {
    fn classify_error(&self) -> FailureKind {
        FailureKind::RateLimited {
            retry_after: Some(self.retry_after),
        }
    }
}
