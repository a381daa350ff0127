//! Paging through a store: [`Cursor`] and [`Page`].

use std::fmt;

use crate::escalation::id::EscalationId;
use crate::escalation::record::{to_unix_ms, EscalationRecord};

/// Where the next page starts: just after the record created at `created_at_ms`
/// with id `id` (records are ordered by creation time, then id).
///
/// Its text form (`{created_at_ms}.{id}`) is what an API hands to clients; it is
/// not a secret and not a grant, just a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Creation time of the last record of the previous page, in Unix ms.
    pub created_at_ms: u64,
    /// Its id.
    pub id: EscalationId,
}

impl Cursor {
    /// The position just after `record`.
    pub fn after(record: &EscalationRecord) -> Self {
        Self {
            created_at_ms: to_unix_ms(record.created_at),
            id: record.id.clone(),
        }
    }

    /// Reads the text form; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, id) = text.split_once('.')?;
        if id.is_empty() || id.len() > 128 {
            return None;
        }
        Some(Self {
            created_at_ms: ms.parse().ok()?,
            id: EscalationId::new(id),
        })
    }

    /// Whether a record created at `created_at_ms` with `id` comes after it.
    pub fn precedes(&self, created_at_ms: u64, id: &EscalationId) -> bool {
        (created_at_ms, id) > (self.created_at_ms, &self.id)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.created_at_ms, self.id)
    }
}

/// One page of records, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The records of this page that could be read.
    pub records: Vec<EscalationRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
    /// Stored records in this page's range that could not be read back (skipped,
    /// logged and counted in `escalation_store_unreadable_total`).
    pub unreadable: usize,
}

/// A stored record that cannot be read back: logged and counted, then skipped.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "redis", feature = "postgres")),
    allow(dead_code)
)]
pub(crate) fn unreadable(store: &'static str, id: &str, error: &dyn fmt::Display) {
    tracing::warn!(
        store,
        escalation_id = %id,
        %error,
        "a stored escalation cannot be read back; skipped"
    );
    metrics::counter!("escalation_store_unreadable_total", "store" => store).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_junk() {
        let cursor = Cursor {
            created_at_ms: 42,
            id: EscalationId::new("esc_a.b"),
        };
        assert_eq!(Cursor::parse(&cursor.to_string()), Some(cursor.clone()));
        for junk in ["", "x.y", "12", "12.", "-1.a"] {
            assert_eq!(Cursor::parse(junk), None, "{junk:?}");
        }
        assert!(cursor.precedes(42, &EscalationId::new("esc_b")));
        assert!(cursor.precedes(43, &EscalationId::new("esc_0")));
        assert!(!cursor.precedes(42, &EscalationId::new("esc_a.b")));
    }
}
