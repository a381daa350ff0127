//! The public identifier of an escalation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The public identifier of one escalation, e.g. `esc_3q2-7wHh0xYzK1bVd9Rm0g`.
///
/// Not a secret: it appears in notifications and review URLs. Resuming needs the
/// [`ResumeToken`](super::ResumeToken), which only the caller gets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EscalationId(String);

impl EscalationId {
    /// Wraps an id read back from a store or a URL. Any string is accepted; an
    /// unknown id simply finds nothing.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EscalationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
