//! Classification of errors (the `Err` side of a call).

use std::error::Error;
use std::fmt;
use std::io;

use super::FailureKind;
use crate::BoxError;

/// An error that knows its [`FailureKind`].
///
/// Each error type of this crate implements it where it is defined (the layers'
/// errors, the clients' `ClientError`), and so do tower's and tokio's timeout
/// `Elapsed`, [`std::io::Error`], `reqwest::Error` (feature `reqwest`) and
/// [`ClassifiedError`].
///
/// A type-erased error ([`BoxError`], `dyn Error`) is classified by walking it
/// and its `source()` chain, outermost first, for an error of one of those types
/// ([`classify_dyn_error`]). That walk lives at the crate root, above the layers,
/// which each supply the lookup of their own error types: this module imports no
/// layer, and a new layer adds its hook there without touching this file.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say which failure it is (`ClassifyError`)",
    label = "the layers need to classify this error type",
    note = "implement `ClassifyError` for `{Self}`, convert it into `BoxError` (`.map_err(BoxError::from)`), or wrap it in `ClassifiedError`",
    note = "or set a closure classifier `|result: &Result<_, {Self}>| -> Outcome`"
)]
pub trait ClassifyError {
    /// Why the call failed.
    fn classify_error(&self) -> FailureKind;
}

/// An error that carries its own [`FailureKind`]: the simplest way for a service of
/// your own to tell the layers what went wrong.
///
/// ```
/// use tower_llm_resilience::classify::{ClassifiedError, ClassifyError, FailureKind};
/// use tower_llm_resilience::BoxError;
///
/// let err: BoxError = ClassifiedError::new(FailureKind::ContextLengthExceeded, "prompt too long").into();
/// assert_eq!(err.classify_error(), FailureKind::ContextLengthExceeded);
/// ```
#[derive(Debug)]
pub struct ClassifiedError {
    kind: FailureKind,
    source: BoxError,
}

impl ClassifiedError {
    /// An error of `kind`, described by (or wrapping) `source`.
    pub fn new(kind: FailureKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }

    /// The kind it was given.
    pub fn kind(&self) -> &FailureKind {
        &self.kind
    }

    /// The wrapped error.
    pub fn into_inner(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for ClassifiedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.source)
    }
}

impl Error for ClassifiedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Classify any error by walking it and its `source()` chain, outermost first, for
/// a type this crate knows. Unknown errors are [`FailureKind::Other`].
pub fn classify_dyn_error(err: &(dyn Error + 'static)) -> FailureKind {
    // The implementation for `dyn Error` is at the crate root, which knows the
    // layers' error types.
    err.classify_error()
}

/// Walk `err` and its sources for an error whose kind is known: first the types
/// this module knows, then `layer_kind`, the lookup of the layers' own types.
pub(crate) fn walk_sources(
    err: &(dyn Error + 'static),
    layer_kind: impl Fn(&(dyn Error + 'static)) -> Option<FailureKind>,
) -> FailureKind {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(kind) = known_kind(err).or_else(|| layer_kind(err)) {
            return kind;
        }
        current = err.source();
    }
    FailureKind::Other
}

/// The kind of `err` if it is a `T`: one line of a layer's lookup.
pub(crate) fn kind_if<T: ClassifyError + Error + 'static>(
    err: &(dyn Error + 'static),
) -> Option<FailureKind> {
    err.downcast_ref::<T>().map(T::classify_error)
}

/// The types this module knows: its own and foreign ones.
fn known_kind(err: &(dyn Error + 'static)) -> Option<FailureKind> {
    let kind = kind_if::<ClassifiedError>(err)
        .or_else(|| kind_if::<tower::timeout::error::Elapsed>(err))
        .or_else(|| kind_if::<tokio::time::error::Elapsed>(err))
        .or_else(|| kind_if::<io::Error>(err));
    #[cfg(feature = "reqwest")]
    let kind = kind.or_else(|| kind_if::<reqwest::Error>(err));
    kind
}

impl ClassifyError for ClassifiedError {
    fn classify_error(&self) -> FailureKind {
        self.kind.clone()
    }
}

impl ClassifyError for tower::timeout::error::Elapsed {
    fn classify_error(&self) -> FailureKind {
        FailureKind::Timeout
    }
}

impl ClassifyError for tokio::time::error::Elapsed {
    fn classify_error(&self) -> FailureKind {
        FailureKind::Timeout
    }
}

impl ClassifyError for std::convert::Infallible {
    fn classify_error(&self) -> FailureKind {
        match *self {}
    }
}

impl ClassifyError for io::Error {
    fn classify_error(&self) -> FailureKind {
        use io::ErrorKind::*;
        match self.kind() {
            TimedOut => FailureKind::Timeout,
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
            | UnexpectedEof | AddrNotAvailable | AddrInUse => FailureKind::Connect,
            _ => match self.get_ref() {
                Some(inner) => classify_dyn_error(inner),
                None => FailureKind::Other,
            },
        }
    }
}

#[cfg(feature = "reqwest")]
impl ClassifyError for reqwest::Error {
    fn classify_error(&self) -> FailureKind {
        if self.is_timeout() {
            FailureKind::Timeout
        } else if self.is_connect() {
            FailureKind::Connect
        } else if let Some(status) = self.status() {
            match super::classify_status(status, &http::HeaderMap::new()) {
                super::Outcome::Failure(kind) => kind,
                super::Outcome::Success => FailureKind::Other,
            }
        } else if self.is_decode() {
            // reqwest also reports a body that broke off mid-read as a decode error;
            // its source (an io error) tells the two apart.
            match self.source().map(classify_dyn_error) {
                Some(kind @ (FailureKind::Timeout | FailureKind::Connect)) => kind,
                _ => FailureKind::InvalidResponse,
            }
        } else if self.is_body() || self.is_request() {
            // The connection broke while sending the request or reading the body;
            // look for a more precise cause (an io timeout) below.
            match self.source().map(classify_dyn_error) {
                Some(FailureKind::Timeout) => FailureKind::Timeout,
                _ => FailureKind::Connect,
            }
        } else if self.is_builder() {
            FailureKind::BadRequest
        } else {
            FailureKind::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn known_errors() {
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(elapsed.classify_error(), FailureKind::Timeout);
        let refused: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.classify_error(), FailureKind::Connect);
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(timed_out.classify_error(), FailureKind::Timeout);
        let unknown: BoxError = "boom".into();
        assert_eq!(unknown.classify_error(), FailureKind::Other);
    }

    #[test]
    fn sources_are_searched() {
        let inner: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let outer: BoxError = Box::new(Wrapper(Box::new(Wrapper(inner))));
        assert_eq!(outer.classify_error(), FailureKind::Timeout);
        let io_wrapping = io::Error::other(ClassifiedError::new(FailureKind::Auth, "no key"));
        assert_eq!(io_wrapping.classify_error(), FailureKind::Auth);
    }

    #[test]
    fn classified_error_keeps_kind_and_message() {
        let err = ClassifiedError::new(FailureKind::QuotaExhausted, "out of credit");
        assert_eq!(err.to_string(), "quota_exhausted: out of credit");
        assert!(err.source().is_some());
    }
}
