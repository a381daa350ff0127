//! [`PostgresCounters`]: fixed-window counters shared by every instance, for
//! budgets and rate limits.

use std::fmt;
use std::time::Duration;

use super::connect::Postgres;
use super::error::PgError;

/// The longest counter key, in bytes.
pub const COUNTER_MAX_KEY: usize = 512;
/// The most counters one call reads, or adds to.
pub const COUNTER_MAX_BATCH: usize = 1000;
/// The longest a counter lives after its last add; a longer `ttl` is cut to it.
const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// Expired rows one `DELETE` of [`prune_expired`](PostgresCounters::prune_expired) removes.
const PRUNE_CHUNK: i64 = 10_000;

/// Why a counter operation was refused or failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CounterError {
    /// A key is longer than [`COUNTER_MAX_KEY`] bytes (its length).
    KeyTooLong(usize),
    /// More than [`COUNTER_MAX_BATCH`] counters in one call (how many).
    TooMany(usize),
    /// The database failed.
    Pg(PgError),
}

impl fmt::Display for CounterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CounterError::KeyTooLong(len) => write!(
                f,
                "postgres counters: a key must be at most {COUNTER_MAX_KEY} bytes, got {len}"
            ),
            CounterError::TooMany(count) => write!(
                f,
                "postgres counters: at most {COUNTER_MAX_BATCH} counters a call, got {count}"
            ),
            CounterError::Pg(e) => write!(f, "counters: {e}"),
        }
    }
}

impl std::error::Error for CounterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CounterError::Pg(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: Into<PgError>> From<E> for CounterError {
    fn from(e: E) -> Self {
        CounterError::Pg(e.into())
    }
}

/// One addition: `(key, window, delta, ttl)`. The counter lives `ttl` after
/// its last add.
pub type CounterAdd<'a> = (&'a str, i64, u64, Duration);

/// Fixed-window counters on PostgreSQL (table `tower_llm_counters`, created by
/// [`Postgres::migrate`]): every instance adds to the same counters, so a
/// budget or a rate limit holds across all of them.
///
/// A counter is a `(key, window)` pair: the caller picks the window (e.g. the
/// Unix minute, `now / 60`), so instances agree on it without talking, and a
/// new window starts from 0. Each counter expires `ttl` after its last add;
/// an expired counter reads 0 and starts again from 0, and
/// [`prune_expired`](Self::prune_expired) removes it (call it periodically).
///
/// Adds are atomic (`INSERT .. ON CONFLICT DO UPDATE`): concurrent adds from
/// any number of instances sum exactly, saturating at `i64::MAX`. Keys are at
/// most [`COUNTER_MAX_KEY`] bytes, and one call touches at most
/// [`COUNTER_MAX_BATCH`] counters.
///
/// # Example
///
/// A requests-per-minute limit: count this request and read the minute's
/// tokens in one round trip.
///
/// ```no_run
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use tower_llm_resilience::postgres::{Postgres, PostgresCounters};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pg = Postgres::new(&std::env::var("DATABASE_URL")?)?;
/// pg.migrate().await?;
/// let counters = PostgresCounters::new(&pg);
///
/// let minute = (SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() / 60) as i64;
/// let ttl = Duration::from_secs(120);
/// let (read, requests) = counters
///     .read_and_add(&[("alice:tokens", minute)], ("alice:requests", minute, 1, ttl))
///     .await?;
/// let tokens = read[0];
/// if requests > 60 || tokens >= 100_000 {
///     // refuse: over the limit for this minute
/// }
/// // Later, off the request's path: what the answer used.
/// counters.add_many(&[("alice:tokens", minute, 1_234, ttl)]).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresCounters {
    pg: Postgres,
}

impl fmt::Debug for PostgresCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresCounters")
            .field("pg", &self.pg)
            .finish()
    }
}

/// The values of `$1` keys in `$2` windows, in order (0 when absent or expired).
const READ: &str = "
SELECT coalesce(array_agg(coalesce(c.value, 0) ORDER BY r.ord), '{}')
FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS r(key, win, ord)
LEFT JOIN tower_llm_counters c
       ON c.key = r.key AND c.\"window\" = r.win AND c.expires_at > now()";

/// Adds to one counter and reads others, in one statement (one snapshot: a
/// counter both read and added to reads as before the add).
const READ_AND_ADD: &str = "
WITH added AS (
    INSERT INTO tower_llm_counters AS c (key, \"window\", value, expires_at)
    VALUES ($3, $4, $5, now() + $6::float8 * interval '1 millisecond')
    ON CONFLICT (key, \"window\") DO UPDATE SET
        value = CASE
            WHEN c.expires_at <= now() THEN EXCLUDED.value
            WHEN c.value > 9223372036854775807 - EXCLUDED.value THEN 9223372036854775807
            ELSE c.value + EXCLUDED.value END,
        expires_at = greatest(c.expires_at, EXCLUDED.expires_at)
    RETURNING c.value
), readings AS (
    SELECT coalesce(array_agg(coalesce(c.value, 0) ORDER BY r.ord), '{}') AS values
    FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS r(key, win, ord)
    LEFT JOIN tower_llm_counters c
           ON c.key = r.key AND c.\"window\" = r.win AND c.expires_at > now()
)
SELECT (SELECT values FROM readings), (SELECT value FROM added)";

/// Adds to many counters (the same counter twice summed first), in key order
/// so that concurrent callers lock rows in one order.
const ADD_MANY: &str = "
INSERT INTO tower_llm_counters AS c (key, \"window\", value, expires_at)
SELECT key, win, least(sum(delta), 9223372036854775807)::bigint,
       now() + max(ttl_ms) * interval '1 millisecond'
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::float8[]) AS a(key, win, delta, ttl_ms)
GROUP BY key, win
ORDER BY key, win
ON CONFLICT (key, \"window\") DO UPDATE SET
    value = CASE
        WHEN c.expires_at <= now() THEN EXCLUDED.value
        WHEN c.value > 9223372036854775807 - EXCLUDED.value THEN 9223372036854775807
        ELSE c.value + EXCLUDED.value END,
    expires_at = greatest(c.expires_at, EXCLUDED.expires_at)";

const PRUNE: &str = "
DELETE FROM tower_llm_counters WHERE ctid IN (
    SELECT ctid FROM tower_llm_counters WHERE expires_at <= now() LIMIT $1)";

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn ttl_ms(ttl: Duration) -> f64 {
    ttl.clamp(Duration::from_millis(1), MAX_TTL).as_secs_f64() * 1000.0
}

fn check_key(key: &str) -> Result<(), CounterError> {
    if key.len() > COUNTER_MAX_KEY {
        return Err(CounterError::KeyTooLong(key.len()));
    }
    Ok(())
}

fn check_batch(count: usize) -> Result<(), CounterError> {
    if count > COUNTER_MAX_BATCH {
        return Err(CounterError::TooMany(count));
    }
    Ok(())
}

/// `reads` as the two arrays the statements take.
fn columns<'a>(reads: &[(&'a str, i64)]) -> Result<(Vec<&'a str>, Vec<i64>), CounterError> {
    check_batch(reads.len())?;
    let mut keys = Vec::with_capacity(reads.len());
    let mut windows = Vec::with_capacity(reads.len());
    for &(key, window) in reads {
        check_key(key)?;
        keys.push(key);
        windows.push(window);
    }
    Ok((keys, windows))
}

fn values(stored: Vec<i64>) -> Vec<u64> {
    stored.into_iter().map(to_u64).collect()
}

impl PostgresCounters {
    /// Counters on `pg`. Never waits for Postgres.
    pub fn new(pg: &Postgres) -> Self {
        Self { pg: pg.clone() }
    }

    /// The values of `reads` (`(key, window)` pairs), in order; 0 for a
    /// counter never added to or expired.
    pub async fn read(&self, reads: &[(&str, i64)]) -> Result<Vec<u64>, CounterError> {
        let (keys, windows) = columns(reads)?;
        let stored = self
            .pg
            .run(|client| async move {
                let statement = client.prepare_cached(READ).await?;
                let row = client.query_one(&statement, &[&keys, &windows]).await?;
                Ok(row.get::<_, Vec<i64>>(0))
            })
            .await?;
        Ok(values(stored))
    }

    /// Reads `reads` and adds to `add` in one statement (one round trip): the
    /// values read, in order, and `add`'s counter after the add.
    ///
    /// The reads see the counters as they were before this call's add (one
    /// snapshot), so reading the counter added to gives its value before.
    pub async fn read_and_add(
        &self,
        reads: &[(&str, i64)],
        add: CounterAdd<'_>,
    ) -> Result<(Vec<u64>, u64), CounterError> {
        let (keys, windows) = columns(reads)?;
        let (key, window, delta, ttl) = add;
        check_key(key)?;
        let (delta, ttl_ms) = (to_i64(delta), ttl_ms(ttl));
        let (stored, total) = self
            .pg
            .run(|client| async move {
                let statement = client.prepare_cached(READ_AND_ADD).await?;
                let row = client
                    .query_one(
                        &statement,
                        &[&keys, &windows, &key, &window, &delta, &ttl_ms],
                    )
                    .await?;
                Ok((row.get::<_, Vec<i64>>(0), row.get::<_, i64>(1)))
            })
            .await?;
        Ok((values(stored), to_u64(total)))
    }

    /// Adds to each of `adds` (`(key, window, delta, ttl)`), in one statement
    /// (all or none); adds to the same counter are summed, with the longest
    /// `ttl`.
    pub async fn add_many(&self, adds: &[CounterAdd<'_>]) -> Result<(), CounterError> {
        check_batch(adds.len())?;
        if adds.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(adds.len());
        let mut windows = Vec::with_capacity(adds.len());
        let mut deltas = Vec::with_capacity(adds.len());
        let mut ttls = Vec::with_capacity(adds.len());
        for &(key, window, delta, ttl) in adds {
            check_key(key)?;
            keys.push(key);
            windows.push(window);
            deltas.push(to_i64(delta));
            ttls.push(ttl_ms(ttl));
        }
        self.pg
            .run(|client| async move {
                let statement = client.prepare_cached(ADD_MANY).await?;
                client
                    .execute(&statement, &[&keys, &windows, &deltas, &ttls])
                    .await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Deletes the expired counters, 10 000 a statement; returns how many went.
    pub async fn prune_expired(&self) -> Result<u64, CounterError> {
        let mut pruned = 0;
        loop {
            let deleted = self
                .pg
                .run(|client| async move { Ok(client.execute(PRUNE, &[&PRUNE_CHUNK]).await?) })
                .await?;
            pruned += deleted;
            if deleted < to_u64(PRUNE_CHUNK) {
                return Ok(pruned);
            }
        }
    }
}
