//! The errors of the fallback layer.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use super::FailedTier;
use crate::classify::{classify_dyn_error, ClassifyError, FailureKind};
use crate::BoxError;

/// Every tier failed with a failure worth falling back from, and there is no final
/// responder: the failure of each tier, in the order they were tried.
///
/// It classifies as the kind of the last tier's failure (so an outer layer sees,
/// for example, the last `retry_after`), and its [`source`](Error::source) is the
/// last tier's error, if that tier failed with an error rather than a response.
#[derive(Debug)]
pub struct AllTiersFailed {
    pub(crate) tiers: Vec<FailedTier>,
    pub(crate) errors: Vec<Option<BoxError>>,
}

impl AllTiersFailed {
    /// The tiers tried, in order, with the kind of each failure.
    pub fn tiers(&self) -> &[FailedTier] {
        &self.tiers
    }

    /// Each tier with its error; `None` for a tier that answered with a failure
    /// response (a 503, a 429, ...), whose kind says what it was.
    pub fn failures(&self) -> impl Iterator<Item = (&FailedTier, Option<&BoxError>)> + '_ {
        self.tiers
            .iter()
            .zip(self.errors.iter().map(Option::as_ref))
    }

    /// The kind of the last tier's failure.
    pub fn last_kind(&self) -> &FailureKind {
        self.tiers
            .last()
            .map_or(&FailureKind::Other, |tier| &tier.kind)
    }
}

impl fmt::Display for AllTiersFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} fallback tiers failed", self.tiers.len())?;
        for (i, tier) in self.tiers.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{tier}")?;
        }
        Ok(())
    }
}

impl Error for AllTiersFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        let last = self.errors.last()?.as_ref()?;
        Some(&**last)
    }
}

impl ClassifyError for AllTiersFailed {
    fn classify_error(&self) -> FailureKind {
        self.last_kind().clone()
    }
}

/// An event stream that failed before its first `data:` event: the tier did not
/// answer, and the next tier is tried. Nothing has been sent to the client.
#[derive(Debug)]
#[non_exhaustive]
pub enum FirstEventError {
    /// No `data:` event within the time-to-first-token limit after the response head.
    TimedOut(Duration),
    /// The stream ended cleanly before any `data:` event.
    Closed,
    /// The stream broke (connection reset, cut, ...) before any `data:` event.
    Body(BoxError),
    /// The first event is a provider error (`event: error`, or a data payload that
    /// is an OpenAI or Anthropic error object), classified as this kind.
    ErrorEvent(FailureKind),
    /// More than this many bytes arrived without a complete `data:` event.
    TooLarge(usize),
}

impl fmt::Display for FirstEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirstEventError::TimedOut(limit) => {
                write!(f, "no event-stream data event within {limit:?}")
            }
            FirstEventError::Closed => {
                f.write_str("event stream ended before its first data event")
            }
            FirstEventError::Body(_) => {
                f.write_str("event stream broke before its first data event")
            }
            FirstEventError::ErrorEvent(kind) => {
                write!(f, "event stream started with an error event ({kind})")
            }
            FirstEventError::TooLarge(limit) => {
                write!(f, "no event-stream data event in the first {limit} bytes")
            }
        }
    }
}

impl Error for FirstEventError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            FirstEventError::Body(source) => Some(&**source),
            _ => None,
        }
    }
}

impl ClassifyError for FirstEventError {
    fn classify_error(&self) -> FailureKind {
        match self {
            FirstEventError::TimedOut(_) => FailureKind::Timeout,
            FirstEventError::Closed | FirstEventError::TooLarge(_) => FailureKind::InvalidResponse,
            FirstEventError::Body(source) => match classify_dyn_error(&**source) {
                // A body that breaks for a reason we cannot name is a broken connection.
                FailureKind::Other => FailureKind::Connect,
                kind => kind,
            },
            FirstEventError::ErrorEvent(kind) => kind.clone(),
        }
    }
}

/// The body error of an event stream that broke after its first event: the client
/// has already received part of the answer, so it is told the answer is
/// incomplete instead of seeing a cleanly ended stream.
#[derive(Debug)]
pub struct StreamInterrupted {
    source: BoxError,
}

impl StreamInterrupted {
    pub(crate) fn new(source: BoxError) -> Self {
        Self { source }
    }
}

impl fmt::Display for StreamInterrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("event stream interrupted after it started: the answer is incomplete")
    }
}

impl Error for StreamInterrupted {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

impl ClassifyError for StreamInterrupted {
    fn classify_error(&self) -> FailureKind {
        match classify_dyn_error(&*self.source) {
            FailureKind::Other => FailureKind::Connect,
            kind => kind,
        }
    }
}

/// A fallback configuration that cannot work, reported by
/// [`FallbackBuilder::build`](super::FallbackBuilder::build).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackConfigError {
    /// Neither an alternate nor a final responder: there is nothing to fall back to.
    NoTiers,
    /// A tier name is empty.
    EmptyName,
    /// Two tiers have the same name, so markers and errors would be ambiguous.
    DuplicateName(String),
    /// Hedging needs an alternate to hedge to.
    HedgeWithoutAlternate,
    /// A zero duration where a positive one is needed (the setting's name).
    ZeroDuration(&'static str),
}

impl fmt::Display for FallbackConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackConfigError::NoTiers => {
                f.write_str("a fallback layer needs at least one alternate or a final responder")
            }
            FallbackConfigError::EmptyName => f.write_str("fallback tier names must not be empty"),
            FallbackConfigError::DuplicateName(name) => {
                write!(
                    f,
                    "two fallback tiers are named {name:?}; names must be unique"
                )
            }
            FallbackConfigError::HedgeWithoutAlternate => {
                f.write_str("hedging needs at least one alternate tier")
            }
            FallbackConfigError::ZeroDuration(setting) => {
                write!(f, "fallback setting `{setting}` must be greater than zero")
            }
        }
    }
}

impl Error for FallbackConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn tier(index: usize, name: &str, kind: FailureKind) -> FailedTier {
        FailedTier {
            index,
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn all_tiers_failed_lists_each_tier_and_classifies_as_the_last() {
        let err = AllTiersFailed {
            tiers: vec![
                tier(0, "gpt", FailureKind::ServerError),
                tier(1, "claude", FailureKind::Connect),
            ],
            errors: vec![
                None,
                Some(io::Error::from(io::ErrorKind::ConnectionRefused).into()),
            ],
        };
        assert_eq!(
            err.to_string(),
            "all 2 fallback tiers failed: gpt: server_error; claude: connect"
        );
        assert_eq!(err.classify_error(), FailureKind::Connect);
        assert!(err.source().is_some());
        let boxed: BoxError = Box::new(err);
        assert_eq!(boxed.classify_error(), FailureKind::Connect);
    }

    #[test]
    fn first_event_errors_classify() {
        assert_eq!(
            FirstEventError::TimedOut(Duration::from_secs(1)).classify_error(),
            FailureKind::Timeout
        );
        assert_eq!(
            FirstEventError::Closed.classify_error(),
            FailureKind::InvalidResponse
        );
        assert_eq!(
            FirstEventError::Body("reset".into()).classify_error(),
            FailureKind::Connect
        );
        let boxed: BoxError = Box::new(FirstEventError::ErrorEvent(
            FailureKind::ContextLengthExceeded,
        ));
        assert_eq!(boxed.classify_error(), FailureKind::ContextLengthExceeded);
        let cut: BoxError = Box::new(StreamInterrupted::new("cut".into()));
        assert_eq!(cut.classify_error(), FailureKind::Connect);
    }
}
