//! [`RedisEscalationStore`]: escalations shared by every instance.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::broadcast;

use crate::escalation::store::{to_unix_ms, watch_changes, ChangeFuture, StoreFuture, Update};
use crate::escalation::{
    AuditEntry, Cursor, EscalationId, EscalationRecord, EscalationStore, Page, Status, StoreError,
};

use super::error::ConfigError;
use super::link::{link, manager_config, Link};
use super::subscriber::{self, AbortOnDrop, Listener};

/// KEYS: record, its audit list, the global audit list, the creation index, the
/// deletion index. ARGV: id, version, status, created ms, record JSON, audit JSON,
/// delete-at ms, global audit cap, channel, now ms.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('HSET', KEYS[1], 'version', ARGV[2], 'status', ARGV[3], 'record', ARGV[5])
        redis.call('RPUSH', KEYS[2], ARGV[6])
        redis.call('RPUSH', KEYS[3], ARGV[6])
        redis.call('LTRIM', KEYS[3], -tonumber(ARGV[8]), -1)
        redis.call('PEXPIREAT', KEYS[1], ARGV[7])
        redis.call('PEXPIREAT', KEYS[2], ARGV[7])
        redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
        redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
        -- Drop index entries of records whose keys have expired.
        local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[10], 'LIMIT', 0, 100)
        if #gone > 0 then
            redis.call('ZREM', KEYS[4], unpack(gone))
            redis.call('ZREM', KEYS[5], unpack(gone))
        end
        redis.call('PUBLISH', ARGV[9], ARGV[1])
        return 1",
    )
});

/// KEYS: record, its audit list, the global audit list, the deletion index.
/// ARGV: id, expected version, new version, status, record JSON, audit JSON,
/// delete-at ms, global audit cap, channel.
/// Returns `{1, ''}` when applied, `{0, record JSON or ''}` on a conflict.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local version = redis.call('HGET', KEYS[1], 'version')
        if not version then return {0, ''} end
        if version ~= ARGV[2] then return {0, redis.call('HGET', KEYS[1], 'record')} end
        redis.call('HSET', KEYS[1], 'version', ARGV[3], 'status', ARGV[4], 'record', ARGV[5])
        redis.call('RPUSH', KEYS[2], ARGV[6])
        redis.call('RPUSH', KEYS[3], ARGV[6])
        redis.call('LTRIM', KEYS[3], -tonumber(ARGV[8]), -1)
        redis.call('PEXPIREAT', KEYS[1], ARGV[7])
        redis.call('PEXPIREAT', KEYS[2], ARGV[7])
        redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
        redis.call('PUBLISH', ARGV[9], ARGV[1])
        return {1, ''}",
    )
});

/// Builds a [`RedisEscalationStore`].
///
/// Defaults: key prefix `tower-llm`, records kept 7 days after they expire (or
/// last change, whichever is later), the global audit list capped at 100 000
/// entries.
#[derive(Clone, Debug)]
pub struct RedisEscalationStoreBuilder {
    client: redis::Client,
    prefix: String,
    retention: Duration,
    audit_cap: u32,
}

impl RedisEscalationStoreBuilder {
    /// The prefix of every Redis key and channel (default `tower-llm`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a record and its audit trail stay in Redis after it expires or
    /// last changed, whichever is later (default 7 days). Redis then deletes them
    /// (TTL); an expired record within retention still answers
    /// [`Expired`](crate::escalation::EscalationError::Expired) to its token, a
    /// deleted one [`InvalidToken`](crate::escalation::EscalationError::InvalidToken).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The most entries the global audit list keeps (default 100 000); the
    /// per-escalation trails are kept whole for the record's life.
    pub fn audit_cap(mut self, entries: u32) -> Self {
        self.audit_cap = entries;
        self
    }

    /// Build the store. Must be called inside a tokio runtime (it spawns the task
    /// that listens for changes made by other instances). Never waits for Redis.
    pub fn build(self) -> Result<RedisEscalationStore, ConfigError> {
        if self.prefix.is_empty() {
            return Err(ConfigError::EmptyPrefix);
        }
        if self.audit_cap == 0 {
            return Err(ConfigError::Zero("audit_cap"));
        }
        let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config())?;
        let link = Arc::new(link("escalation_store", self.prefix.clone()));
        let (changes, _) = broadcast::channel(1024);
        let channel = format!("{}:esc:changed", self.prefix);
        let task = tokio::spawn(subscriber::run(
            self.client,
            channel.clone(),
            link.clone(),
            Changes(changes.clone()),
        ));
        Ok(RedisEscalationStore {
            conn,
            link,
            prefix: self.prefix,
            channel,
            retention: self.retention,
            audit_cap: self.audit_cap,
            changes,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }
}

/// An [`EscalationStore`] on Redis: every instance of a service sees the same
/// escalations, so one created on instance A can be listed and resolved through
/// instance B, and a wait-mode call on A wakes up when B resolves it.
///
/// - **Atomic rules.** Insert and the versioned compare-and-swap of
///   [`update`](EscalationStore::update) are Lua scripts: the version check, the
///   record write and the audit append happen in one step, so first resolution wins
///   and a token resumes once across instances.
/// - **Keys** (`{p}` is the prefix): `{p}:esc:rec:{id}` (hash: version, status,
///   record JSON), `{p}:esc:audit:{id}` (list), `{p}:esc:audit` (global list,
///   capped), `{p}:esc:index` (sorted set by creation time, for `list`),
///   `{p}:esc:expiry` (sorted set by deletion time, to prune the index).
/// - **Expiry.** Record and trail carry a TTL: the record's expiry plus the
///   [retention](RedisEscalationStoreBuilder::retention), so nothing grows without
///   bound. Expiry itself stays the layer's rule (a pending record past
///   `expires_at` is expired), as the store contract says.
/// - **Wake-ups.** Every change is published on `{p}:esc:changed`; the store
///   listens and completes [`watch`](EscalationStore::watch) futures, with the
///   layer's polling as a backstop (and after a reconnection every watcher is woken
///   to read again).
/// - **Durability** is Redis's: with `appendonly yes` and `appendfsync always`, an
///   escalation acknowledged to the caller survives a Redis crash.
///
/// Clones share the connection.
#[derive(Clone)]
pub struct RedisEscalationStore {
    conn: ConnectionManager,
    link: Arc<Link>,
    prefix: String,
    channel: String,
    retention: Duration,
    audit_cap: u32,
    changes: broadcast::Sender<Option<EscalationId>>,
    _task: Arc<AbortOnDrop>,
}

impl fmt::Debug for RedisEscalationStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEscalationStore")
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("connected", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisEscalationStore {
    /// Configure a store through `client`.
    pub fn builder(client: redis::Client) -> RedisEscalationStoreBuilder {
        RedisEscalationStoreBuilder {
            client,
            prefix: "tower-llm".to_owned(),
            retention: Duration::from_secs(7 * 24 * 3600),
            audit_cap: 100_000,
        }
    }

    /// A store with the defaults; see [`RedisEscalationStoreBuilder::build`].
    pub fn new(client: redis::Client) -> Result<Self, ConfigError> {
        Self::builder(client).build()
    }

    /// Whether the last exchange with Redis worked.
    pub fn is_connected(&self) -> bool {
        self.link.is_up()
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}:esc:rec:{id}", self.prefix)
    }

    fn audit_key(&self, id: &str) -> String {
        format!("{}:esc:audit:{id}", self.prefix)
    }

    fn global_audit_key(&self) -> String {
        format!("{}:esc:audit", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}:esc:index", self.prefix)
    }

    fn expiry_key(&self) -> String {
        format!("{}:esc:expiry", self.prefix)
    }

    /// When Redis deletes the record: `retention` after its expiry or now,
    /// whichever is later.
    fn delete_at_ms(&self, record: &EscalationRecord) -> u64 {
        let base = record.expires_at.max(SystemTime::now());
        to_unix_ms(base)
            .saturating_add(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX))
    }

    fn backend(&self, e: redis::RedisError) -> StoreError {
        self.link.down(&e);
        StoreError::Backend(Box::new(e))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EscalationStore for RedisEscalationStore {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let id = record.id.as_str();
            let mut conn = self.conn.clone();
            let inserted: i64 = INSERT
                .key(self.record_key(id))
                .key(self.audit_key(id))
                .key(self.global_audit_key())
                .key(self.index_key())
                .key(self.expiry_key())
                .arg(id)
                .arg(record.version)
                .arg(record.status.as_str())
                .arg(to_unix_ms(record.created_at))
                .arg(to_json(&record)?)
                .arg(to_json(&audit)?)
                .arg(self.delete_at_ms(&record))
                .arg(self.audit_cap)
                .arg(&self.channel)
                .arg(to_unix_ms(SystemTime::now()))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            if inserted == 0 {
                return Err(StoreError::Duplicate(record.id));
            }
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let text: Option<String> = redis::cmd("HGET")
                .arg(self.record_key(id.as_str()))
                .arg("record")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            text.map(|t| from_json(&t)).transpose()
        })
    }

    fn update(
        &self,
        expected_version: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        Box::pin(async move {
            let id = record.id.as_str();
            let mut conn = self.conn.clone();
            let (applied, current): (i64, String) = UPDATE
                .key(self.record_key(id))
                .key(self.audit_key(id))
                .key(self.global_audit_key())
                .key(self.expiry_key())
                .arg(id)
                .arg(expected_version)
                .arg(record.version)
                .arg(record.status.as_str())
                .arg(to_json(&record)?)
                .arg(to_json(&audit)?)
                .arg(self.delete_at_ms(&record))
                .arg(self.audit_cap)
                .arg(&self.channel)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            if applied == 1 {
                return Ok(Update::Applied);
            }
            let current = if current.is_empty() {
                None
            } else {
                Some(Box::new(from_json(&current)?))
            };
            Ok(Update::Conflict(current))
        })
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // Equal scores come back ordered by member: creation time, then id.
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.index_key())
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(self.record_key(id))
                    .arg("status")
                    .arg("record");
            }
            let rows: Vec<(Option<String>, Option<String>)> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            let mut records = Vec::new();
            for (id, (stored_status, text)) in ids.iter().zip(rows) {
                let wanted = status.is_none_or(|s| stored_status.as_deref() == Some(s.as_str()));
                if let (true, Some(text)) = (wanted, text) {
                    // One unreadable record never hides the others.
                    match from_json(&text) {
                        Ok(record) => records.push(record),
                        Err(e) => crate::escalation::store_unreadable("redis", id, &e),
                    }
                }
            }
            Ok(records)
        })
    }

    fn list_page(
        &self,
        status: Option<Status>,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<'_, Page> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut page = Page::default();
            // Scores are creation times: start at the cursor's, skip up to it.
            let from_ms = after.as_ref().map_or(0, |c| c.created_at_ms);
            let chunk = limit.clamp(1, 500) + 1;
            let mut offset = 0usize;
            let mut more = false;
            'scan: loop {
                let ids: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
                    .arg(self.index_key())
                    .arg(from_ms)
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(chunk)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.backend(e))?;
                if ids.is_empty() {
                    break;
                }
                offset += ids.len();
                let ids: Vec<(String, u64)> = ids
                    .into_iter()
                    .map(|(id, score)| (id, score as u64))
                    .filter(|(id, ms)| {
                        after
                            .as_ref()
                            .is_none_or(|c| c.precedes(*ms, &EscalationId::new(id.as_str())))
                    })
                    .collect();
                let mut pipe = redis::pipe();
                for (id, _) in &ids {
                    pipe.cmd("HMGET")
                        .arg(self.record_key(id))
                        .arg("status")
                        .arg("record");
                }
                let rows: Vec<(Option<String>, Option<String>)> = if ids.is_empty() {
                    Vec::new()
                } else {
                    pipe.query_async(&mut conn)
                        .await
                        .map_err(|e| self.backend(e))?
                };
                for ((id, ms), (stored_status, text)) in ids.into_iter().zip(rows) {
                    let wanted =
                        status.is_none_or(|s| stored_status.as_deref() == Some(s.as_str()));
                    let Some(text) = text.filter(|_| wanted) else {
                        continue;
                    };
                    if page.records.len() + page.unreadable == limit {
                        more = true;
                        break 'scan;
                    }
                    match from_json(&text) {
                        Ok(record) => page.records.push(record),
                        Err(e) => {
                            crate::escalation::store_unreadable("redis", &id, &e);
                            page.unreadable += 1;
                        }
                    }
                    page.next = Some(Cursor {
                        created_at_ms: ms,
                        id: EscalationId::new(id),
                    });
                }
            }
            self.link.up();
            if !more {
                page.next = None;
            }
            Ok(page)
        })
    }

    fn count(&self, status: Status) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            // Reads each record's status field only, never its JSON.
            let mut conn = self.conn.clone();
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.index_key())
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            let mut count = 0;
            for chunk in ids.chunks(1000) {
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.cmd("HGET").arg(self.record_key(id)).arg("status");
                }
                let statuses: Vec<Option<String>> = pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.backend(e))?;
                count += statuses
                    .iter()
                    .filter(|s| s.as_deref() == Some(status.as_str()))
                    .count();
            }
            self.link.up();
            Ok(count)
        })
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        Box::pin(async move {
            let key = match id {
                Some(id) => self.audit_key(id.as_str()),
                None => self.global_audit_key(),
            };
            let mut conn = self.conn.clone();
            let entries: Vec<String> = redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            entries.iter().map(|e| from_json(e)).collect()
        })
    }

    fn watch(&self, id: &EscalationId) -> Option<ChangeFuture> {
        Some(watch_changes(self.changes.subscribe(), id.clone()))
    }
}

/// Turns change messages into wake-ups.
struct Changes(broadcast::Sender<Option<EscalationId>>);

impl Listener for Changes {
    async fn subscribed(&mut self) {
        // Changes made while unsubscribed were missed: every watcher reads again.
        let _ = self.0.send(None);
    }

    fn message(&mut self, payload: &[u8]) {
        if let Ok(id) = std::str::from_utf8(payload) {
            // No receivers: nobody waits.
            let _ = self.0.send(Some(EscalationId::new(id)));
        }
    }
}
