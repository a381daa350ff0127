//! [`RedisBatchStore`]: batch idempotency records shared by every instance,
//! bounded in time and in total size.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::partial_batch::{BatchStore, StoreError, StoreFuture, StoredSuccess};

use super::error::ConfigError;
use super::link::{link, manager_config, Link};

/// The bookkeeping every script starts with: `now` (Redis' clock, so every
/// instance agrees), `drop(id)` (one batch out of the index and the totals) and
/// the batches past their deadline dropped (at most 100 a call).
///
/// KEYS: the batch's hash, the index (zset id -> deadline ms), the per-batch
/// record counts, the per-batch byte counts, the totals (`records`, `bytes`).
/// ARGV[1]: the batch id, ARGV[2]: the prefix of batch hashes.
const PRELUDE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local function drop(id)
    local records = tonumber(redis.call('HGET', KEYS[3], id) or '0')
    local bytes = tonumber(redis.call('HGET', KEYS[4], id) or '0')
    -- Formatted: Lua would send -0 (which Redis refuses) for a zero count.
    redis.call('HINCRBY', KEYS[5], 'records', string.format('%d', -records))
    redis.call('HINCRBY', KEYS[5], 'bytes', string.format('%d', -bytes))
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('DEL', ARGV[2] .. id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
    drop(id)
end
";

/// ARGV[3]: item key, ARGV[4]: the success as JSON, ARGV[5]: TTL ms,
/// ARGV[6]: max records, ARGV[7]: max bytes. Returns the number of batches
/// evicted, or -1 when the item was not kept (alone over the bounds).
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        local id, field, value = ARGV[1], ARGV[3], ARGV[4]
        local max_records, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
        local size = #field + #value
        if size > max_bytes then return -1 end
        local old = redis.call('HGET', KEYS[1], field)
        local added_records, added_bytes = 1, size
        if old then added_records, added_bytes = 0, size - #field - #old end
        local deadline = string.format('%d', now + tonumber(ARGV[5]))
        redis.call('HSET', KEYS[1], field, value)
        redis.call('PEXPIREAT', KEYS[1], deadline)
        redis.call('ZADD', KEYS[2], deadline, id)
        redis.call('HINCRBY', KEYS[3], id, added_records)
        redis.call('HINCRBY', KEYS[4], id, added_bytes)
        local records = redis.call('HINCRBY', KEYS[5], 'records', added_records)
        local bytes = redis.call('HINCRBY', KEYS[5], 'bytes', added_bytes)
        -- The batches run longest ago go first, never this one.
        local evicted = 0
        while records > max_records or bytes > max_bytes do
            local oldest = redis.call('ZRANGE', KEYS[2], 0, 1)
            local victim = oldest[1]
            if victim == id then victim = oldest[2] end
            if not victim then break end
            drop(victim)
            evicted = evicted + 1
            records = tonumber(redis.call('HGET', KEYS[5], 'records'))
            bytes = tonumber(redis.call('HGET', KEYS[5], 'bytes'))
        end
        if records > max_records or bytes > max_bytes then
            -- This batch alone is over the bounds: it stops growing.
            redis.call('HDEL', KEYS[1], field)
            redis.call('HINCRBY', KEYS[3], id, -1)
            redis.call('HINCRBY', KEYS[4], id, -size)
            redis.call('HINCRBY', KEYS[5], 'records', -1)
            redis.call('HINCRBY', KEYS[5], 'bytes', -size)
            if redis.call('EXISTS', KEYS[1]) == 0 then drop(id) end
            return -1
        end
        return evicted",
    ))
});

/// ARGV[3]: TTL ms. Returns the batch's hash (flat field/value list) and
/// refreshes its deadline: a run keeps a batch as a success does.
static LOAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        local items = redis.call('HGETALL', KEYS[1])
        if #items > 0 and redis.call('ZSCORE', KEYS[2], ARGV[1]) then
            local deadline = string.format('%d', now + tonumber(ARGV[3]))
            redis.call('PEXPIREAT', KEYS[1], deadline)
            redis.call('ZADD', KEYS[2], deadline, ARGV[1])
        end
        return items",
    ))
});

/// Forgets one batch.
static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        drop(ARGV[1])
        return 0",
    ))
});

/// A [`BatchStore`] on Redis: a batch first run on instance A and re-run on
/// instance B gets A's successes back from the store.
///
/// One hash per batch, `{prefix}:batch:{batch_id}`, field = item key, value = the
/// [`StoredSuccess`] as JSON. A batch lives [`ttl`](Self::ttl) (default 24 h)
/// after its last run (a success recorded or a load).
///
/// # Bounded in total size
///
/// All batches together hold at most [`max_records`](Self::max_records) item
/// successes (default 10 000) and [`max_bytes`](Self::max_bytes) of item keys
/// and stored JSON (default 64 MiB). A success that goes over either drops the
/// batches run longest ago, whole (their items simply run again if the batch
/// comes back), counted in `partial_batch_store_evicted_total{store="redis"}`;
/// a batch that alone is over the bounds stops growing (its next items are not
/// kept), and so does an item larger than `max_bytes`.
///
/// Each change is one Lua script, so several instances sharing the store keep
/// one consistent account: an index `{prefix}:batch-index` (batch id → deadline),
/// per-batch counts `{prefix}:batch-records` and `{prefix}:batch-bytes`, totals
/// in `{prefix}:batch-totals`. Instances that share a prefix should share the
/// bounds (each enforces its own when it records). The scripts touch the hashes
/// of the batches they evict, so the store needs a single Redis (or one Cluster
/// slot), not keys spread over a Cluster.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// # let _guard = rt.enter();
/// use std::time::Duration;
/// use tower_llm_resilience::partial_batch::PartialBatchLayer;
/// use tower_llm_resilience::redis::RedisBatchStore;
///
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let store = RedisBatchStore::new(client)?
///     .ttl(Duration::from_secs(3600))
///     .max_records(50_000)
///     .max_bytes(256 << 20);
/// let layer = PartialBatchLayer::builder().store(store).build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBatchStore {
    conn: ConnectionManager,
    link: Arc<Link>,
    prefix: String,
    ttl: Duration,
    max_records: usize,
    max_bytes: usize,
}

impl fmt::Debug for RedisBatchStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBatchStore")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("max_records", &self.max_records)
            .field("max_bytes", &self.max_bytes)
            .field("connected", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisBatchStore {
    /// A store through `client`, prefix `tower-llm`, batches kept 24 h after
    /// their last run, at most 10 000 records and 64 MiB in all. Must be called
    /// inside a tokio runtime; never waits for Redis.
    pub fn new(client: redis::Client) -> Result<Self, ConfigError> {
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
        Ok(Self {
            conn,
            link: Arc::new(link("batch_store", "tower-llm")),
            prefix: "tower-llm".to_owned(),
            ttl: Duration::from_secs(24 * 3600),
            max_records: 10_000,
            max_bytes: 64 << 20,
        })
    }

    /// The prefix of every Redis key (default `tower-llm`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
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

    /// Whether the last exchange with Redis worked.
    pub fn is_connected(&self) -> bool {
        self.link.is_up()
    }

    fn batch_prefix(&self) -> String {
        format!("{}:batch:", self.prefix)
    }

    /// `script` with the keys and first arguments every script takes.
    fn invocation<'s>(&self, script: &'s Script, batch_id: &str) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(format!("{}:batch:{batch_id}", self.prefix))
            .key(format!("{}:batch-index", self.prefix))
            .key(format!("{}:batch-records", self.prefix))
            .key(format!("{}:batch-bytes", self.prefix))
            .key(format!("{}:batch-totals", self.prefix))
            .arg(batch_id)
            .arg(self.batch_prefix());
        invocation
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn backend(&self, e: redis::RedisError) -> StoreError {
        self.link.down(&e);
        StoreError::new(e)
    }
}

impl BatchStore for RedisBatchStore {
    fn load<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let fields: HashMap<String, String> = self
                .invocation(&LOAD, batch_id)
                .arg(self.ttl_ms())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            fields
                .into_iter()
                .map(|(key, json)| {
                    let success = serde_json::from_str(&json).map_err(StoreError::new)?;
                    Ok((key, success))
                })
                .collect()
        })
    }

    fn record<'a>(
        &'a self,
        batch_id: &'a str,
        key: &'a str,
        success: StoredSuccess,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let json = serde_json::to_string(&success).map_err(StoreError::new)?;
            let mut conn = self.conn.clone();
            let evicted: i64 = self
                .invocation(&RECORD, batch_id)
                .arg(key)
                .arg(json)
                .arg(self.ttl_ms())
                .arg(self.max_records)
                .arg(self.max_bytes)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            match evicted {
                // Kept nowhere: the item runs again next time.
                -1 => tracing::debug!(
                    "batch records full: a success of a batch over the bounds not kept"
                ),
                0 => {}
                n => {
                    tracing::debug!(
                        evicted = n,
                        "batch records full: the least recently run batches dropped"
                    );
                    metrics::counter!("partial_batch_store_evicted_total", "store" => "redis")
                        .increment(n.unsigned_abs());
                }
            }
            Ok(())
        })
    }

    fn forget<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.invocation(&FORGET, batch_id)
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            Ok(())
        })
    }
}
