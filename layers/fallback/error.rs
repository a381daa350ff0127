//! The errors of the fallback layer.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use super::FailedTier;
use crate::classify::{classify_dyn_error, ClassifyError, FailureKind, FailurePolicy};
use crate::BoxError;

/// Every tier failed with a failure worth falling back from, and there is no final
/// responder: the failure of each tier, in the order they were tried.
///
/// It classifies as its tiers' failure, so an outer layer (a retry, a
/// [`PartialBatchLayer`](crate::partial_batch)) treats the whole chain like one
/// upstream: when any tier failed with a kind the default
/// [`FailurePolicy`](crate::classify::FailurePolicy) retries, it is the retryable
/// failure with the shortest wait (`retry_after`, none counting as zero; the
/// earliest tier on a tie), since that tier could answer soonest; otherwise it
/// is the last tier's failure. So a primary's `500` followed by a placeholder
/// tier's unknown error is a retryable `ServerError`, and a chain whose tiers are
/// all out of quota is not retried. Its [`source`](Error::source) is the last
/// tier's error, if that tier failed with an error rather than a response.
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

    /// The kind the whole chain's failure classifies as (see the type's docs).
    pub fn kind(&self) -> &FailureKind {
        let policy = FailurePolicy::DEFAULT;
        self.tiers
            .iter()
            .map(|tier| &tier.kind)
            .filter(|kind| policy.is_retryable(kind))
            .min_by_key(|kind| kind.retry_after().unwrap_or(Duration::ZERO))
            .unwrap_or_else(|| self.last_kind())
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
        self.kind().clone()
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
///
/// Its kind says why: the body ended (cleanly or not) before the stream's
/// [`TerminalEvent`](super::TerminalEvent) is
/// [`InvalidResponse`](FailureKind::InvalidResponse); an event over the size
/// limit is `InvalidResponse` too; silence longer than the idle limit is
/// [`Timeout`](FailureKind::Timeout); a broken body is its error's kind, and
/// [`Connect`](FailureKind::Connect) when that error is not one this crate knows.
///
/// `InvalidResponse` is not retried by default (part of the answer was sent) and
/// counts against a circuit (an upstream that cuts its answers short is not
/// healthy). A circuit breaker *below* the fallback layer has already recorded
/// the tier's call as a success when its response head arrived, so it does not
/// see this error; record it by hand through the breaker's handle if it should.
#[derive(Debug)]
pub struct StreamInterrupted {
    source: BoxError,
}

impl StreamInterrupted {
    pub(crate) fn new(source: BoxError) -> Self {
        Self { source }
    }

    /// Why the stream was interrupted, in the shared taxonomy.
    pub fn kind(&self) -> FailureKind {
        self.classify_error()
    }
}

impl fmt::Display for StreamInterrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event stream interrupted after it started: the answer is incomplete ({})",
            self.source
        )
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

/// Why an event stream that had started did not complete, other than a broken
/// body: the source of a [`StreamInterrupted`].
#[derive(Debug)]
#[non_exhaustive]
pub enum StreamFault {
    /// The body ended before the stream's terminal event.
    NoTerminalEvent,
    /// No bytes for longer than the idle limit.
    Silent(Duration),
    /// An event (with the line being read) grew past this many bytes.
    EventTooLarge(usize),
}

impl fmt::Display for StreamFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamFault::NoTerminalEvent => {
                f.write_str("the stream ended before its terminal event")
            }
            StreamFault::Silent(limit) => write!(f, "the stream was silent for {limit:?}"),
            StreamFault::EventTooLarge(limit) => {
                write!(f, "an event is larger than {limit} bytes")
            }
        }
    }
}

impl Error for StreamFault {}

impl ClassifyError for StreamFault {
    fn classify_error(&self) -> FailureKind {
        match self {
            StreamFault::NoTerminalEvent | StreamFault::EventTooLarge(_) => {
                FailureKind::InvalidResponse
            }
            StreamFault::Silent(_) => FailureKind::Timeout,
        }
    }
}

/// A successful answer that is not an event stream, read whole by
/// [`FirstEvent`](super::FirstEvent) before it counts, turned out broken: the tier
/// failed (classified [`InvalidResponse`](FailureKind::InvalidResponse), or
/// [`Timeout`](FailureKind::Timeout) when reading its body timed out) and the next
/// tier is tried. Nothing has been sent to the
/// client.
#[derive(Debug)]
#[non_exhaustive]
pub enum IncompleteAnswer {
    /// The body is longer than the limit (or announced so); reading stopped there.
    TooLarge(u64),
    /// The body ended after `received` of the `announced` bytes (`Content-Length`).
    Short {
        /// The `Content-Length`.
        announced: u64,
        /// What arrived.
        received: u64,
    },
    /// A JSON answer (by its `Content-Type`) that does not parse: cut short, or
    /// not JSON at all.
    NotJson,
    /// The body broke while it was read.
    Body(BoxError),
}

impl fmt::Display for IncompleteAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IncompleteAnswer::TooLarge(limit) => {
                write!(f, "the answer is larger than the limit of {limit} bytes")
            }
            IncompleteAnswer::Short {
                announced,
                received,
            } => write!(
                f,
                "the answer ended after {received} of its {announced} announced bytes"
            ),
            IncompleteAnswer::NotJson => f.write_str("the JSON answer does not parse"),
            IncompleteAnswer::Body(_) => f.write_str("the answer broke while it was read"),
        }
    }
}

impl Error for IncompleteAnswer {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            IncompleteAnswer::Body(source) => Some(&**source),
            _ => None,
        }
    }
}

impl ClassifyError for IncompleteAnswer {
    fn classify_error(&self) -> FailureKind {
        match self {
            // A 2xx cut short is a broken answer, whatever broke it, unless the
            // read timed out.
            IncompleteAnswer::Body(source) => match classify_dyn_error(&**source) {
                FailureKind::Timeout => FailureKind::Timeout,
                _ => FailureKind::InvalidResponse,
            },
            _ => FailureKind::InvalidResponse,
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
    fn all_tiers_failed_lists_each_tier_and_classifies_as_the_chain() {
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
        // Both retryable, neither with a wait: the earliest tier's.
        assert_eq!(err.classify_error(), FailureKind::ServerError);
        assert_eq!(err.last_kind(), &FailureKind::Connect);
        assert!(err.source().is_some());
        let boxed: BoxError = Box::new(err);
        assert_eq!(boxed.classify_error(), FailureKind::ServerError);
    }

    fn chain(kinds: &[FailureKind]) -> AllTiersFailed {
        AllTiersFailed {
            tiers: kinds
                .iter()
                .enumerate()
                .map(|(i, kind)| tier(i, &format!("t{i}"), kind.clone()))
                .collect(),
            errors: kinds.iter().map(|_| None).collect(),
        }
    }

    #[test]
    fn all_tiers_failed_is_retryable_when_any_tier_was() {
        use FailureKind::*;
        let secs = |n| Some(Duration::from_secs(n));
        let cases = [
            // A 500, then a placeholder tier that fails with an unknown error.
            (vec![ServerError, Other], ServerError),
            (vec![QuotaExhausted, Other], Other),
            (vec![QuotaExhausted, Auth], Auth),
            (
                vec![
                    RateLimited {
                        retry_after: secs(30),
                    },
                    Timeout,
                ],
                Timeout,
            ),
            (
                vec![
                    RateLimited {
                        retry_after: secs(30),
                    },
                    Overloaded {
                        retry_after: secs(5),
                    },
                    InvalidResponse,
                ],
                Overloaded {
                    retry_after: secs(5),
                },
            ),
            (vec![], Other),
        ];
        for (kinds, expected) in cases {
            assert_eq!(chain(&kinds).classify_error(), expected, "{kinds:?}");
        }
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
