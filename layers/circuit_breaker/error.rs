use std::fmt;
use std::time::Duration;

use crate::classify::{ClassifyError, FailureKind};

/// The error a circuit breaker returns, at once and without calling the inner
/// service, while its circuit is open (or half-open with every probe slot taken).
///
/// It says how long to wait before a call can get through. It classifies as
/// [`FailureKind::CircuitOpen`](crate::classify::FailureKind::CircuitOpen), which a
/// fallback layer skips past at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    retry_after: Duration,
}

impl CircuitOpen {
    /// An open-circuit error that asks callers to wait `retry_after`.
    pub const fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }

    /// How long until the circuit lets a probe through (zero when half-open and
    /// only waiting for a probe slot).
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit open: upstream calls suspended, retry after {:.3}s",
            self.retry_after.as_secs_f64()
        )
    }
}

impl std::error::Error for CircuitOpen {}

impl ClassifyError for CircuitOpen {
    fn classify_error(&self) -> FailureKind {
        FailureKind::CircuitOpen {
            retry_after: self.retry_after,
        }
    }
}
