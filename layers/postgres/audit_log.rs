//! [`PostgresAuditLog`]: who did what, kept in PostgreSQL for every instance.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::connect::Postgres;
use super::error::PgError;

/// The longest `actor`, `action` or `subject` kept, in bytes (longer ones are
/// cut at a character boundary).
pub const AUDIT_MAX_FIELD: usize = 256;
/// The longest `detail` kept, in bytes (longer ones are cut).
pub const AUDIT_MAX_DETAIL: usize = 4096;
/// The most events one [`list`](PostgresAuditLog::list) returns.
pub const AUDIT_MAX_PAGE: usize = 1000;

/// The transaction-scoped advisory lock every append holds while it takes its
/// position and commits (`pg_advisory_xact_lock`), so that positions commit in
/// order: a reader that saw position `n` has seen every position before it.
/// Anything else that writes to `tower_llm_audit_log` must take it too.
pub const AUDIT_APPEND_LOCK: i64 = 0x746f_7765_725f_6175; // "tower_au"

/// One audit event. Never put secrets or prompt text in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who (an operator's id, `system`, a client key id).
    pub actor: String,
    /// What (`sign_in`, `circuit_force_open`, `key_revoked`, ...).
    pub action: String,
    /// On what (a circuit's name, an escalation id, ...); may be empty.
    pub subject: String,
    /// More, as text (often JSON); may be empty.
    pub detail: String,
}

/// An [`AuditEvent`] as stored: its place in the log and when it was written
/// (the database's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Its position: increasing in the order events were written.
    pub seq: i64,
    /// When it was written.
    pub at: SystemTime,
    /// The event.
    pub event: AuditEvent,
}

/// An append-only audit log on PostgreSQL (table `tower_llm_audit_log`, created
/// by [`Postgres::migrate`]). Fields are bounded ([`AUDIT_MAX_FIELD`],
/// [`AUDIT_MAX_DETAIL`]); reading is paged ([`AUDIT_MAX_PAGE`]); retention is
/// [`prune`](Self::prune)'s.
#[derive(Clone)]
pub struct PostgresAuditLog {
    pg: Postgres,
}

impl fmt::Debug for PostgresAuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresAuditLog")
            .field("pg", &self.pg)
            .finish()
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn to_system_time(micros: i64) -> SystemTime {
    match u64::try_from(micros) {
        Ok(m) => UNIX_EPOCH + Duration::from_micros(m),
        Err(_) => UNIX_EPOCH,
    }
}

impl PostgresAuditLog {
    /// A log on `pg`.
    pub fn new(pg: &Postgres) -> Self {
        Self { pg: pg.clone() }
    }

    /// Appends `event`; returns its position.
    ///
    /// Appends from every instance take their positions one at a time (under
    /// [`AUDIT_APPEND_LOCK`], held until the insert commits), so positions
    /// become visible in order and paging with [`list`](Self::list) never
    /// skips an event that commits late. Audit events are operators' actions:
    /// a few per second at most, which one lock serves easily.
    pub async fn append(&self, event: &AuditEvent) -> Result<i64, PgError> {
        let fields = [
            bounded(&event.actor, AUDIT_MAX_FIELD),
            bounded(&event.action, AUDIT_MAX_FIELD),
            bounded(&event.subject, AUDIT_MAX_FIELD),
            bounded(&event.detail, AUDIT_MAX_DETAIL),
        ];
        self.pg
            .run(|client| async move {
                let row = client
                    .query_one(
                        "WITH locked AS (SELECT pg_advisory_xact_lock($5))
                         INSERT INTO tower_llm_audit_log (actor, action, subject, detail)
                         SELECT $1, $2, $3, $4 FROM locked RETURNING seq",
                        &[
                            &fields[0],
                            &fields[1],
                            &fields[2],
                            &fields[3],
                            &AUDIT_APPEND_LOCK,
                        ],
                    )
                    .await?;
                Ok(row.get(0))
            })
            .await
    }

    /// At most `limit` events (capped at [`AUDIT_MAX_PAGE`]) written after position
    /// `after` (from the start when `None`), oldest first. Paging with the last
    /// position seen misses nothing, however the appends interleave (see
    /// [`append`](Self::append)).
    pub async fn list(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, PgError> {
        let limit = i64::try_from(limit.min(AUDIT_MAX_PAGE)).unwrap_or(0);
        let after = after.unwrap_or(0);
        let rows = self
            .pg
            .run(|client| async move {
                Ok(client
                    .query(
                        "SELECT seq, (extract(epoch FROM at) * 1000000)::bigint, actor, action,
                                subject, detail
                         FROM tower_llm_audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&after, &limit],
                    )
                    .await?)
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| LoggedEvent {
                seq: r.get(0),
                at: to_system_time(r.get(1)),
                event: AuditEvent {
                    actor: r.get(2),
                    action: r.get(3),
                    subject: r.get(4),
                    detail: r.get(5),
                },
            })
            .collect())
    }

    /// Deletes events written before `before`; returns how many went.
    pub async fn prune(&self, before: SystemTime) -> Result<u64, PgError> {
        let micros = before
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.pg
            .run(|client| async move {
                Ok(client
                    .execute(
                        "DELETE FROM tower_llm_audit_log
                         WHERE at < to_timestamp($1::float8 / 1000000)",
                        &[&(micros as f64)],
                    )
                    .await?)
            })
            .await
    }
}
