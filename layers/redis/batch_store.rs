//! [`RedisBatchStore`]: batch idempotency records shared by every instance.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::partial_batch::{BatchStore, StoreError, StoreFuture, StoredSuccess};

use super::error::ConfigError;
use super::link::{manager_config, Link};

/// A [`BatchStore`] on Redis: a batch first run on instance A and re-run on
/// instance B gets A's successes back from the store.
///
/// One hash per batch, `{prefix}:batch:{batch_id}`, field = item key, value = the
/// [`StoredSuccess`] as JSON. Every record refreshes the hash's TTL (default 24 h),
/// so a batch's record lives that long after its last success.
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
/// let store = RedisBatchStore::new(client)?.ttl(Duration::from_secs(3600));
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
}

impl fmt::Debug for RedisBatchStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBatchStore")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("connected", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisBatchStore {
    /// A store through `client`, prefix `tower-llm`, records kept 24 h after a
    /// batch's last success. Must be called inside a tokio runtime; never waits for
    /// Redis.
    pub fn new(client: redis::Client) -> Result<Self, ConfigError> {
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
        Ok(Self {
            conn,
            link: Arc::new(Link::new("batch_store", "tower-llm")),
            prefix: "tower-llm".to_owned(),
            ttl: Duration::from_secs(24 * 3600),
        })
    }

    /// The prefix of every Redis key (default `tower-llm`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a batch's record lives after its last success (default 24 h; at
    /// least 1 ms).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Whether the last exchange with Redis worked.
    pub fn is_connected(&self) -> bool {
        self.link.is_up()
    }

    fn key(&self, batch_id: &str) -> String {
        format!("{}:batch:{batch_id}", self.prefix)
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
            let fields: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(self.key(batch_id))
                .query_async(&mut conn)
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
            let hash = self.key(batch_id);
            let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
            let mut conn = self.conn.clone();
            redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(&hash)
                .arg(key)
                .arg(json)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&hash)
                .arg(ttl)
                .ignore()
                .exec_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            Ok(())
        })
    }

    fn forget<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("DEL")
                .arg(self.key(batch_id))
                .exec_async(&mut conn)
                .await
                .map_err(|e| self.backend(e))?;
            self.link.up();
            Ok(())
        })
    }
}
