use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The outcome of one call, as every layer of this crate sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call answered and the answer is usable.
    Success,
    /// The call failed, for the reason given.
    Failure(FailureKind),
}

impl Outcome {
    /// `true` for [`Outcome::Success`].
    pub const fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// The failure kind, if this is a failure.
    pub const fn failure(&self) -> Option<&FailureKind> {
        match self {
            Outcome::Success => None,
            Outcome::Failure(kind) => Some(kind),
        }
    }
}

/// Why a call failed: the shared taxonomy of LLM-call failures.
///
/// Variants that can carry a server-given wait (`Retry-After`, provider reset
/// headers, or an open circuit's remaining time) carry it as `retry_after`.
/// Each kind has a [`FailureCategory`] (the same kind without its data), which is
/// what [`FailurePolicy`](super::FailurePolicy) decisions are keyed on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// 429, or a provider `rate_limit_error`: try again later.
    RateLimited {
        /// How long the server asked us to wait, if it said.
        #[serde(default, with = "opt_millis")]
        retry_after: Option<Duration>,
    },
    /// A 429 whose body says the account is out of quota (OpenAI's
    /// `insufficient_quota`): retrying will not help, another provider might.
    QuotaExhausted,
    /// 503, 529, or a provider `overloaded_error`.
    Overloaded {
        /// How long the server asked us to wait, if it said.
        #[serde(default, with = "opt_millis")]
        retry_after: Option<Duration>,
    },
    /// Any other 5xx.
    ServerError,
    /// The call or the server timed out (408, tower's `Elapsed`, a client timeout).
    Timeout,
    /// The connection could not be made or broke before an answer.
    Connect,
    /// The prompt does not fit the model's context window.
    ContextLengthExceeded,
    /// The provider refused the prompt or the answer on content policy grounds.
    ContentFiltered,
    /// 401 or 403: the credentials are wrong or lack permission.
    Auth,
    /// Any other 4xx: the request is wrong.
    BadRequest,
    /// A 2xx whose body is an error object or cannot be parsed.
    InvalidResponse,
    /// A circuit breaker rejected the call without calling the upstream.
    CircuitOpen {
        /// How long until the circuit lets a probe through.
        #[serde(with = "millis")]
        retry_after: Duration,
    },
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The kind without its data, the key of [`FailurePolicy`](super::FailurePolicy).
    pub const fn category(&self) -> FailureCategory {
        match self {
            FailureKind::RateLimited { .. } => FailureCategory::RateLimited,
            FailureKind::QuotaExhausted => FailureCategory::QuotaExhausted,
            FailureKind::Overloaded { .. } => FailureCategory::Overloaded,
            FailureKind::ServerError => FailureCategory::ServerError,
            FailureKind::Timeout => FailureCategory::Timeout,
            FailureKind::Connect => FailureCategory::Connect,
            FailureKind::ContextLengthExceeded => FailureCategory::ContextLengthExceeded,
            FailureKind::ContentFiltered => FailureCategory::ContentFiltered,
            FailureKind::Auth => FailureCategory::Auth,
            FailureKind::BadRequest => FailureCategory::BadRequest,
            FailureKind::InvalidResponse => FailureCategory::InvalidResponse,
            FailureKind::CircuitOpen { .. } => FailureCategory::CircuitOpen,
            FailureKind::Other => FailureCategory::Other,
        }
    }

    /// The wait the server (or an open circuit) asked for, if any.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            FailureKind::RateLimited { retry_after } | FailureKind::Overloaded { retry_after } => {
                *retry_after
            }
            FailureKind::CircuitOpen { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The same kind with `retry_after` set, for the kinds that carry one.
    #[must_use]
    pub fn with_retry_after(self, wait: Option<Duration>) -> Self {
        match self {
            FailureKind::RateLimited { .. } => FailureKind::RateLimited { retry_after: wait },
            FailureKind::Overloaded { .. } => FailureKind::Overloaded { retry_after: wait },
            other => other,
        }
    }

    /// A short snake_case name, stable across releases (used in metrics labels).
    pub const fn name(&self) -> &'static str {
        self.category().name()
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if let Some(wait) = self.retry_after() {
            if wait.subsec_nanos() == 0 {
                write!(f, " (retry after {}s)", wait.as_secs())?;
            } else {
                write!(f, " (retry after {:.3}s)", wait.as_secs_f64())?;
            }
        }
        Ok(())
    }
}

/// A [`FailureKind`] without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureCategory {
    /// See [`FailureKind::RateLimited`].
    RateLimited,
    /// See [`FailureKind::QuotaExhausted`].
    QuotaExhausted,
    /// See [`FailureKind::Overloaded`].
    Overloaded,
    /// See [`FailureKind::ServerError`].
    ServerError,
    /// See [`FailureKind::Timeout`].
    Timeout,
    /// See [`FailureKind::Connect`].
    Connect,
    /// See [`FailureKind::ContextLengthExceeded`].
    ContextLengthExceeded,
    /// See [`FailureKind::ContentFiltered`].
    ContentFiltered,
    /// See [`FailureKind::Auth`].
    Auth,
    /// See [`FailureKind::BadRequest`].
    BadRequest,
    /// See [`FailureKind::InvalidResponse`].
    InvalidResponse,
    /// See [`FailureKind::CircuitOpen`].
    CircuitOpen,
    /// See [`FailureKind::Other`].
    Other,
}

impl FailureCategory {
    /// Every category, in declaration order.
    pub const ALL: [FailureCategory; 13] = [
        FailureCategory::RateLimited,
        FailureCategory::QuotaExhausted,
        FailureCategory::Overloaded,
        FailureCategory::ServerError,
        FailureCategory::Timeout,
        FailureCategory::Connect,
        FailureCategory::ContextLengthExceeded,
        FailureCategory::ContentFiltered,
        FailureCategory::Auth,
        FailureCategory::BadRequest,
        FailureCategory::InvalidResponse,
        FailureCategory::CircuitOpen,
        FailureCategory::Other,
    ];

    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// A short snake_case name, stable across releases.
    pub const fn name(self) -> &'static str {
        match self {
            FailureCategory::RateLimited => "rate_limited",
            FailureCategory::QuotaExhausted => "quota_exhausted",
            FailureCategory::Overloaded => "overloaded",
            FailureCategory::ServerError => "server_error",
            FailureCategory::Timeout => "timeout",
            FailureCategory::Connect => "connect",
            FailureCategory::ContextLengthExceeded => "context_length_exceeded",
            FailureCategory::ContentFiltered => "content_filtered",
            FailureCategory::Auth => "auth",
            FailureCategory::BadRequest => "bad_request",
            FailureCategory::InvalidResponse => "invalid_response",
            FailureCategory::CircuitOpen => "circuit_open",
            FailureCategory::Other => "other",
        }
    }
}

impl fmt::Display for FailureCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|ms| ms.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_rounds_waits_to_milliseconds() {
        let kind = FailureKind::CircuitOpen {
            retry_after: Duration::from_nanos(30_925_965_782),
        };
        assert_eq!(kind.to_string(), "circuit_open (retry after 30.926s)");
        let whole = FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(20)),
        };
        assert_eq!(whole.to_string(), "rate_limited (retry after 20s)");
        assert_eq!(FailureKind::Auth.to_string(), "auth");
    }

    #[test]
    fn serde_round_trip_keeps_waits() {
        let kind = FailureKind::Overloaded {
            retry_after: Some(Duration::from_millis(1500)),
        };
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, r#"{"kind":"overloaded","retry_after":1500}"#);
        assert_eq!(serde_json::from_str::<FailureKind>(&json).unwrap(), kind);
    }
}
