//! An `apalis_postgres` queue set up for [`BatchWorker`](super::BatchWorker)
//! and kept bounded (see [`setup_postgres_queue`] and [`prune_postgres_queue`]).

use std::time::Duration;

use apalis_postgres::{PgPool, PostgresStorage};

/// Rows deleted per statement.
const CHUNK: i64 = 1000;

/// The advisory lock one pruner holds while it prunes: pruners on other
/// processes skip their turn instead of scanning the same rows.
const PRUNE_LOCK: i64 = 0x746f_7765_725f_6a70; // "tower_jp"

/// What apalis-postgres 1.0.0 leaves behind and will not run again: done,
/// killed, or failed with no attempt left (a `Failed` job with attempts left is
/// fetched again, so it is not finished).
macro_rules! finished {
    () => {
        "(status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))"
    };
}

/// The index of finished jobs.
const INDEX: &str = concat!(
    "CREATE INDEX IF NOT EXISTS tower_llm_apalis_jobs_finished \
     ON apalis.jobs (job_type, done_at) WHERE ",
    finished!()
);

/// Deletes a chunk of `$1`'s jobs finished more than `$2` ms ago, at most `$3`.
const PRUNE: &str = concat!(
    "DELETE FROM apalis.jobs WHERE id IN (
         SELECT id FROM apalis.jobs
         WHERE job_type = $1 AND ",
    finished!(),
    " AND done_at < now() - $2::float8 * interval '1 millisecond'
         LIMIT $3
         FOR UPDATE SKIP LOCKED)"
);

/// Sets up apalis-postgres's schema (`PostgresStorage::setup`: its migrations,
/// which need the `hstore` extension) and an index of finished jobs for
/// [`prune_postgres_queue`] (apalis 1.0.0 indexes only the jobs still to
/// run). Idempotent; safe when several processes run it at once.
pub async fn setup_postgres_queue(pool: &PgPool) -> Result<(), apalis_postgres::Error> {
    PostgresStorage::<()>::setup(pool).await?;
    sqlx::query(INDEX)
        .execute(pool)
        .await
        .map_err(apalis_postgres::Error::Database)?;
    Ok(())
}

/// Deletes the jobs of `queue` (an `apalis_postgres::PostgresStorage`'s queue)
/// that finished more than `finished_for` ago; returns how many it deleted
/// (`None`: another process was pruning, this call did nothing).
///
/// apalis-postgres 1.0.0 keeps every job's row (its whole request) until
/// vacuumed, and has no vacuum: a queue that runs a million items keeps a
/// million rows. With [`BatchWorker`](super::BatchWorker) the row is of no use
/// once the job finished (the item's state and result are in the
/// [`JobStore`](super::JobStore)). Finished means done, killed (a fatal
/// failure), or failed with no attempt left; a job apalis will fetch again is
/// kept. Deletes a thousand rows per statement through the index
/// [`setup_postgres_queue`] creates, skipping rows a worker has locked; one
/// process prunes at a time (an advisory lock), so every worker may call it.
pub async fn prune_postgres_queue(
    pool: &PgPool,
    queue: &str,
    finished_for: Duration,
) -> Result<Option<u64>, sqlx::Error> {
    let mut deleted = 0;
    // A transaction per chunk: no long transaction holding a million row
    // locks, and another pruner may take a turn in between.
    loop {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok((deleted > 0).then_some(deleted));
        }
        let n = sqlx::query(PRUNE)
            .bind(queue)
            .bind(finished_for.as_secs_f64() * 1000.0)
            .bind(CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        deleted += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    Ok(Some(deleted))
}
