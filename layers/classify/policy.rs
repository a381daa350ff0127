use super::{FailureCategory, FailureKind};

/// What the layers do with one kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decisions {
    /// Try the same call again (after a backoff, or the server's `Retry-After`).
    pub retryable: bool,
    /// Count the failure towards opening a circuit breaker.
    pub counts_against_circuit: bool,
    /// Try the next fallback tier.
    pub worth_fallback: bool,
}

impl Decisions {
    const fn new(retryable: bool, counts_against_circuit: bool, worth_fallback: bool) -> Self {
        Self {
            retryable,
            counts_against_circuit,
            worth_fallback,
        }
    }
}

/// The three decisions for every failure kind, with documented defaults that can be
/// overridden one by one.
///
/// | kind | retryable | counts against circuit | worth a fallback |
/// |---|---|---|---|
/// | `RateLimited` | yes | yes | yes |
/// | `QuotaExhausted` | no | yes | yes |
/// | `Overloaded` | yes | yes | yes |
/// | `ServerError` | yes | yes | yes |
/// | `Timeout` | yes | yes | yes |
/// | `Connect` | yes | yes | yes |
/// | `ContextLengthExceeded` | no | no | no |
/// | `ContentFiltered` | no | no | no |
/// | `Auth` | no | yes | yes |
/// | `BadRequest` | no | no | no |
/// | `InvalidResponse` | no | yes | yes |
/// | `CircuitOpen` | yes | no | yes |
/// | `Other` | no | yes | yes |
///
/// A caller bug (`BadRequest`) is never retried and by default never hidden by a
/// fallback; it does not count against a circuit, because the upstream is
/// healthy. `ContextLengthExceeded` and `ContentFiltered` are properties of the
/// prompt: a fallback layer can opt in per tier (a tier with a larger context).
///
/// `Auth` (an upstream's 401/403) is not the caller's bug: each tier calls its
/// provider with credentials of its own, so a wrong, revoked or unpaid key is
/// that tier's configuration failing. It is never retried (the same key fails
/// again), it counts against that upstream's circuit (calls stop until someone
/// fixes the key), and the next tier, with its own key, is worth trying. A
/// service that forwards its caller's credentials upstream can restore the old
/// behaviour with
/// `.with_decisions(FailureCategory::Auth, Decisions { retryable: false,
/// counts_against_circuit: false, worth_fallback: false })`.
///
/// ```
/// use tower_llm_resilience::classify::{FailureCategory, FailurePolicy};
///
/// let policy = FailurePolicy::default()
///     .with_retryable(FailureCategory::InvalidResponse, true)
///     .with_worth_fallback(FailureCategory::ContentFiltered, true);
/// assert!(policy.decisions(FailureCategory::InvalidResponse).retryable);
/// assert!(!policy.decisions(FailureCategory::BadRequest).worth_fallback);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailurePolicy {
    table: [Decisions; FailureCategory::ALL.len()],
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FailurePolicy {
    /// The defaults in the table above.
    pub const DEFAULT: FailurePolicy = {
        let mut table = [Decisions::new(false, true, true); FailureCategory::ALL.len()];
        let mut i = 0;
        while i < table.len() {
            table[i] = default_decisions(FailureCategory::ALL[i]);
            i += 1;
        }
        FailurePolicy { table }
    };

    /// The decisions for one category.
    pub const fn decisions(&self, category: FailureCategory) -> Decisions {
        self.table[category.index()]
    }

    /// Is this failure worth retrying?
    pub const fn is_retryable(&self, kind: &FailureKind) -> bool {
        self.decisions(kind.category()).retryable
    }

    /// Does this failure count towards opening a circuit?
    pub const fn counts_against_circuit(&self, kind: &FailureKind) -> bool {
        self.decisions(kind.category()).counts_against_circuit
    }

    /// Is this failure worth trying the next fallback tier for?
    pub const fn is_worth_fallback(&self, kind: &FailureKind) -> bool {
        self.decisions(kind.category()).worth_fallback
    }

    /// Replace all three decisions for one category.
    #[must_use]
    pub const fn with_decisions(mut self, category: FailureCategory, decisions: Decisions) -> Self {
        self.table[category.index()] = decisions;
        self
    }

    /// Override whether a category is retried.
    #[must_use]
    pub const fn with_retryable(mut self, category: FailureCategory, value: bool) -> Self {
        self.table[category.index()].retryable = value;
        self
    }

    /// Override whether a category counts against a circuit.
    #[must_use]
    pub const fn with_counts_against_circuit(
        mut self,
        category: FailureCategory,
        value: bool,
    ) -> Self {
        self.table[category.index()].counts_against_circuit = value;
        self
    }

    /// Override whether a category triggers a fallback.
    #[must_use]
    pub const fn with_worth_fallback(mut self, category: FailureCategory, value: bool) -> Self {
        self.table[category.index()].worth_fallback = value;
        self
    }
}

const fn default_decisions(category: FailureCategory) -> Decisions {
    use FailureCategory::*;
    match category {
        RateLimited | Overloaded | ServerError | Timeout | Connect => {
            Decisions::new(true, true, true)
        }
        QuotaExhausted | InvalidResponse | Other | Auth => Decisions::new(false, true, true),
        ContextLengthExceeded | ContentFiltered | BadRequest => Decisions::new(false, false, false),
        CircuitOpen => Decisions::new(true, false, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_table() {
        let p = FailurePolicy::default();
        let row = |c| {
            let d = p.decisions(c);
            (d.retryable, d.counts_against_circuit, d.worth_fallback)
        };
        use FailureCategory::*;
        assert_eq!(row(RateLimited), (true, true, true));
        assert_eq!(row(QuotaExhausted), (false, true, true));
        assert_eq!(row(Overloaded), (true, true, true));
        assert_eq!(row(ServerError), (true, true, true));
        assert_eq!(row(Timeout), (true, true, true));
        assert_eq!(row(Connect), (true, true, true));
        assert_eq!(row(ContextLengthExceeded), (false, false, false));
        assert_eq!(row(ContentFiltered), (false, false, false));
        assert_eq!(row(Auth), (false, true, true));
        assert_eq!(row(BadRequest), (false, false, false));
        assert_eq!(row(InvalidResponse), (false, true, true));
        assert_eq!(row(CircuitOpen), (true, false, true));
        assert_eq!(row(Other), (false, true, true));
    }

    #[test]
    fn overrides_touch_only_their_category() {
        let p = FailurePolicy::default().with_counts_against_circuit(FailureCategory::Auth, false);
        assert!(!p.decisions(FailureCategory::Auth).counts_against_circuit);
        assert!(!p.decisions(FailureCategory::Auth).retryable);
        assert!(p.decisions(FailureCategory::Auth).worth_fallback);
        assert!(
            !p.decisions(FailureCategory::BadRequest)
                .counts_against_circuit
        );
        let kind = FailureKind::RateLimited { retry_after: None };
        assert!(
            p.is_retryable(&kind) && p.counts_against_circuit(&kind) && p.is_worth_fallback(&kind)
        );
    }
}
