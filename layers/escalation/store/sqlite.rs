use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use std::time::SystemTime;

use super::page::unreadable;
use super::{Cursor, EscalationStore, Page, StoreFuture, Update};
use crate::escalation::error::StoreError;
use crate::escalation::id::EscalationId;
use crate::escalation::record::{to_unix_ms, AuditEntry, EscalationRecord, Status};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS escalations (
    id            TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    record        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS escalations_by_status ON escalations (status, created_at_ms, id);
CREATE TABLE IF NOT EXISTS escalation_audit (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    escalation_id TEXT NOT NULL,
    entry         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS escalation_audit_by_id ON escalation_audit (escalation_id, seq);
";

/// A durable store in one SQLite file (feature `sqlite`, SQLite compiled in).
///
/// Every change is one transaction, written through (`synchronous = FULL`, WAL), so a
/// process restart loses no pending escalation: open the same file again and they can
/// be listed, resolved and resumed. Records are kept as JSON next to the few columns
/// that are queried. Calls run on tokio's blocking pool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower_llm_resilience::escalation::{EscalationStore, SqliteStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("escalations.db")).unwrap();
/// assert!(store.list(None).await.unwrap().is_empty());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::from_connection(Connection::open(path).map_err(backend)?)
    }

    /// A private in-memory database (lost on drop); handy in tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory().map_err(backend)?)
    }

    fn from_connection(conn: Connection) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn run<T, F>(&self, work: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                work(&mut conn)
            })
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
        })
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn append_audit(conn: &Connection, audit: &AuditEntry) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO escalation_audit (escalation_id, entry) VALUES (?1, ?2)",
        params![audit.escalation_id.as_str(), to_json(audit)?],
    )
    .map_err(backend)?;
    Ok(())
}

fn read(conn: &Connection, id: &str) -> Result<Option<EscalationRecord>, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT record FROM escalations WHERE id = ?1",
            params![id],
            |row| row.get(0),
        )
        .optional()
        .map_err(backend)?;
    text.map(|t| from_json(&t)).transpose()
}

impl EscalationStore for SqliteStore {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO escalations (id, version, status, created_at_ms, record)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        record.id.as_str(),
                        to_i64(record.version),
                        record.status.as_str(),
                        to_i64(to_unix_ms(record.created_at)),
                        to_json(&record)?
                    ],
                )
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::Duplicate(record.id));
            }
            append_audit(&tx, &audit)?;
            tx.commit().map_err(backend)
        })
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        let id = id.as_str().to_owned();
        self.run(move |conn| read(conn, &id))
    }

    fn update(
        &self,
        expected_version: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        self.run(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let changed = tx
                .execute(
                    "UPDATE escalations SET version = ?1, status = ?2, record = ?3
                     WHERE id = ?4 AND version = ?5",
                    params![
                        to_i64(record.version),
                        record.status.as_str(),
                        to_json(&record)?,
                        record.id.as_str(),
                        to_i64(expected_version)
                    ],
                )
                .map_err(backend)?;
            if changed == 0 {
                let current = read(&tx, record.id.as_str())?;
                return Ok(Update::Conflict(current.map(Box::new)));
            }
            append_audit(&tx, &audit)?;
            tx.commit().map_err(backend)?;
            Ok(Update::Applied)
        })
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        self.run(move |conn| {
            let page = read_page(conn, status, None, usize::MAX)?;
            Ok(page.records)
        })
    }

    fn list_page(
        &self,
        status: Option<Status>,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<'_, Page> {
        self.run(move |conn| read_page(conn, status, after.as_ref(), limit))
    }

    fn count(&self, status: Status) -> StoreFuture<'_, usize> {
        self.run(move |conn| {
            let count: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM escalations WHERE status = ?1",
                    params![status.as_str()],
                    |row| row.get(0),
                )
                .map_err(backend)?;
            Ok(usize::try_from(count).unwrap_or(0))
        })
    }

    fn purge(&self, created_before: SystemTime) -> StoreFuture<'_, usize> {
        let cutoff = to_i64(to_unix_ms(created_before));
        self.run(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute(
                "DELETE FROM escalation_audit WHERE escalation_id IN
                 (SELECT id FROM escalations WHERE created_at_ms < ?1)",
                params![cutoff],
            )
            .map_err(backend)?;
            let purged = tx
                .execute(
                    "DELETE FROM escalations WHERE created_at_ms < ?1",
                    params![cutoff],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(purged)
        })
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        let id = id.map(|id| id.as_str().to_owned());
        self.run(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT entry FROM escalation_audit WHERE ?1 IS NULL OR escalation_id = ?1
                     ORDER BY seq",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![id], |row| row.get::<_, String>(0))
                .map_err(backend)?;
            let mut entries = Vec::new();
            for row in rows {
                let text = row.map_err(backend)?;
                match from_json(&text) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => unreadable("sqlite", "(audit entry)", &e),
                }
            }
            Ok(entries)
        })
    }
}

/// Records in `list` order after `after`, at most `limit`; rows that cannot be
/// read back are skipped (logged and counted), never an error for the page.
fn read_page(
    conn: &Connection,
    status: Option<Status>,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Page, StoreError> {
    let (after_ms, after_id) = match after {
        Some(c) => (to_i64(c.created_at_ms), c.id.as_str().to_owned()),
        None => (-1, String::new()),
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, created_at_ms, record FROM escalations
             WHERE (?1 IS NULL OR status = ?1)
               AND (created_at_ms > ?2 OR (created_at_ms = ?2 AND id > ?3))
             ORDER BY created_at_ms, id LIMIT ?4",
        )
        .map_err(backend)?;
    let fetch = to_i64(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
    let rows = stmt
        .query_map(
            params![status.map(Status::as_str), after_ms, after_id, fetch],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            },
        )
        .map_err(backend)?;
    let mut page = Page::default();
    let mut more = false;
    for (seen, row) in rows.enumerate() {
        let (id, created_at_ms, text) = row.map_err(backend)?;
        if seen == limit {
            // One more row exists: the page is full.
            more = true;
            break;
        }
        page.next = Some(Cursor {
            created_at_ms: u64::try_from(created_at_ms).unwrap_or(0),
            id: EscalationId::new(id.clone()),
        });
        match from_json(&text) {
            Ok(record) => page.records.push(record),
            Err(e) => {
                unreadable("sqlite", &id, &e);
                page.unreadable += 1;
            }
        }
    }
    if !more {
        page.next = None;
    }
    Ok(page)
}
