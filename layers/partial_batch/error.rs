use std::fmt;
use std::time::Duration;

use super::store::StoreError;

/// Why a batch produced no report at all. Failing items never cause this: they are
/// reported in the [`BatchReport`](super::BatchReport).
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchError {
    /// Two items share a key. Nothing was called.
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// The idempotency store could not say what already succeeded. Nothing was
    /// called, so nothing already done is done twice.
    Store(StoreError),
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::DuplicateKey { key } => write!(
                f,
                "duplicate item key {key:?} in batch: keys must be unique; nothing was sent"
            ),
            BatchError::Store(_) => f.write_str(
                "could not load the batch's recorded results from the store; nothing was sent",
            ),
        }
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BatchError::Store(err) => Some(err),
            BatchError::DuplicateKey { .. } => None,
        }
    }
}

/// A [`PartialBatchLayer`](super::PartialBatchLayer) configuration that makes no
/// sense, reported by [`build`](super::PartialBatchLayerBuilder::build).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `concurrency` must be at least 1.
    ZeroConcurrency,
    /// `max_attempts` must be at least 1 (1 means no retries).
    ZeroMaxAttempts,
    /// The base backoff must be positive and not above the maximum.
    InvalidBackoff {
        /// The base given.
        base: Duration,
        /// The maximum given.
        max: Duration,
    },
    /// A deadline must be positive.
    ZeroDeadline,
    /// A duration is longer than [`MAX_DURATION`](super::MAX_DURATION) (ten years);
    /// longer values would overflow `Instant` arithmetic at call time.
    TooLong {
        /// The setting (`deadline`, `max_backoff`).
        setting: &'static str,
        /// The value given.
        value: Duration,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroConcurrency => {
                f.write_str("partial batch: concurrency must be at least 1")
            }
            ConfigError::ZeroMaxAttempts => f.write_str(
                "partial batch: max_attempts must be at least 1 (1 means no retries)",
            ),
            ConfigError::InvalidBackoff { base, max } => write!(
                f,
                "partial batch: backoff base ({base:?}) must be positive and not above the maximum ({max:?})"
            ),
            ConfigError::ZeroDeadline => f.write_str("partial batch: deadline must be positive"),
            ConfigError::TooLong { setting, value } => write!(
                f,
                "partial batch: {setting} of {value:?} is longer than the maximum of {:?} (ten years)",
                super::MAX_DURATION
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
