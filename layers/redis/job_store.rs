//! [`RedisJobStore`]: a distributed batch's state on Redis, shared by the
//! submitter and every worker.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{Script, ToRedisArgs};

use super::error::ConfigError;
use super::link::{link, manager_config, Link};
use crate::jobs::store::{check_key, lease_ms, unix_ms};
use crate::jobs::{Claim, ItemState, ItemsPage, JobStore, Opened, Progress, JOB_MAX_PAGE};
use crate::partial_batch::{ItemFailure, StoreError, StoreFuture};

/// Keys of one batch (all in one hash slot, `{prefix:batch}`):
/// 1 `state` (hash key → `s|attempts|lease_until_ms|owner`), 2 `results`
/// (hash key → the Done/Failed [`ItemState`] as JSON), 3 `keys` (zset, every key
/// at score 0, for paging in key order), 4 `counts` (hash total, done, failed,
/// running), 5 `pause` (Unix ms).
const PRELUDE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local function parse(raw)
    if not raw then return nil end
    local s, a, u, w = string.match(raw, '^(%a)|(%d+)|(%d*)|(.*)$')
    return s, tonumber(a), tonumber(u) or 0, w
end
local function count(field, by)
    if by ~= 0 then redis.call('HINCRBY', KEYS[4], field, by) end
end
local function keep(ttl)
    for i = 1, 5 do
        if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ttl) end
    end
end
";

/// ARGV: ttl ms, then the keys. Returns {to submit..., ''} then the counts of
/// done and running left alone, as the last two entries.
static OPEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        local out, done, running = {}, 0, 0
        for i = 2, #ARGV do
            local key = ARGV[i]
            local s, a, u = parse(redis.call('HGET', KEYS[1], key))
            if s == 'd' then
                done = done + 1
            elseif s == 'r' and u > now then
                running = running + 1
            else
                if not s then
                    count('total', 1)
                    redis.call('ZADD', KEYS[3], 0, key)
                    a = 0
                elseif s == 'f' then
                    count('failed', -1)
                    redis.call('HDEL', KEYS[2], key)
                elseif s == 'r' then
                    count('running', -1)
                end
                redis.call('HSET', KEYS[1], key, 'p|' .. a .. '||')
                out[#out + 1] = key
            end
        end
        keep(tonumber(ARGV[1]))
        out[#out + 1] = tostring(done)
        out[#out + 1] = tostring(running)
        return out",
    ))
});

/// ARGV: key, owner, lease ms. Returns {'claimed', attempts before, paused
/// ms} | {'done'} | {'failed'} | {'held', ms} | {'unknown'}. A claim counts
/// the call it is for.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        local s, a, u, w = parse(redis.call('HGET', KEYS[1], ARGV[1]))
        if not s then return {'unknown'} end
        if s == 'd' then return {'done'} end
        if s == 'f' then return {'failed'} end
        if s == 'r' and u > now and w ~= ARGV[2] then return {'held', tostring(u - now)} end
        if s ~= 'r' then count('running', 1) end
        local lease = string.format('%d', now + tonumber(ARGV[3]))
        redis.call('HSET', KEYS[1], ARGV[1], 'r|' .. (a + 1) .. '|' .. lease .. '|' .. ARGV[2])
        local paused = tonumber(redis.call('GET', KEYS[5]) or '0') - now
        if paused < 0 then paused = 0 end
        return {'claimed', tostring(a), string.format('%d', paused)}",
    ))
});

/// ARGV: key, owner, lease ms, 1 to count a call. Returns 1 when still held.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        local s, a, u, w = parse(redis.call('HGET', KEYS[1], ARGV[1]))
        if s ~= 'r' or w ~= ARGV[2] then return 0 end
        a = a + tonumber(ARGV[4])
        local lease = string.format('%d', now + tonumber(ARGV[3]))
        redis.call('HSET', KEYS[1], ARGV[1], 'r|' .. a .. '|' .. lease .. '|' .. ARGV[2])
        return 1",
    ))
});

/// ARGV: key, 'd' or 'f', result JSON, attempts, ttl ms. Returns 1 when
/// recorded, 0 when the item was already done.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        local key, to = ARGV[1], ARGV[2]
        local s = parse(redis.call('HGET', KEYS[1], key))
        if s == 'd' then return 0 end
        if not s then
            count('total', 1)
            redis.call('ZADD', KEYS[3], 0, key)
        elseif s == 'r' then
            count('running', -1)
        elseif s == 'f' then
            count('failed', -1)
        end
        count(to == 'd' and 'done' or 'failed', 1)
        redis.call('HSET', KEYS[1], key, to .. '|' .. ARGV[4] .. '||')
        redis.call('HSET', KEYS[2], key, ARGV[3])
        keep(tonumber(ARGV[5]))
        return 1",
    ))
});

/// ARGV: key, owner.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        local s, a, u, w = parse(redis.call('HGET', KEYS[1], ARGV[1]))
        if s ~= 'r' or w ~= ARGV[2] then return 0 end
        count('running', -1)
        redis.call('HSET', KEYS[1], ARGV[1], 'p|' .. a .. '||')
        return 1",
    ))
});

/// ARGV: until ms, ttl ms. A later pause wins.
static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
        local deadline = tonumber(ARGV[1])
        local old = tonumber(redis.call('GET', KEYS[5]) or '0')
        if deadline > old and deadline > now then
            redis.call('SET', KEYS[5], string.format('%d', deadline), 'PX', string.format('%d', deadline - now))
        end
        return 0",
    ))
});

/// Script arguments, each as Redis sees it.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {{
        let mut args: Vec<Vec<u8>> = Vec::new();
        $(args.extend(redis::ToRedisArgs::to_redis_args(&$arg));)*
        args
    }};
}

/// Keys one `open` script takes at most (bigger submissions are cut in chunks).
const OPEN_CHUNK: usize = 1000;

/// A [`JobStore`] on Redis (features `apalis` and `redis`): every worker and the
/// submitter on one Redis see one state per batch.
///
/// Per batch, five keys in one hash slot (`{prefix:batch}:state`, `:results`,
/// `:keys`, `:counts`, `:pause`), each transition one Lua script on Redis'
/// clock, so leases mean the same on every machine. A batch lives
/// [`ttl`](Self::ttl) (default 7 days) after its last submission or result.
/// Results are bounded by [`max_result_bytes`](Self::max_result_bytes) per item
/// (default 1 MiB; a larger response is recorded as a failure).
#[derive(Clone)]
pub struct RedisJobStore {
    conn: ConnectionManager,
    link: Arc<Link>,
    prefix: String,
    ttl: Duration,
    max_result_bytes: usize,
}

impl fmt::Debug for RedisJobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisJobStore")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("connected", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisJobStore {
    /// A store on `client` (connects lazily, reconnects on its own).
    pub fn new(client: redis::Client) -> Result<Self, ConfigError> {
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())
            .map_err(ConfigError::Redis)?;
        Ok(Self {
            conn,
            link: Arc::new(link("job_store", "tower-llm")),
            prefix: "tower-llm".to_owned(),
            ttl: Duration::from_secs(7 * 24 * 3600),
            max_result_bytes: 1 << 20,
        })
    }

    /// The prefix of every key (default `tower-llm`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a batch is kept after its last submission or result (default
    /// 7 days; at least 1 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The largest response (as JSON) kept per item (default 1 MiB).
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = bytes.max(1);
        self
    }

    /// Whether the last exchange with Redis worked.
    pub fn is_connected(&self) -> bool {
        self.link.is_up()
    }

    fn keys(&self, batch: &str) -> [String; 5] {
        let tag = format!("{{{}:{batch}}}", self.prefix);
        ["state", "results", "keys", "counts", "pause"].map(|k| format!("{tag}:{k}"))
    }

    fn ttl_ms(&self) -> u64 {
        lease_ms(self.ttl)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        batch: &str,
        args: Vec<Vec<u8>>,
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in self.keys(batch) {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        self.link
            .observe(invocation.invoke_async(&mut conn).await)
            .map_err(StoreError::new)
    }

    async fn finish(
        &self,
        batch: &str,
        key: &str,
        state: &ItemState,
        attempts: u32,
    ) -> Result<bool, StoreError> {
        check_key("batch id", batch)?;
        check_key("item key", key)?;
        let mut json = serde_json::to_string(state).map_err(StoreError::new)?;
        let mut to = if matches!(state, ItemState::Done { .. }) {
            "d"
        } else {
            "f"
        };
        if json.len() > self.max_result_bytes {
            let failure = ItemState::Failed {
                failure: ItemFailure {
                    kind: crate::classify::FailureKind::InvalidResponse,
                    message: format!(
                        "the response ({} bytes as JSON) is over the store's {} bytes",
                        json.len(),
                        self.max_result_bytes
                    ),
                    fatal: true,
                },
                attempts,
            };
            json = serde_json::to_string(&failure).map_err(StoreError::new)?;
            to = "f";
        }
        let recorded: i64 = self
            .run(
                &FINISH,
                batch,
                args![key, to, json, attempts, self.ttl_ms()],
            )
            .await?;
        Ok(recorded == 1)
    }
}

fn parse_state(raw: &str, result: Option<String>) -> Result<ItemState, StoreError> {
    let corrupt = || StoreError::new(format!("unreadable job state {raw:?}"));
    let mut parts = raw.splitn(4, '|');
    let (s, a, u, w) = (
        parts.next().ok_or_else(corrupt)?,
        parts.next().ok_or_else(corrupt)?,
        parts.next().ok_or_else(corrupt)?,
        parts.next().ok_or_else(corrupt)?,
    );
    let attempts: u32 = a.parse().map_err(|_| corrupt())?;
    Ok(match s {
        "p" => ItemState::Pending { attempts },
        "r" => ItemState::Running {
            worker: w.to_owned(),
            lease_until_ms: u.parse().map_err(|_| corrupt())?,
            attempts,
        },
        "d" | "f" => match result {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| StoreError::new(format!("unreadable job result: {e}")))?,
            None => return Err(StoreError::new("a finished job without its result")),
        },
        _ => return Err(corrupt()),
    })
}

impl JobStore for RedisJobStore {
    fn open<'a>(&'a self, batch: &'a str, keys: &'a [String]) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            check_key("batch id", batch)?;
            for key in keys {
                check_key("item key", key)?;
            }
            let mut opened = Opened::default();
            for chunk in keys.chunks(OPEN_CHUNK) {
                let mut args = self.ttl_ms().to_redis_args();
                for key in chunk {
                    args.extend(key.to_redis_args());
                }
                let mut out: Vec<String> = self.run(&OPEN, batch, args).await?;
                let running = out.pop().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
                let done = out.pop().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
                opened.running += running;
                opened.already_done += done;
                opened.to_submit.extend(out);
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
            let out: Vec<String> = self
                .run(&CLAIM, batch, args![key, worker, lease_ms(lease)])
                .await?;
            let number = |i: usize| out.get(i).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            Ok(match out.first().map(String::as_str) {
                Some("claimed") => Claim::Claimed {
                    attempts: u32::try_from(number(1)).unwrap_or(u32::MAX),
                    paused_for: Duration::from_millis(number(2)),
                },
                Some("done") => Claim::Done,
                Some("failed") => Claim::Failed,
                Some("held") => Claim::Held(Duration::from_millis(number(1))),
                _ => Claim::Unknown,
            })
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
            let held: i64 = self
                .run(
                    &RENEW,
                    batch,
                    args![key, worker, lease_ms(lease), u8::from(called)],
                )
                .await?;
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
            let state = ItemState::Done {
                response_json: response_json.to_owned(),
                attempts,
            };
            self.finish(batch, key, &state, attempts).await
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
            let state = ItemState::Failed {
                failure: failure.clone(),
                attempts,
            };
            self.finish(batch, key, &state, attempts).await
        })
    }

    fn release<'a>(&'a self, batch: &'a str, key: &'a str, worker: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _: i64 = self.run(&RELEASE, batch, args![key, worker]).await?;
            Ok(())
        })
    }

    fn pause<'a>(&'a self, batch: &'a str, until: SystemTime) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_key("batch id", batch)?;
            let _: i64 = self
                .run(&PAUSE, batch, args![unix_ms(until), self.ttl_ms()])
                .await?;
            Ok(())
        })
    }

    fn paused_until<'a>(&'a self, batch: &'a str) -> StoreFuture<'a, Option<SystemTime>> {
        Box::pin(async move {
            let [.., pause] = self.keys(batch);
            let mut conn = self.conn.clone();
            let until: Option<u64> = self
                .link
                .observe(redis::cmd("GET").arg(pause).query_async(&mut conn).await)
                .map_err(StoreError::new)?;
            Ok(until
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                .filter(|at| *at > SystemTime::now()))
        })
    }

    fn progress<'a>(&'a self, batch: &'a str) -> StoreFuture<'a, Option<Progress>> {
        Box::pin(async move {
            let [_, _, _, counts, _] = self.keys(batch);
            let mut conn = self.conn.clone();
            let (total, done, failed, running): (
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
            ) = self
                .link
                .observe(
                    redis::cmd("HMGET")
                        .arg(counts)
                        .arg(&["total", "done", "failed", "running"])
                        .query_async(&mut conn)
                        .await,
                )
                .map_err(StoreError::new)?;
            let Some(total) = total else {
                return Ok(None);
            };
            let n = |v: Option<i64>| usize::try_from(v.unwrap_or(0)).unwrap_or(0);
            let (total, done, failed, in_flight) = (n(Some(total)), n(done), n(failed), n(running));
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
            let [state, results, keys, ..] = self.keys(batch);
            let mut conn = self.conn.clone();
            let from = match after {
                Some(after) => format!("({after}"),
                None => "-".to_owned(),
            };
            // One more than asked: whether there is a next page.
            let mut page: Vec<String> = self
                .link
                .observe(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&keys)
                        .arg(from)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit + 1)
                        .query_async(&mut conn)
                        .await,
                )
                .map_err(StoreError::new)?;
            let more = page.len() > limit;
            page.truncate(limit);
            if page.is_empty() {
                return Ok(ItemsPage::default());
            }
            let (states, finished): (Vec<Option<String>>, Vec<Option<String>>) = self
                .link
                .observe(
                    redis::pipe()
                        .cmd("HMGET")
                        .arg(&state)
                        .arg(&page)
                        .cmd("HMGET")
                        .arg(&results)
                        .arg(&page)
                        .query_async(&mut conn)
                        .await,
                )
                .map_err(StoreError::new)?;
            let mut items = Vec::with_capacity(page.len());
            for ((key, raw), result) in page.into_iter().zip(states).zip(finished) {
                let Some(raw) = raw else { continue };
                items.push((key, parse_state(&raw, result)?));
            }
            let next = more.then(|| items.last().map(|(k, _)| k.clone())).flatten();
            Ok(ItemsPage { items, next })
        })
    }
}
