//! Batches as jobs on apalis workers: `POST /v1/batch` in asynchronous mode
//! submits ([`crate::routes::batch_jobs`]), `llm-proxy worker` runs them
//! ([`worker`]).
//!
//! Both sides share `[state] redis_url` and `prefix`: the items are pushed as
//! [`ItemJob`]s of a [`JobRequest`] to the apalis queue `{prefix}:batches`, and
//! their states and results live in a [`RedisJobStore`] under the same prefix.
//! A worker runs each item through its model's tiers without escalation (the
//! `cores`, as in-process batches do) and records an [`ItemAnswer`]; the proxy
//! reads progress and results back from the store.

pub(crate) mod worker;

use std::time::Duration;

use apalis_redis::RedisStorage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower_llm_resilience::jobs::{self, ItemJob};
use tower_llm_resilience::redis::RedisJobStore;

use crate::config::{BatchConfig, ConfigError};
use crate::redis_state::RedisState;

#[cfg(doc)]
use crate::batch::ItemAnswer;

/// One item of an asynchronous batch, as it travels through the queue: the
/// chat completion body, the model it names (for usage records; the worker
/// reads the model from the body, as the chat endpoint does) and the client
/// key id that submitted it (usage records and budgets charge it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobRequest {
    /// The submitting client key's id (`-`: the proxy runs without keys).
    #[serde(default)]
    pub(crate) client: String,
    /// The `model` of `body` (empty when it names none).
    pub(crate) model: String,
    /// The chat completion request.
    pub(crate) body: Value,
}

/// The apalis storage of the batch queue.
pub(crate) type JobStorage = RedisStorage<ItemJob<JobRequest>>;

/// How long connecting the queue may take before a submission answers 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue and the job store of `[state] redis_url`, shared by the proxy
/// (which submits and reports) and the workers.
#[derive(Clone)]
pub(crate) struct Jobs {
    client: redis::Client,
    queue: String,
    heartbeat: Duration,
    /// Items' states and results.
    pub(crate) store: RedisJobStore,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// The queue `{prefix}:batches` and the job store on `redis` (nothing
    /// connects yet).
    pub(crate) fn new(redis: &RedisState, batch: &BatchConfig) -> Result<Self, ConfigError> {
        let (client, prefix) = redis.client_and_prefix();
        let store = RedisJobStore::new(client.clone())
            .map_err(|e| ConfigError(format!("job store: {e}")))?
            .prefix(prefix.as_str())
            .ttl(batch.job_ttl_secs);
        Ok(Self {
            client,
            queue: format!("{prefix}:batches"),
            heartbeat: batch.job_heartbeat_secs,
            store,
        })
    }

    /// The queue's name.
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// The queue's storage settings.
    pub(crate) fn config(&self) -> apalis_redis::Config {
        jobs::redis_storage_config(&self.queue).heartbeat_interval(self.heartbeat)
    }

    /// A connection to the queue, and the storage on it (bounded: an
    /// unreachable Redis is an error after a few seconds).
    pub(crate) async fn storage(
        &self,
    ) -> Result<(JobStorage, redis::aio::ConnectionManager), String> {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_connection_manager())
            .await
            .map_err(|_| format!("no answer from Redis within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        Ok((
            RedisStorage::new(conn.clone()).with_config(self.config()),
            conn,
        ))
    }
}
