//! [`PostgresBatchStore`]: batch idempotency records shared by every instance,
//! bounded in time and in total size.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::partial_batch::{BatchStore, StoreError, StoreFuture, StoredSuccess};

use super::connect::Postgres;
use super::error::PgError;

/// Serialises eviction between instances (transaction-scoped).
const EVICT_LOCK: i64 = 0x746f_7765_725f_6262; // "tower_bb"
/// The most batches one record evicts; past it the item is not kept.
const MAX_EVICTIONS: usize = 1000;

const UPSERT_RUN: &str = "
INSERT INTO tower_llm_batch_runs (batch_id, expires_at)
VALUES ($1, now() + $2::float8 * interval '1 millisecond')
ON CONFLICT (batch_id) DO UPDATE SET expires_at = EXCLUDED.expires_at";

const UPSERT_ITEM: &str = "
INSERT INTO tower_llm_batch_items (batch_id, item_key, response_json, attempts, bytes)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (batch_id, item_key) DO UPDATE
SET response_json = EXCLUDED.response_json, attempts = EXCLUDED.attempts, bytes = EXCLUDED.bytes";

const TOTALS: &str = "SELECT count(*), coalesce(sum(bytes), 0)::bigint FROM tower_llm_batch_items";

/// A [`BatchStore`] on PostgreSQL: a batch first run on instance A and re-run on
/// instance B gets A's successes back from the store.
///
/// Tables `tower_llm_batch_runs` (batch id, deadline) and `tower_llm_batch_items`
/// (batch id, item key, the [`StoredSuccess`] JSON, its size), created by
/// [`Postgres::migrate`]. A batch lives [`ttl`](Self::ttl) (default 24 h) after
/// its last run (a success recorded or a load), by the database's clock.
///
/// # Bounded in total size
///
/// All batches together hold at most [`max_records`](Self::max_records) item
/// successes (default 10 000) and [`max_bytes`](Self::max_bytes) of item keys and
/// stored JSON (default 64 MiB). A success that goes over either drops expired
/// batches, then the batches with the earliest deadline (run longest ago), whole
/// (their items simply run again if the batch comes back), counted in
/// `partial_batch_store_evicted_total{store="postgres"}`; a batch that alone is
/// over the bounds stops growing, and so does an item larger than `max_bytes`.
/// Eviction runs under an advisory lock, so instances sharing the tables keep
/// one account.
#[derive(Clone)]
pub struct PostgresBatchStore {
    pg: Postgres,
    ttl: Duration,
    max_records: usize,
    max_bytes: usize,
}

impl fmt::Debug for PostgresBatchStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBatchStore")
            .field("pg", &self.pg)
            .field("ttl", &self.ttl)
            .field("max_records", &self.max_records)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl PostgresBatchStore {
    /// A store on `pg`: batches kept 24 h after their last run, at most 10 000
    /// records and 64 MiB in all. Never waits for Postgres.
    pub fn new(pg: &Postgres) -> Self {
        Self {
            pg: pg.clone(),
            ttl: Duration::from_secs(24 * 3600),
            max_records: 10_000,
            max_bytes: 64 << 20,
        }
    }

    /// How long a batch's record lives after its last run (default 24 h; at
    /// least 1 ms).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The most item successes kept, all batches together (default 10 000; at
    /// least 1). See [the bounds](Self#bounded-in-total-size).
    pub fn max_records(mut self, max_records: usize) -> Self {
        self.max_records = max_records.max(1);
        self
    }

    /// The most bytes kept (item keys and stored JSON), all batches together
    /// (default 64 MiB; at least 1). See [the bounds](Self#bounded-in-total-size).
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    fn ttl_ms(&self) -> f64 {
        self.ttl.as_secs_f64() * 1000.0
    }

    fn over(&self, (records, bytes): (i64, i64)) -> bool {
        usize::try_from(records).unwrap_or(usize::MAX) > self.max_records
            || usize::try_from(bytes).unwrap_or(usize::MAX) > self.max_bytes
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn totals(tx: &deadpool_postgres::Transaction<'_>) -> Result<(i64, i64), PgError> {
    let row = tx.query_one(TOTALS, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

impl BatchStore for PostgresBatchStore {
    fn load<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>> {
        Box::pin(async move {
            let ttl_ms = self.ttl_ms();
            let rows = self
                .pg
                .run(|client| async move {
                    // A run keeps a batch as a success does.
                    let kept = client
                        .execute(
                            "UPDATE tower_llm_batch_runs
                             SET expires_at = now() + $2::float8 * interval '1 millisecond'
                             WHERE batch_id = $1 AND expires_at > now()",
                            &[&batch_id, &ttl_ms],
                        )
                        .await?;
                    if kept == 0 {
                        return Ok(Vec::new());
                    }
                    let rows = client
                        .query(
                            "SELECT item_key, response_json, attempts FROM tower_llm_batch_items
                             WHERE batch_id = $1",
                            &[&batch_id],
                        )
                        .await?;
                    Ok(rows
                        .iter()
                        .map(|r| {
                            (
                                r.get::<_, String>(0),
                                r.get::<_, String>(1),
                                r.get::<_, i64>(2),
                            )
                        })
                        .collect())
                })
                .await
                .map_err(StoreError::new)?;
            Ok(rows
                .into_iter()
                .map(|(key, response_json, attempts)| {
                    let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
                    (
                        key,
                        StoredSuccess {
                            response_json,
                            attempts,
                        },
                    )
                })
                .collect())
        })
    }

    fn record<'a>(
        &'a self,
        batch_id: &'a str,
        key: &'a str,
        success: StoredSuccess,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let size = key.len() + success.response_json.len();
            if size > self.max_bytes {
                tracing::debug!("batch records: an item larger than max_bytes not kept");
                return Ok(());
            }
            let ttl_ms = self.ttl_ms();
            // Two instances evicting each other's batches can deadlock (each
            // holds its own batch's rows and waits for the other's): PostgreSQL
            // aborts one, which runs again, a few times at most.
            let mut tries = 0;
            let evicted = loop {
                tries += 1;
                let attempt = self
                    .record_once(batch_id, key, &success, size, ttl_ms)
                    .await;
                match attempt {
                    Err(PgError::Db(e))
                        if tries < 4
                            && e.code()
                                == Some(
                                    &tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED,
                                ) =>
                    {
                        tracing::debug!(
                            "batch records: a deadlock between instances, trying again"
                        );
                    }
                    other => break other.map_err(StoreError::new)?,
                }
            };
            match evicted {
                // Kept nowhere: the item runs again next time.
                None => tracing::debug!(
                    "batch records full: a success of a batch over the bounds not kept"
                ),
                Some(0) => {}
                Some(n) => {
                    tracing::debug!(
                        evicted = n,
                        "batch records full: the least recently run batches dropped"
                    );
                    metrics::counter!("partial_batch_store_evicted_total", "store" => "postgres")
                        .increment(n as u64);
                }
            }
            Ok(())
        })
    }

    fn forget<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.pg
                .run(|client| async move {
                    client
                        .execute(
                            "DELETE FROM tower_llm_batch_runs WHERE batch_id = $1",
                            &[&batch_id],
                        )
                        .await?;
                    Ok(())
                })
                .await
                .map_err(StoreError::new)
        })
    }
}

impl PostgresBatchStore {
    /// One try of [`record`](BatchStore::record): one transaction.
    async fn record_once(
        &self,
        batch_id: &str,
        key: &str,
        success: &StoredSuccess,
        size: usize,
        ttl_ms: f64,
    ) -> Result<Option<usize>, PgError> {
        self.pg
            .run(|mut client| async move {
                let tx = client.transaction().await?;
                // An expired run is gone, whatever it held: it starts anew.
                tx.execute(
                    "DELETE FROM tower_llm_batch_runs WHERE batch_id = $1 AND expires_at <= now()",
                    &[&batch_id],
                )
                .await?;
                tx.execute(UPSERT_RUN, &[&batch_id, &ttl_ms]).await?;
                tx.execute(
                    UPSERT_ITEM,
                    &[
                        &batch_id,
                        &key,
                        &success.response_json,
                        &i64::from(success.attempts),
                        &to_i64(size),
                    ],
                )
                .await?;
                let evicted = if self.over(totals(&tx).await?) {
                    self.evict(&tx, batch_id, key).await?
                } else {
                    Some(0)
                };
                tx.commit().await?;
                Ok(evicted)
            })
            .await
    }

    /// Over the bounds: drops other batches, expired and then earliest deadline
    /// first, until under them. `None` when that was not enough and this item
    /// was taken out again.
    async fn evict(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        batch_id: &str,
        key: &str,
    ) -> Result<Option<usize>, PgError> {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVICT_LOCK])
            .await?;
        let mut evicted = 0;
        while self.over(totals(tx).await?) && evicted < MAX_EVICTIONS {
            let victim = tx
                .query_opt(
                    "DELETE FROM tower_llm_batch_runs WHERE batch_id = (
                         SELECT batch_id FROM tower_llm_batch_runs WHERE batch_id <> $1
                         ORDER BY expires_at, batch_id LIMIT 1)
                     RETURNING batch_id",
                    &[&batch_id],
                )
                .await?;
            if victim.is_none() {
                break;
            }
            evicted += 1;
        }
        if !self.over(totals(tx).await?) {
            return Ok(Some(evicted));
        }
        // This batch alone is over the bounds: it stops growing.
        tx.execute(
            "DELETE FROM tower_llm_batch_items WHERE batch_id = $1 AND item_key = $2",
            &[&batch_id, &key],
        )
        .await?;
        tx.execute(
            "DELETE FROM tower_llm_batch_runs r WHERE batch_id = $1 AND NOT EXISTS
             (SELECT 1 FROM tower_llm_batch_items i WHERE i.batch_id = r.batch_id)",
            &[&batch_id],
        )
        .await?;
        if evicted > 0 {
            metrics::counter!("partial_batch_store_evicted_total", "store" => "postgres")
                .increment(evicted as u64);
        }
        Ok(None)
    }
}
