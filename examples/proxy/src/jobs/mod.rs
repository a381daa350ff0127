//! Batches as jobs on apalis workers: `POST /v1/batch` in asynchronous mode
//! submits ([`crate::routes::batch_jobs`]), `llm-proxy worker` runs them
//! ([`worker`]).
//!
//! Both sides share `[state]` and its `prefix`: the items are pushed as
//! [`ItemJob`]s of a [`JobRequest`] to the apalis queue `{prefix}:batches`, and
//! their states and results live in a [`JobStore`] beside it. The queue and
//! the store are on Redis (apalis-redis and a [`RedisJobStore`]) or on
//! PostgreSQL (apalis-postgres and a [`PostgresJobStore`]), as `[batch]
//! job_queue` says (by default Redis when `[state]` names one). A worker runs
//! each item through its model's tiers without escalation (the `cores`, as
//! in-process batches do) and records an [`ItemAnswer`]; the proxy reads
//! progress and results back from the store.

pub(crate) mod worker;

use std::sync::Arc;
use std::time::Duration;

use apalis_postgres::{PgPool, PostgresStorage};
use apalis_redis::RedisStorage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::OnceCell;
use tower_llm_resilience::jobs::{self, ItemJob, JobStore, Submitted};
use tower_llm_resilience::postgres::PostgresJobStore;
use tower_llm_resilience::redis::RedisJobStore;

use crate::config::{BatchConfig, Config, ConfigError, JobQueue};
use crate::postgres_state::PostgresState;
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

/// The apalis storage of the batch queue on Redis.
pub(crate) type RedisQueue = RedisStorage<ItemJob<JobRequest>>;
/// The apalis storage of the batch queue on PostgreSQL.
pub(crate) type PostgresQueue = PostgresStorage<ItemJob<JobRequest>>;

/// How long connecting the queue may take before a submission answers 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long setting up apalis' schema on PostgreSQL may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the queue is.
#[derive(Clone)]
enum Queue {
    Redis(redis::Client),
    Postgres {
        pool: PgPool,
        /// Whether apalis' schema is set up here (`postgres_migrate`), and
        /// whether that was done.
        migrate: bool,
        set_up: Arc<OnceCell<()>>,
    },
}

/// The queue and the job store of `[state]`, shared by the proxy (which
/// submits and reports) and the workers.
#[derive(Clone)]
pub(crate) struct Jobs {
    queue: Queue,
    /// Put before batch ids in the store: on PostgreSQL its tables are shared
    /// by every deployment on the database, and this keeps one prefix's
    /// batches from another's (the Redis store prefixes its keys itself).
    batch_prefix: String,
    name: String,
    heartbeat: Duration,
    /// Items' states and results.
    pub(crate) store: Arc<dyn JobStore>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("queue", &self.name)
            .field("on", &self.backend())
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// The queue `{prefix}:batches` and the job store on the store `[batch]
    /// job_queue` names (by default Redis if set, else PostgreSQL); `None`
    /// when `[state]` names neither. Nothing connects yet.
    pub(crate) fn build(
        config: &Config,
        redis: Option<&RedisState>,
        postgres: Option<&PostgresState>,
    ) -> Result<Option<Self>, ConfigError> {
        let batch = &config.batch;
        let Some(on) = queue_of(config) else {
            return Ok(None);
        };
        match on {
            JobQueue::Redis => {
                let redis = redis.ok_or_else(|| {
                    ConfigError("batch.job_queue = \"redis\" needs [state] redis_url".into())
                })?;
                Self::on_redis(redis, batch).map(Some)
            }
            JobQueue::Postgres => {
                let (Some(postgres), Some(pool)) = (postgres, config.state.postgres_queue_pool()?)
                else {
                    return Err(ConfigError(
                        "batch.job_queue = \"postgres\" needs [state] postgres_url".into(),
                    ));
                };
                Ok(Some(Self::on_postgres(
                    postgres,
                    pool,
                    config.state.postgres_migrate,
                    batch,
                )))
            }
        }
    }

    fn on_redis(redis: &RedisState, batch: &BatchConfig) -> Result<Self, ConfigError> {
        let (client, prefix) = redis.client_and_prefix();
        let store = RedisJobStore::new(client.clone())
            .map_err(|e| ConfigError(format!("job store: {e}")))?
            .prefix(prefix.as_str())
            .ttl(batch.job_ttl_secs);
        Ok(Self {
            batch_prefix: String::new(),
            queue: Queue::Redis(client),
            name: format!("{prefix}:batches"),
            heartbeat: batch.job_heartbeat_secs,
            store: Arc::new(store),
        })
    }

    fn on_postgres(
        postgres: &PostgresState,
        pool: PgPool,
        migrate: bool,
        batch: &BatchConfig,
    ) -> Self {
        // The tables are shared per database: batch ids carry the prefix.
        let store = PostgresJobStore::new(postgres.pg()).ttl(batch.job_ttl_secs);
        Self {
            batch_prefix: format!("{}/", postgres.prefix()),
            queue: Queue::Postgres {
                pool,
                migrate,
                set_up: Arc::new(OnceCell::new()),
            },
            name: format!("{}:batches", postgres.prefix()),
            heartbeat: batch.job_heartbeat_secs,
            store: Arc::new(store),
        }
    }

    /// The id in the store of batch `scoped` (already scoped to its client).
    pub(crate) fn batch_id(&self, scoped: &str) -> String {
        format!("{}{scoped}", self.batch_prefix)
    }

    /// The queue's name.
    pub(crate) fn queue(&self) -> &str {
        &self.name
    }

    /// `"redis"` or `"postgres"`.
    pub(crate) fn backend(&self) -> &'static str {
        match self.queue {
            Queue::Redis(_) => "redis",
            Queue::Postgres { .. } => "postgres",
        }
    }

    /// The Redis queue's storage settings.
    pub(crate) fn redis_config(&self) -> apalis_redis::Config {
        jobs::redis_storage_config(&self.name).heartbeat_interval(self.heartbeat)
    }

    /// The PostgreSQL queue's storage settings: as on Redis, one job fetched
    /// at a time, a worker silent for six heartbeats taken for dead.
    pub(crate) fn postgres_config(&self) -> apalis_postgres::Config {
        apalis_postgres::Config::default()
            .queue(&self.name)
            .batch_size(1)
            .heartbeat_interval(self.heartbeat)
            .missed_heartbeats(6)
    }

    /// A connection to the Redis queue, and the storage on it (bounded: an
    /// unreachable Redis is an error after a few seconds). `None` on
    /// PostgreSQL.
    pub(crate) async fn redis_storage(
        &self,
    ) -> Option<Result<(RedisQueue, redis::aio::ConnectionManager), String>> {
        let Queue::Redis(client) = &self.queue else {
            return None;
        };
        let connected = async {
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_connection_manager())
                .await
                .map_err(|_| format!("no answer from Redis within {CONNECT_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
            Ok((
                RedisStorage::new(conn.clone()).with_config(self.redis_config()),
                conn,
            ))
        };
        Some(connected.await)
    }

    /// The PostgreSQL queue's storage, apalis' schema set up first (once per
    /// process, unless `postgres_migrate = false`). `None` on Redis.
    pub(crate) async fn postgres_storage(&self) -> Option<Result<PostgresQueue, String>> {
        let Queue::Postgres {
            pool,
            migrate,
            set_up,
        } = &self.queue
        else {
            return None;
        };
        if *migrate {
            if let Err(e) = set_up.get_or_try_init(|| setup_postgres(pool)).await {
                return Some(Err(e));
            }
        }
        Some(Ok(
            PostgresStorage::new(pool).with_config(self.postgres_config())
        ))
    }

    /// Registers `items` of `batch` and pushes those that still need running
    /// (see [`jobs::submit`]). The error is the store's or the queue's text.
    pub(crate) async fn submit(
        &self,
        batch: &str,
        items: Vec<(String, JobRequest)>,
    ) -> Result<Submitted, String> {
        if let Some(storage) = self.redis_storage().await {
            let (mut storage, conn) = storage?;
            let config = self.redis_config();
            return jobs::submit_to_redis(
                &mut storage,
                &conn,
                &config,
                self.store.as_ref(),
                batch,
                items,
            )
            .await
            .map_err(|e| e.to_string());
        }
        let mut storage = self
            .postgres_storage()
            .await
            .expect("the queue is on Redis or PostgreSQL")?;
        jobs::submit(&mut storage, self.store.as_ref(), batch, items)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Where `config` puts its batch queue: `[batch] job_queue`, else Redis when
/// `[state]` names one, else PostgreSQL when it names one.
fn queue_of(config: &Config) -> Option<JobQueue> {
    let state = &config.state;
    let redis = state.redis_url.is_some() || state.redis_url_env.is_some();
    let postgres = state.postgres_url.is_some() || state.postgres_url_env.is_some();
    match config.batch.job_queue {
        Some(chosen) => Some(chosen),
        None if redis => Some(JobQueue::Redis),
        None if postgres => Some(JobQueue::Postgres),
        None => None,
    }
}

/// Sets up the batch queue's schema (apalis-postgres's migrations) when
/// `config` puts the queue on PostgreSQL: what `llm-proxy migrate` does after
/// the proxy's own migrations. `false`: the queue is not on PostgreSQL.
/// (The proxy and the workers also set it up on first use, unless
/// `postgres_migrate = false`.)
pub async fn migrate_job_queue(config: &Config) -> Result<bool, ConfigError> {
    if queue_of(config) != Some(JobQueue::Postgres) {
        return Ok(false);
    }
    let pool = config
        .state
        .postgres_queue_pool()?
        .ok_or_else(|| ConfigError("state.postgres_url is not set".into()))?;
    setup_postgres(&pool).await.map_err(ConfigError)?;
    Ok(true)
}

/// apalis' own schema on PostgreSQL (its migrations, with their own lock: safe
/// when several proxies start at once), bounded by [`SETUP_TIMEOUT`].
pub(crate) async fn setup_postgres(pool: &PgPool) -> Result<(), String> {
    match tokio::time::timeout(SETUP_TIMEOUT, jobs::setup_postgres_queue(pool)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot set up the batch queue's schema: {e}")),
        Err(_) => Err(format!(
            "cannot set up the batch queue's schema: no answer within {SETUP_TIMEOUT:?}"
        )),
    }
}
