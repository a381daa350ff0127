//! [`PostgresEscalationStore`]: escalations shared by every instance.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::escalation::store::{to_unix_ms, watch_changes, ChangeFuture, StoreFuture, Update};
use crate::escalation::{
    AuditEntry, Cursor, EscalationId, EscalationRecord, EscalationStore, Page, Status, StoreError,
};

use super::connect::Postgres;
use super::error::ConfigError;
use super::escalation_rows::{from_json, read, read_page, store_error, to_i64, to_json};
use super::link::{link, Link};
use super::listen::{self, AbortOnDrop, Listener, MAX_PAYLOAD};

/// The notification channel of escalation changes (payload: the id).
const CHANNEL: &str = "tower_llm_escalation";

const INSERT: &str = "
WITH ins AS (
    INSERT INTO tower_llm_escalations (id, version, status, created_at_ms, record)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING id
), aud AS (
    INSERT INTO tower_llm_escalation_audit (escalation_id, entry) SELECT id, $6 FROM ins
    RETURNING escalation_id
)
SELECT pg_notify($7, escalation_id) FROM aud";

/// Compare-and-swap on the version, the audit entry and the wake-up in one
/// statement: a row comes back only when the update was applied.
const UPDATE: &str = "
WITH upd AS (
    UPDATE tower_llm_escalations SET version = $3, status = $4, record = $5
    WHERE id = $1 AND version = $2 RETURNING id
), aud AS (
    INSERT INTO tower_llm_escalation_audit (escalation_id, entry) SELECT id, $6 FROM upd
    RETURNING escalation_id
)
SELECT pg_notify($7, escalation_id) FROM aud";

/// Builds a [`PostgresEscalationStore`].
#[derive(Clone, Debug)]
pub struct PostgresEscalationStoreBuilder {
    pg: Postgres,
    audit_cap: u32,
}

impl PostgresEscalationStoreBuilder {
    /// The most entries [`audit(None)`](EscalationStore::audit) returns, the
    /// newest (default 100 000); one escalation's trail is always returned whole.
    pub fn audit_cap(mut self, entries: u32) -> Self {
        self.audit_cap = entries;
        self
    }

    /// Builds the store. Must be called inside a tokio runtime (it spawns the
    /// task that listens for changes made by other instances). Never waits for
    /// Postgres.
    pub fn build(self) -> Result<PostgresEscalationStore, ConfigError> {
        if self.audit_cap == 0 {
            return Err(ConfigError::Zero("audit_cap"));
        }
        let link = Arc::new(link("escalation_listen", self.pg.name()));
        let (changes, _) = broadcast::channel(1024);
        let task = tokio::spawn(listen::run(
            self.pg.clone(),
            CHANNEL.to_owned(),
            link.clone(),
            Changes(changes.clone()),
        ));
        Ok(PostgresEscalationStore {
            pg: self.pg,
            listen_link: link,
            audit_cap: self.audit_cap,
            changes,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }
}

/// An [`EscalationStore`] on PostgreSQL: every instance sees the same
/// escalations, so one created on instance A can be listed and resolved through
/// B, and a wait-mode call on A wakes up when B resolves it.
///
/// - **Atomic rules.** Insert and the versioned compare-and-swap of
///   [`update`](EscalationStore::update) are single statements (`UPDATE .. WHERE
///   version = $expected` with the audit `INSERT` and `pg_notify` in the same
///   statement), so first resolution wins and a token resumes once, across
///   instances.
/// - **Tables** `tower_llm_escalations` (record JSON next to id, version,
///   status, creation time) and `tower_llm_escalation_audit`; created by
///   [`Postgres::migrate`].
/// - **Wake-ups.** Every change is sent with `NOTIFY tower_llm_escalation` (at
///   commit); the store listens on a connection of its own and completes
///   [`watch`](EscalationStore::watch) futures, with the layer's polling as the
///   backstop. After a reconnection every watcher is woken to read again.
/// - **Retention** is [`purge`](EscalationStore::purge)'s: call it (the proxy
///   does) to drop old records with their trails.
/// - **Durability** is Postgres's: an escalation acknowledged to the caller is
///   committed.
///
/// Clones share the pool and the listening connection.
#[derive(Clone)]
pub struct PostgresEscalationStore {
    pg: Postgres,
    listen_link: Arc<Link>,
    audit_cap: u32,
    changes: broadcast::Sender<Option<EscalationId>>,
    _task: Arc<AbortOnDrop>,
}

impl fmt::Debug for PostgresEscalationStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEscalationStore")
            .field("pg", &self.pg)
            .field("listening", &self.listen_link.is_up())
            .finish_non_exhaustive()
    }
}

impl PostgresEscalationStore {
    /// Configure a store on `pg`.
    pub fn builder(pg: &Postgres) -> PostgresEscalationStoreBuilder {
        PostgresEscalationStoreBuilder {
            pg: pg.clone(),
            audit_cap: 100_000,
        }
    }

    /// A store with the defaults. Must be called inside a tokio runtime.
    pub fn new(pg: &Postgres) -> Self {
        Self::builder(pg)
            .build()
            .unwrap_or_else(|_| unreachable!("the default settings are valid"))
    }

    /// Whether the store's connection listening for changes is up.
    pub fn is_listening(&self) -> bool {
        self.listen_link.is_up()
    }
}

impl EscalationStore for PostgresEscalationStore {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (json, audit_json) = (to_json(&record)?, to_json(&audit)?);
            let record = &record;
            let rows = self
                .pg
                .run(|client| async move {
                    let statement = client.prepare_cached(INSERT).await?;
                    Ok(client
                        .query(
                            &statement,
                            &[
                                &record.id.as_str(),
                                &to_i64(record.version),
                                &record.status.as_str(),
                                &to_i64(to_unix_ms(record.created_at)),
                                &json,
                                &audit_json,
                                &CHANNEL,
                            ],
                        )
                        .await?
                        .len())
                })
                .await
                .map_err(store_error)?;
            if rows == 0 {
                return Err(StoreError::Duplicate(record.id.clone()));
            }
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        Box::pin(async move {
            self.pg
                .run(|client| async move { read(&client, id.as_str()).await })
                .await
                .map_err(store_error)
        })
    }

    fn update(
        &self,
        expected_version: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        Box::pin(async move {
            let (json, audit_json) = (to_json(&record)?, to_json(&audit)?);
            self.pg
                .run(|client| async move {
                    let statement = client.prepare_cached(UPDATE).await?;
                    let applied = client
                        .query(
                            &statement,
                            &[
                                &record.id.as_str(),
                                &to_i64(expected_version),
                                &to_i64(record.version),
                                &record.status.as_str(),
                                &json,
                                &audit_json,
                                &CHANNEL,
                            ],
                        )
                        .await?;
                    if !applied.is_empty() {
                        return Ok(Update::Applied);
                    }
                    let current = read(&client, record.id.as_str()).await?;
                    Ok(Update::Conflict(current.map(Box::new)))
                })
                .await
                .map_err(store_error)
        })
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        Box::pin(async move { Ok(read_page(&self.pg, status, None, usize::MAX).await?.records) })
    }

    fn list_page(
        &self,
        status: Option<Status>,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<'_, Page> {
        Box::pin(async move { read_page(&self.pg, status, after.as_ref(), limit).await })
    }

    fn count(&self, status: Status) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            self.pg
                .run(|client| async move {
                    let row = client
                        .query_one(
                            "SELECT count(*) FROM tower_llm_escalations WHERE status = $1",
                            &[&status.as_str()],
                        )
                        .await?;
                    Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
                })
                .await
                .map_err(store_error)
        })
    }

    fn purge(&self, created_before: SystemTime) -> StoreFuture<'_, usize> {
        let cutoff = to_i64(to_unix_ms(created_before));
        Box::pin(async move {
            self.pg
                .run(|mut client| async move {
                    let tx = client.transaction().await?;
                    tx.execute(
                        "DELETE FROM tower_llm_escalation_audit WHERE escalation_id IN
                         (SELECT id FROM tower_llm_escalations WHERE created_at_ms < $1)",
                        &[&cutoff],
                    )
                    .await?;
                    let purged = tx
                        .execute(
                            "DELETE FROM tower_llm_escalations WHERE created_at_ms < $1",
                            &[&cutoff],
                        )
                        .await?;
                    tx.commit().await?;
                    Ok(usize::try_from(purged).unwrap_or(usize::MAX))
                })
                .await
                .map_err(store_error)
        })
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        Box::pin(async move {
            let cap = i64::from(self.audit_cap);
            let texts: Vec<String> = self
                .pg
                .run(|client| async move {
                    let rows = match id {
                        Some(id) => {
                            client
                                .query(
                                    "SELECT entry FROM tower_llm_escalation_audit
                                     WHERE escalation_id = $1 ORDER BY seq",
                                    &[&id.as_str()],
                                )
                                .await?
                        }
                        None => {
                            client
                                .query(
                                    "SELECT entry FROM (SELECT seq, entry FROM tower_llm_escalation_audit
                                     ORDER BY seq DESC LIMIT $1) newest ORDER BY seq",
                                    &[&cap],
                                )
                                .await?
                        }
                    };
                    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
                })
                .await
                .map_err(store_error)?;
            let mut entries = Vec::with_capacity(texts.len());
            for text in texts {
                match from_json(&text) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => crate::escalation::store_unreadable("postgres", "(audit entry)", &e),
                }
            }
            Ok(entries)
        })
    }

    fn watch(&self, id: &EscalationId) -> Option<ChangeFuture> {
        Some(watch_changes(self.changes.subscribe(), id.clone()))
    }
}

/// Turns notifications into wake-ups.
struct Changes(broadcast::Sender<Option<EscalationId>>);

impl Listener for Changes {
    async fn subscribed(&mut self) {
        // Changes made while not listening were missed: every watcher reads again.
        let _ = self.0.send(None);
    }

    fn message(&mut self, payload: &str) {
        if payload.len() <= MAX_PAYLOAD {
            // No receivers: nobody waits.
            let _ = self.0.send(Some(EscalationId::new(payload)));
        }
    }
}
