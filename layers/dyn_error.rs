//! How a type-erased error ([`BoxError`], `dyn Error`) classifies.
//!
//! It sits at the crate root, above the layers, because it is the one place that
//! knows every layer's error types: [`classify`](crate::classify) imports no layer,
//! each layer says how its own errors classify (their
//! [`ClassifyError`] implementations, and an `error_kind` lookup in its
//! `mod.rs`), and this file chains those lookups. A new layer adds its lookup
//! here.

use std::error::Error;

use crate::classify::{walk_sources, ClassifyError, FailureKind};
use crate::BoxError;

/// The kind of an error of one of the layers' own types.
fn layer_kind(err: &(dyn Error + 'static)) -> Option<FailureKind> {
    let kind = crate::circuit_breaker::error_kind(err)
        .or_else(|| crate::fallback::error_kind(err))
        .or_else(|| crate::escalation::error_kind(err))
        .or_else(|| crate::rate_limit::error_kind(err));
    #[cfg(feature = "reqwest")]
    let kind = kind.or_else(|| crate::client::error_kind(err));
    kind
}

/// Looks through the error and its sources for a type this crate knows.
impl ClassifyError for dyn Error + 'static {
    fn classify_error(&self) -> FailureKind {
        walk_sources(self, layer_kind)
    }
}

/// Looks through the error and its sources for a type this crate knows.
impl ClassifyError for dyn Error + Send + Sync + 'static {
    fn classify_error(&self) -> FailureKind {
        walk_sources(self, layer_kind)
    }
}

/// Looks through the error and its sources for a type this crate knows.
impl ClassifyError for BoxError {
    fn classify_error(&self) -> FailureKind {
        walk_sources(&**self, layer_kind)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::circuit_breaker::CircuitOpen;
    use crate::classify::{classify_dyn_error, FailurePolicy};
    use crate::escalation::EscalationError;

    #[test]
    fn layer_errors_are_found_in_boxes_and_sources() {
        let open: BoxError = Box::new(CircuitOpen::new(Duration::from_secs(2)));
        let kind = FailureKind::CircuitOpen {
            retry_after: Duration::from_secs(2),
        };
        assert_eq!(open.classify_error(), kind);
        let wrapped = std::io::Error::other(open);
        assert_eq!(classify_dyn_error(&wrapped), kind);
    }

    #[test]
    fn escalation_outcomes_are_not_upstream_failures() {
        let pending: BoxError = Box::new(EscalationError::InvalidToken);
        let kind = pending.classify_error();
        assert_eq!(kind, FailureKind::BadRequest);
        let policy = FailurePolicy::DEFAULT;
        assert!(!policy.is_worth_fallback(&kind) && !policy.is_retryable(&kind));
    }
}
