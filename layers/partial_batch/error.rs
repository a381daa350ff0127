use std::fmt;

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
