//! [`PostgresJobStore`]: a distributed batch's state on PostgreSQL, shared by
//! the submitter and every worker.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::classify::FailureKind;
use crate::jobs::store::{check_key, lease_ms, unix_ms};
use crate::jobs::{Claim, ItemState, ItemsPage, JobStore, Opened, Progress, JOB_MAX_PAGE};
use crate::partial_batch::{ItemFailure, StoreError, StoreFuture};

use super::connect::Postgres;
use super::error::PgError;

/// Keys one `open` statement takes at most (bigger submissions are cut in chunks).
const OPEN_CHUNK: usize = 1000;
/// Expired batches one `open` deletes at most (with their items).
const PRUNE_BATCHES: i64 = 100;
/// Runs of a statement PostgreSQL aborted as a deadlock, at most.
const DEADLOCK_TRIES: usize = 4;
/// How often a lost claim race is run again (the next run sees the winner).
const CLAIM_RUNS: usize = 3;

/// Deletes batch `$1` if it expired, and at most `$2` other expired batches:
/// an expired batch is gone, whatever it held, and starts anew.
const PRUNE: &str = "
DELETE FROM tower_llm_job_batches
WHERE expires_at <= now() AND (batch_id = $1 OR batch_id IN (
    SELECT batch_id FROM tower_llm_job_batches WHERE expires_at <= now()
    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Deletes batch `$1` if it expired (before a write that would revive it).
const DROP_EXPIRED: &str =
    "DELETE FROM tower_llm_job_batches WHERE batch_id = $1 AND expires_at <= now()";

/// Opens keys `$2` of batch `$1` (kept `$3` ms): new, pending, failed and
/// expired-lease keys become pending (attempts kept) and are returned, in the
/// order given; done keys and keys under a live lease are counted.
const OPEN: &str = "
WITH batch AS (
    INSERT INTO tower_llm_job_batches AS b (batch_id, expires_at)
    VALUES ($1, now() + $3::float8 * interval '1 millisecond')
    ON CONFLICT (batch_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    RETURNING b.batch_id
), given AS (
    SELECT key COLLATE \"C\" AS key, ord FROM unnest($2::text[]) WITH ORDINALITY AS g(key, ord)
), opened AS (
    INSERT INTO tower_llm_job_items AS i (batch_id, item_key, state, attempts)
    SELECT batch.batch_id, keys.key, 'p', 0
    FROM batch, (SELECT DISTINCT key FROM given ORDER BY key) AS keys
    ON CONFLICT (batch_id, item_key) DO UPDATE
    SET state = 'p', lease_until = NULL, owner = NULL, result = NULL
    WHERE i.state IN ('p', 'f') OR (i.state = 'r' AND i.lease_until <= now())
    RETURNING i.item_key
)
SELECT coalesce(array_agg(g.key ORDER BY g.ord) FILTER (WHERE o.item_key IS NOT NULL), '{}'),
       count(*) FILTER (WHERE o.item_key IS NULL AND cur.state = 'd'),
       count(*) FILTER (WHERE o.item_key IS NULL AND cur.state IS DISTINCT FROM 'd')
FROM given g
LEFT JOIN opened o ON o.item_key = g.key
LEFT JOIN tower_llm_job_items cur ON cur.batch_id = $1 AND cur.item_key = g.key";

/// Claims item `$2` of batch `$1` for owner `$3` for `$4` ms, counting a
/// call. Returns the attempts before the claim (NULL: not claimed), the item
/// as this statement's snapshot saw it, and the ms left of its lease and of the
/// batch's pause. No row: unknown item or batch.
const CLAIM: &str = "
WITH b AS (
    SELECT paused_until FROM tower_llm_job_batches WHERE batch_id = $1 AND expires_at > now()
), claimed AS (
    UPDATE tower_llm_job_items i
    SET state = 'r', attempts = i.attempts + 1,
        lease_until = now() + $4::float8 * interval '1 millisecond', owner = $3
    WHERE i.batch_id = $1 AND i.item_key = $2 AND EXISTS (SELECT 1 FROM b)
      AND (i.state = 'p' OR (i.state = 'r' AND (i.lease_until <= now() OR i.owner = $3)))
    RETURNING i.attempts - 1 AS attempts
)
SELECT (SELECT attempts FROM claimed),
       i.state,
       i.owner = $3 OR i.lease_until <= now(),
       greatest(0, extract(epoch FROM i.lease_until - now()) * 1000)::float8,
       greatest(0, extract(epoch FROM b.paused_until - now()) * 1000)::float8
FROM b JOIN tower_llm_job_items i ON i.batch_id = $1 AND i.item_key = $2";

/// Extends owner `$3`'s lease on item `$2` of batch `$1` to `$4` ms from now,
/// counting `$5` more calls.
const RENEW: &str = "
UPDATE tower_llm_job_items i
SET lease_until = now() + $4::float8 * interval '1 millisecond', attempts = i.attempts + $5
FROM tower_llm_job_batches b
WHERE b.batch_id = $1 AND b.expires_at > now()
  AND i.batch_id = $1 AND i.item_key = $2 AND i.state = 'r' AND i.owner = $3";

/// Records item `$2` of batch `$1` as `$3` ('d' or 'f') with result `$4` and
/// `$5` attempts, unless it is done; keeps the batch `$6` ms. The batch's row
/// is only written when that moves its deadline by a second or more, so that
/// workers finishing items of one batch do not queue on its row.
const FINISH: &str = "
WITH touched AS (
    UPDATE tower_llm_job_batches
    SET expires_at = now() + $6::float8 * interval '1 millisecond'
    WHERE batch_id = $1
      AND expires_at < now() + $6::float8 * interval '1 millisecond' - interval '1 second'
), created AS (
    INSERT INTO tower_llm_job_batches (batch_id, expires_at)
    VALUES ($1, now() + $6::float8 * interval '1 millisecond')
    ON CONFLICT (batch_id) DO NOTHING
)
INSERT INTO tower_llm_job_items AS i (batch_id, item_key, state, attempts, result)
VALUES ($1, $2, $3, $5, $4)
ON CONFLICT (batch_id, item_key) DO UPDATE
SET state = EXCLUDED.state, attempts = EXCLUDED.attempts, result = EXCLUDED.result,
    lease_until = NULL, owner = NULL
WHERE i.state <> 'd'";

/// Gives item `$2` of batch `$1` back if owner `$3` holds it.
const RELEASE: &str = "
UPDATE tower_llm_job_items SET state = 'p', lease_until = NULL, owner = NULL
WHERE batch_id = $1 AND item_key = $2 AND state = 'r' AND owner = $3";

/// Pauses batch `$1` until `$2` (Unix ms) if that is later than now and than
/// its pause; a new batch row is kept `$3` ms (or until the pause).
const PAUSE: &str = "
WITH until AS (SELECT to_timestamp($2::float8 / 1000) AS at)
INSERT INTO tower_llm_job_batches AS b (batch_id, paused_until, expires_at)
SELECT $1, at, greatest(at, now() + $3::float8 * interval '1 millisecond')
FROM until WHERE at > now()
ON CONFLICT (batch_id) DO UPDATE
SET paused_until = EXCLUDED.paused_until,
    expires_at = greatest(b.expires_at, EXCLUDED.paused_until)
WHERE b.paused_until IS NULL OR b.paused_until < EXCLUDED.paused_until";

/// The pause of batch `$1` (Unix ms), if it is paused now.
const PAUSED_UNTIL: &str = "
SELECT (extract(epoch FROM paused_until) * 1000)::float8 FROM tower_llm_job_batches
WHERE batch_id = $1 AND expires_at > now() AND paused_until > now()";

/// The items of batch `$1` by state: the running counts the triggers of
/// migration 7 keep (at most 16 rows, however many items).
const PROGRESS: &str = "
SELECT coalesce(sum(c.total), 0)::int8, coalesce(sum(c.done), 0)::int8,
       coalesce(sum(c.failed), 0)::int8, coalesce(sum(c.running), 0)::int8
FROM tower_llm_job_batches b JOIN tower_llm_job_counts c ON c.batch_id = b.batch_id
WHERE b.batch_id = $1 AND b.expires_at > now()";

/// At most `$3` items of batch `$1` after key `$2` (NULL: from the first), in
/// key order.
const ITEMS: &str = "
SELECT i.item_key, i.state, i.attempts,
       (extract(epoch FROM i.lease_until) * 1000)::float8, i.owner, i.result
FROM tower_llm_job_batches b JOIN tower_llm_job_items i ON i.batch_id = b.batch_id
WHERE b.batch_id = $1 AND b.expires_at > now() AND ($2::text IS NULL OR i.item_key > $2)
ORDER BY i.item_key
LIMIT $3";

/// A [`JobStore`] on PostgreSQL (features `apalis` and `postgres`): every worker
/// and the submitter on one database see one state per batch.
///
/// Tables `tower_llm_job_batches` (batch id, pause, deadline) and
/// `tower_llm_job_items` (batch id, item key, state, attempts, lease, owner,
/// result), created by [`Postgres::migrate`], and `tower_llm_job_counts`
/// (each batch's items by state, kept by triggers, so that
/// [`progress`](JobStore::progress) reads at most 16 rows however big the
/// batch). Each transition is one statement
/// (an `INSERT .. ON CONFLICT .. DO UPDATE .. WHERE` or an `UPDATE` with its
/// condition), on the database's clock (`now()`), so leases mean the same on
/// every machine and two workers racing for an item never both claim it.
///
/// A batch lives [`ttl`](Self::ttl) (default 7 days) after its last submission
/// or result; an expired batch reads as unknown and is deleted, with its items,
/// by the next submission (at most 100 batches each). Results are bounded by
/// [`max_result_bytes`](Self::max_result_bytes) per item (default 1 MiB; a
/// larger response is recorded as an `InvalidResponse` failure). Keys are 1 to
/// [`JOB_MAX_KEY`](crate::jobs::JOB_MAX_KEY) bytes and are paged in byte order.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tower_llm_resilience::jobs::{Claim, JobStore};
/// use tower_llm_resilience::postgres::{Postgres, PostgresJobStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pg = Postgres::new(&std::env::var("DATABASE_URL")?)?;
/// pg.migrate().await?;
/// let store = PostgresJobStore::new(&pg).ttl(Duration::from_secs(24 * 3600));
///
/// // The submitter: which items to push as jobs.
/// let keys: Vec<String> = (0..3).map(|i| format!("doc-{i}")).collect();
/// let opened = store.open("nightly", &keys).await?;
/// assert_eq!(opened.to_submit.len(), 3);
///
/// // A worker: take an item, call, record.
/// if let Claim::Claimed { paused_for, .. } = store
///     .claim("nightly", "doc-0", "worker-1", Duration::from_secs(30))
///     .await?
/// {
///     tokio::time::sleep(paused_for).await;
///     store.succeed("nightly", "doc-0", "\"the answer\"", 1).await?;
/// }
/// println!("{:?}", store.progress("nightly").await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresJobStore {
    pg: Postgres,
    ttl: Duration,
    max_result_bytes: usize,
}

impl fmt::Debug for PostgresJobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresJobStore")
            .field("pg", &self.pg)
            .field("ttl", &self.ttl)
            .field("max_result_bytes", &self.max_result_bytes)
            .finish()
    }
}

impl PostgresJobStore {
    /// A store on `pg`: batches kept 7 days after their last submission or
    /// result, results up to 1 MiB. Never waits for Postgres.
    pub fn new(pg: &Postgres) -> Self {
        Self {
            pg: pg.clone(),
            ttl: Duration::from_secs(7 * 24 * 3600),
            max_result_bytes: 1 << 20,
        }
    }

    /// How long a batch is kept after its last submission or result (default
    /// 7 days; at least 1 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The largest result (the response as JSON) kept per item (default 1 MiB).
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = bytes.max(1);
        self
    }

    fn ttl_ms(&self) -> f64 {
        lease_ms(self.ttl) as f64
    }

    async fn finish(
        &self,
        batch: &str,
        key: &str,
        to: &str,
        result: String,
        attempts: u32,
    ) -> Result<bool, StoreError> {
        check_key("batch id", batch)?;
        check_key("item key", key)?;
        let (to, result) = if result.len() > self.max_result_bytes {
            let failure = ItemFailure {
                kind: FailureKind::InvalidResponse,
                message: format!(
                    "the response ({} bytes as JSON) is over the store's {} bytes",
                    result.len(),
                    self.max_result_bytes
                ),
                fatal: true,
            };
            (
                "f",
                serde_json::to_string(&failure).map_err(StoreError::new)?,
            )
        } else {
            (to, result)
        };
        let (ttl_ms, attempts) = (self.ttl_ms(), i64::from(attempts));
        let result = &result;
        let recorded = again_after_deadlock(|| {
            self.pg.run(|client| async move {
                let drop_expired = client.prepare_cached(DROP_EXPIRED).await?;
                let finish = client.prepare_cached(FINISH).await?;
                // Pipelined: one round trip, in this order.
                let (_, recorded) = futures_util::future::try_join(
                    client.execute(&drop_expired, &[&batch]),
                    client.execute(&finish, &[&batch, &key, &to, result, &attempts, &ttl_ms]),
                )
                .await?;
                Ok(recorded)
            })
        })
        .await
        .map_err(StoreError::new)?;
        Ok(recorded == 1)
    }
}

/// Runs `statement` again, a few times at most, when PostgreSQL aborted it as
/// one side of a deadlock. A submission (OPEN: the batch's row, then its items
/// in key order) and a worker recording a result (FINISH: the item's row and the
/// batch's deadline, in one statement whose parts run in no fixed order) can
/// each hold what the other waits for; PostgreSQL aborts one, and since each
/// statement is whole or nothing, running it again is safe.
async fn again_after_deadlock<T, F, Fut>(mut statement: F) -> Result<T, PgError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PgError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match statement().await {
            Err(PgError::Db(e))
                if tries < DEADLOCK_TRIES
                    && e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                tracing::debug!("job store: a deadlock between instances, trying again");
                metrics::counter!("jobs_store_deadlock_retries_total", "store" => "postgres")
                    .increment(1);
            }
            other => return other,
        }
    }
}

fn attempts(stored: i64) -> u32 {
    u32::try_from(stored.max(0)).unwrap_or(u32::MAX)
}

fn millis(ms: f64) -> Duration {
    Duration::from_secs_f64((ms / 1000.0).max(0.0))
}

fn to_usize(count: i64) -> usize {
    usize::try_from(count).unwrap_or(0)
}

/// An item's state from its row.
fn parse_state(
    state: &str,
    stored_attempts: i64,
    lease_until_ms: Option<f64>,
    owner: Option<String>,
    result: Option<String>,
) -> Result<ItemState, PgError> {
    let attempts = attempts(stored_attempts);
    Ok(match (state, result) {
        ("p", _) => ItemState::Pending { attempts },
        ("r", _) => ItemState::Running {
            worker: owner.unwrap_or_default(),
            lease_until_ms: lease_until_ms.map_or(0, |ms| ms.max(0.0) as u64),
            attempts,
        },
        ("d", Some(response_json)) => ItemState::Done {
            response_json,
            attempts,
        },
        ("f", Some(failure)) => ItemState::Failed {
            failure: serde_json::from_str(&failure)
                .map_err(|e| PgError::Corrupt(format!("a job's failure: {e}")))?,
            attempts,
        },
        ("d" | "f", None) => {
            return Err(PgError::Corrupt("a finished job without its result".into()))
        }
        (other, _) => return Err(PgError::Corrupt(format!("job state {other:?}"))),
    })
}

impl JobStore for PostgresJobStore {
    fn open<'a>(&'a self, batch: &'a str, keys: &'a [String]) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            check_key("batch id", batch)?;
            for key in keys {
                check_key("item key", key)?;
            }
            let mut opened = Opened::default();
            if keys.is_empty() {
                return Ok(opened);
            }
            let ttl_ms = self.ttl_ms();
            self.pg
                .run(|client| async move {
                    client.execute(PRUNE, &[&batch, &PRUNE_BATCHES]).await?;
                    Ok(())
                })
                .await
                .map_err(StoreError::new)?;
            for chunk in keys.chunks(OPEN_CHUNK) {
                let (to_submit, done, running) = again_after_deadlock(|| {
                    self.pg.run(|client| async move {
                        let statement = client.prepare_cached(OPEN).await?;
                        let row = client
                            .query_one(&statement, &[&batch, &chunk, &ttl_ms])
                            .await?;
                        Ok((
                            row.get::<_, Vec<String>>(0),
                            row.get::<_, i64>(1),
                            row.get::<_, i64>(2),
                        ))
                    })
                })
                .await
                .map_err(StoreError::new)?;
                opened.to_submit.extend(to_submit);
                opened.already_done += to_usize(done);
                opened.running += to_usize(running);
            }
            Ok(opened)
        })
    }

    fn claim<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        worker: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            check_key("item key", key)?;
            let lease_ms = lease_ms(lease) as f64;
            for _ in 0..CLAIM_RUNS {
                let row = self
                    .pg
                    .run(|client| async move {
                        let statement = client.prepare_cached(CLAIM).await?;
                        Ok(client
                            .query_opt(&statement, &[&batch, &key, &worker, &lease_ms])
                            .await?)
                    })
                    .await
                    .map_err(StoreError::new)?;
                let Some(row) = row else {
                    return Ok(Claim::Unknown);
                };
                if let Some(before) = row.get::<_, Option<i64>>(0) {
                    return Ok(Claim::Claimed {
                        attempts: attempts(before),
                        paused_for: row.get::<_, Option<f64>>(4).map_or(Duration::ZERO, millis),
                    });
                }
                let state: String = row.get(1);
                let ours_or_lapsed = row.get::<_, Option<bool>>(2).unwrap_or(false);
                match state.as_str() {
                    "d" => return Ok(Claim::Done),
                    "f" => return Ok(Claim::Failed),
                    "r" if !ours_or_lapsed => {
                        return Ok(Claim::Held(
                            row.get::<_, Option<f64>>(3).map_or(Duration::ZERO, millis),
                        ))
                    }
                    // Claimable as this statement saw it, yet another claim
                    // (or a finish) got there first: the next run sees it.
                    _ => continue,
                }
            }
            Err(StoreError::new(format!(
                "a job's claim lost {CLAIM_RUNS} races in a row"
            )))
        })
    }

    fn renew<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        worker: &'a str,
        lease: Duration,
        called: bool,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let (lease_ms, called) = (lease_ms(lease) as f64, i64::from(called));
            let held = self
                .pg
                .run(|client| async move {
                    let statement = client.prepare_cached(RENEW).await?;
                    Ok(client
                        .execute(&statement, &[&batch, &key, &worker, &lease_ms, &called])
                        .await?)
                })
                .await
                .map_err(StoreError::new)?;
            Ok(held == 1)
        })
    }

    fn succeed<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        response_json: &'a str,
        attempts: u32,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.finish(batch, key, "d", response_json.to_owned(), attempts)
                .await
        })
    }

    fn fail<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        failure: &'a ItemFailure,
        attempts: u32,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let json = serde_json::to_string(failure).map_err(StoreError::new)?;
            self.finish(batch, key, "f", json, attempts).await
        })
    }

    fn release<'a>(&'a self, batch: &'a str, key: &'a str, worker: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.pg
                .run(|client| async move {
                    let statement = client.prepare_cached(RELEASE).await?;
                    client.execute(&statement, &[&batch, &key, &worker]).await?;
                    Ok(())
                })
                .await
                .map_err(StoreError::new)
        })
    }

    fn pause<'a>(&'a self, batch: &'a str, until: SystemTime) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_key("batch id", batch)?;
            let (until_ms, ttl_ms) = (unix_ms(until) as f64, self.ttl_ms());
            self.pg
                .run(|client| async move {
                    let drop_expired = client.prepare_cached(DROP_EXPIRED).await?;
                    let pause = client.prepare_cached(PAUSE).await?;
                    futures_util::future::try_join(
                        client.execute(&drop_expired, &[&batch]),
                        client.execute(&pause, &[&batch, &until_ms, &ttl_ms]),
                    )
                    .await?;
                    Ok(())
                })
                .await
                .map_err(StoreError::new)
        })
    }

    fn paused_until<'a>(&'a self, batch: &'a str) -> StoreFuture<'a, Option<SystemTime>> {
        Box::pin(async move {
            let until = self
                .pg
                .run(|client| async move {
                    let statement = client.prepare_cached(PAUSED_UNTIL).await?;
                    let row = client.query_opt(&statement, &[&batch]).await?;
                    Ok(row.map(|r| r.get::<_, f64>(0)))
                })
                .await
                .map_err(StoreError::new)?;
            Ok(until.map(|ms| UNIX_EPOCH + millis(ms)))
        })
    }

    fn progress<'a>(&'a self, batch: &'a str) -> StoreFuture<'a, Option<Progress>> {
        Box::pin(async move {
            let counts = self
                .pg
                .run(|client| async move {
                    let statement = client.prepare_cached(PROGRESS).await?;
                    let row = client.query_one(&statement, &[&batch]).await?;
                    Ok((0..4)
                        .map(|i| to_usize(row.get::<_, i64>(i)))
                        .collect::<Vec<_>>())
                })
                .await
                .map_err(StoreError::new)?;
            let [total, done, failed, in_flight] = counts[..] else {
                return Err(StoreError::new("job progress: four counts expected"));
            };
            if total == 0 {
                return Ok(None);
            }
            Ok(Some(Progress {
                total,
                done,
                failed,
                in_flight,
                pending: total.saturating_sub(done + failed + in_flight),
            }))
        })
    }

    fn items<'a>(
        &'a self,
        batch: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, ItemsPage> {
        Box::pin(async move {
            let limit = limit.clamp(1, JOB_MAX_PAGE);
            // One more than asked: whether there is a next page.
            let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
            let mut items = self
                .pg
                .run(|client| async move {
                    let statement = client.prepare_cached(ITEMS).await?;
                    let rows = client.query(&statement, &[&batch, &after, &fetch]).await?;
                    rows.into_iter()
                        .map(|row| {
                            let state = parse_state(
                                row.get::<_, &str>(1),
                                row.get(2),
                                row.get(3),
                                row.get(4),
                                row.get(5),
                            )?;
                            Ok((row.get::<_, String>(0), state))
                        })
                        .collect::<Result<Vec<_>, PgError>>()
                })
                .await
                .map_err(StoreError::new)?;
            let more = items.len() > limit;
            items.truncate(limit);
            let next = more.then(|| items.last().map(|(k, _)| k.clone())).flatten();
            Ok(ItemsPage { items, next })
        })
    }
}
