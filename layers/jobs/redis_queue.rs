//! Keeps an `apalis_redis` queue's backlog of due jobs small and its finished
//! jobs pruned (work-arounds for apalis-redis 1.0.0, see [`promote_due`] and
//! [`prune_redis_queue`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::LazyLock;

/// Jobs moved per script call (well under Lua's 8,000 unpack limit).
const CHUNK: usize = 1000;

/// KEYS: the scheduled set, the active list, the signal list. ARGV: now (Unix
/// seconds, as apalis-redis scores), the most to move. Moves due jobs, oldest
/// first, and signals the workers as apalis' own push does.
static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local ids = redis.call('zrangebyscore', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
        if #ids > 0 then
            redis.call('rpush', KEYS[2], unpack(ids))
            redis.call('zrem', KEYS[1], unpack(ids))
            redis.call('del', KEYS[3])
            redis.call('lpush', KEYS[3], 1)
        end
        return #ids",
    )
});

/// Moves the jobs of `config`'s queue that are due from its scheduled set to
/// its active list, a thousand at a time; returns how many moved.
///
/// apalis-redis 1.0.0 puts every pushed job in the scheduled set, and each
/// worker fetch moves *all* due jobs in one Lua call with `unpack`, which fails
/// past about 8,000 (`too many results to unpack`) and stops the worker. A
/// batch of 10,000 items pushed faster than the workers fetch reaches that.
/// [`submit_to_redis`](super::submit_to_redis) calls this after each chunk it
/// pushes, and [`spawn_redis_promoter`] in each worker process keeps the
/// backlog small for jobs apalis schedules itself (its retries), so the
/// fetches never see more than a few hundred due jobs.
pub async fn promote_due(
    conn: &mut ConnectionManager,
    config: &apalis_redis::Config,
) -> redis::RedisResult<usize> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (scheduled, active, signal) = (
        config.scheduled_jobs_set(),
        config.active_jobs_list(),
        config.signal_list(),
    );
    let mut moved = 0;
    loop {
        let n: usize = PROMOTE
            .key(&scheduled)
            .key(&active)
            .key(&signal)
            .arg(now)
            .arg(CHUNK)
            .invoke_async(conn)
            .await?;
        moved += n;
        if n < CHUNK {
            return Ok(moved);
        }
    }
}

/// KEYS: the job data hash, the job metadata prefix, the done (or dead) set.
/// ARGV: the age in seconds a finished job must have, then the ids (members of
/// that set). Deletes each finished job old enough: its data, result and
/// metadata, and its id from the set.
static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local cutoff = tonumber(redis.call('time')[1]) - tonumber(ARGV[1])
        local results = KEYS[2] .. ':result'
        local deleted = 0
        for i = 2, #ARGV do
            local id = ARGV[i]
            local meta = KEYS[2] .. ':' .. id
            local fields = redis.call('hmget', meta, 'status', 'done_at')
            local status, done_at = fields[1], tonumber(fields[2])
            local finished = status == 'Done' or status == 'Failed' or status == 'Killed'
            if (not status) or (finished and done_at and done_at <= cutoff) then
                redis.call('hdel', KEYS[1], id)
                redis.call('hdel', results, id)
                redis.call('del', meta)
                -- SSCAN may return an id twice (the set shrinks as we go):
                -- counted once.
                deleted = deleted + redis.call('srem', KEYS[3], id)
            end
        end
        return deleted",
    )
});

/// Deletes the jobs of `config`'s queue that finished (done, or dead after
/// apalis' own retries) more than `finished_for` ago; returns how many.
///
/// apalis-redis 1.0.0 keeps each job's data (its whole request), metadata and
/// result until vacuumed, and its vacuum reads the whole data hash in one Lua
/// call. With [`BatchWorker`](super::BatchWorker) a finished job is of no use
/// (the item's state and result are in the [`JobStore`](super::JobStore)).
/// This walks the done and dead sets a thousand ids at a time (`SSCAN`), so a
/// pass costs about one round trip per thousand finished jobs; a finished id is
/// in no worker's in-flight set nor the active list (apalis moves it there
/// atomically on acknowledgement), so pruning it cannot take a job from under
/// a worker. Safe to run from every worker at once. Each pass reads every
/// finished job still kept: with a long `finished_for`, run it less often.
pub async fn prune_redis_queue(
    conn: &mut ConnectionManager,
    config: &apalis_redis::Config,
    finished_for: Duration,
) -> redis::RedisResult<usize> {
    let (data, meta) = (config.job_data_hash(), config.job_meta_hash());
    let mut deleted = 0;
    for set in [config.done_jobs_set(), config.dead_jobs_set()] {
        let mut cursor: u64 = 0;
        loop {
            let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&set)
                .arg(cursor)
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(conn)
                .await?;
            if !ids.is_empty() {
                let mut prune = PRUNE.prepare_invoke();
                prune
                    .key(&data)
                    .key(&meta)
                    .key(&set)
                    .arg(finished_for.as_secs());
                for id in &ids {
                    prune.arg(id);
                }
                let n: usize = prune.invoke_async(conn).await?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(deleted)
}

/// Runs [`promote_due`] every `every` until dropped (errors are logged and
/// retried).
#[derive(Debug)]
pub struct RedisPromoter(tokio::task::JoinHandle<()>);

impl Drop for RedisPromoter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a [`RedisPromoter`] for `config`'s queue on the current runtime:
/// one per worker process (every 100 ms is plenty).
pub fn spawn_redis_promoter(
    mut conn: ConnectionManager,
    config: apalis_redis::Config,
    every: Duration,
) -> RedisPromoter {
    RedisPromoter(tokio::spawn(async move {
        loop {
            if let Err(e) = promote_due(&mut conn, &config).await {
                tracing::warn!(error = %e, "cannot promote due jobs");
            }
            tokio::time::sleep(every).await;
        }
    }))
}
