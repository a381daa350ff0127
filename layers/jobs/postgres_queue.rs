//! Keeps an `apalis_postgres` queue's table bounded (see
//! [`prune_postgres_queue`]).

use std::time::Duration;

use apalis_postgres::PgPool;

/// Rows deleted per statement.
const CHUNK: i64 = 1000;

/// Deletes a chunk of `queue`'s jobs that finished more than `$2` ms ago, or
/// were pushed more than `$3` ms ago whatever their state.
const PRUNE: &str = "
DELETE FROM apalis.jobs WHERE id IN (
    SELECT id FROM apalis.jobs
    WHERE job_type = $1 AND (
        (status IN ('Done', 'Failed', 'Killed')
            AND done_at < now() - $2::float8 * interval '1 millisecond')
        OR run_at < now() - $3::float8 * interval '1 millisecond')
    LIMIT $4
    FOR UPDATE SKIP LOCKED)";

/// Deletes the jobs of `queue` (an `apalis_postgres::PostgresStorage`'s queue)
/// that finished more than `finished_for` ago, and every job pushed more than
/// `stale_after` ago whatever its state; returns how many it deleted.
///
/// apalis-postgres 1.0.0 keeps every job's row (its whole request) until
/// vacuumed, and has no vacuum: a queue that runs a million items keeps a
/// million rows. With [`BatchWorker`](super::BatchWorker) the row is of no use
/// once the job finished (the item's state and result are in the
/// [`JobStore`](super::JobStore)). Use the store's TTL as `stale_after`: a job
/// older than that belongs to a batch the store has forgotten (this also
/// removes rows apalis-postgres 1.0.0 leaves `Queued` after they ran). Deletes
/// a thousand rows per statement, skipping rows a worker has locked; safe to
/// run from every worker at once.
pub async fn prune_postgres_queue(
    pool: &PgPool,
    queue: &str,
    finished_for: Duration,
    stale_after: Duration,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(PRUNE)
            .bind(queue)
            .bind(finished_for.as_secs_f64() * 1000.0)
            .bind(stale_after.as_secs_f64() * 1000.0)
            .bind(CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += n;
        if n < CHUNK as u64 {
            return Ok(deleted);
        }
    }
}
