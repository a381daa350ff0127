//! The marker an answer from a lower tier carries.

use std::fmt;
use std::sync::Arc;

use crate::classify::{ClassifyResponse, FailureKind, Outcome};

/// One tier that was tried and failed, in the order they were tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedTier {
    pub(crate) index: usize,
    pub(crate) name: Arc<str>,
    pub(crate) kind: FailureKind,
}

impl FailedTier {
    /// The tier's position: `0` is the primary, `1..` the alternates in the order
    /// they were added, and the final responder comes last.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The tier's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why it failed.
    pub fn kind(&self) -> &FailureKind {
        &self.kind
    }
}

impl fmt::Display for FailedTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.kind)
    }
}

/// Marks an answer that did not come from the primary: which tier answered, its
/// name, and the failure of each tier tried before it.
///
/// A [`Fallback`](super::Fallback) puts it in the extensions of an
/// `http::Response` (and of a `reqwest::Response`), or hands it to any response type
/// through [`MarkDegraded`]. An answer from the primary carries no marker.
///
/// ```
/// use tower_llm_resilience::fallback::{Degraded, MarkDegraded};
///
/// let response = http::Response::new("hello");
/// assert!(response.degraded().is_none()); // the primary answered
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Degraded {
    pub(crate) index: usize,
    pub(crate) name: Arc<str>,
    pub(crate) failed: Vec<FailedTier>,
    pub(crate) hedged: bool,
}

impl Degraded {
    /// The position of the tier that answered (`1..` for alternates; the final
    /// responder comes after the last alternate).
    pub fn tier(&self) -> usize {
        self.index
    }

    /// The name of the tier that answered.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tiers tried before it, in order, with the kind of each failure. Empty
    /// when the answer won a hedge race before any tier failed.
    pub fn failed(&self) -> &[FailedTier] {
        &self.failed
    }

    /// `true` when a hedged call was started during this request (the answer may
    /// have come from the hedge, and the other call was dropped).
    pub fn hedged(&self) -> bool {
        self.hedged
    }
}

impl fmt::Display for Degraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "answered by tier {} ({})", self.index, self.name)?;
        if self.hedged {
            f.write_str(", hedged")?;
        }
        for (i, failed) in self.failed.iter().enumerate() {
            f.write_str(if i == 0 { " after " } else { ", " })?;
            write!(f, "{failed}")?;
        }
        Ok(())
    }
}

/// A response type that can carry a [`Degraded`] marker.
///
/// Implemented for `http::Response<B>` and `reqwest::Response` (in their
/// extensions) and for [`Marked<T>`], the wrapper for types that have no room of
/// their own. Implement it for your own response types to read the marker from a
/// field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot carry the fallback's `Degraded` marker",
    label = "a fallback's answer must be able to say it was degraded",
    note = "implement `MarkDegraded` for `{Self}` (a field for the marker), or map every tier's answers into `Marked<{Self}>` with `.map_response(Marked::new)`",
    note = "`http::Response<B>`, `reqwest::Response`, `ChatResponse`, `ChatStream` and `Marked<T>` implement it"
)]
pub trait MarkDegraded {
    /// Attach the marker (called once, on answers from tiers other than the primary).
    fn mark_degraded(&mut self, marker: Degraded);

    /// The marker, if this answer is degraded.
    fn degraded(&self) -> Option<&Degraded>;
}

impl<B> MarkDegraded for http::Response<B> {
    fn mark_degraded(&mut self, marker: Degraded) {
        self.extensions_mut().insert(marker);
    }

    fn degraded(&self) -> Option<&Degraded> {
        self.extensions().get()
    }
}

#[cfg(feature = "reqwest")]
impl MarkDegraded for reqwest::Response {
    fn mark_degraded(&mut self, marker: Degraded) {
        self.extensions_mut().insert(marker);
    }

    fn degraded(&self) -> Option<&Degraded> {
        self.extensions().get()
    }
}

/// A response of any type, with room for the [`Degraded`] marker.
///
/// Map each tier's responses into it (`ServiceBuilder::map_response(Marked::new)`)
/// when the response type is not one of yours and has no extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marked<T> {
    /// The answer.
    pub value: T,
    /// Set when the answer did not come from the primary.
    pub degraded: Option<Degraded>,
}

impl<T> Marked<T> {
    /// An unmarked answer.
    pub const fn new(value: T) -> Self {
        Self {
            value,
            degraded: None,
        }
    }

    /// The answer, without the marker.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> From<T> for Marked<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T> MarkDegraded for Marked<T> {
    fn mark_degraded(&mut self, marker: Degraded) {
        self.degraded = Some(marker);
    }

    fn degraded(&self) -> Option<&Degraded> {
        self.degraded.as_ref()
    }
}

/// A marked answer classifies as the answer it wraps.
impl<T: ClassifyResponse> ClassifyResponse for Marked<T> {
    fn classify_response(&self) -> Outcome {
        self.value.classify_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn marker() -> Degraded {
        Degraded {
            index: 2,
            name: "template".into(),
            failed: vec![
                FailedTier {
                    index: 0,
                    name: "gpt".into(),
                    kind: FailureKind::ServerError,
                },
                FailedTier {
                    index: 1,
                    name: "claude".into(),
                    kind: FailureKind::RateLimited {
                        retry_after: Some(Duration::from_secs(2)),
                    },
                },
            ],
            hedged: false,
        }
    }

    #[test]
    fn http_responses_carry_the_marker_in_extensions() {
        let mut response = http::Response::new(());
        response.mark_degraded(marker());
        assert_eq!(response.extensions().get::<Degraded>(), Some(&marker()));
        assert_eq!(response.degraded().unwrap().name(), "template");
    }

    #[test]
    fn marked_wraps_other_types() {
        let mut answer = Marked::new("canned");
        assert!(answer.degraded().is_none());
        answer.mark_degraded(marker());
        assert_eq!(answer.degraded().unwrap().failed().len(), 2);
        assert_eq!(answer.into_inner(), "canned");
    }

    #[test]
    fn display_lists_the_failures_in_order() {
        assert_eq!(
            marker().to_string(),
            "answered by tier 2 (template) after gpt: server_error, claude: rate_limited (retry after 2s)"
        );
    }
}
