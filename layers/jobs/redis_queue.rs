//! Keeps an `apalis_redis` queue's backlog of due jobs small (a work-around for
//! apalis-redis 1.0.0, see [`promote_due`]).

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
