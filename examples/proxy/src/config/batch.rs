//! `[batch]`: the `/v1/batch` endpoint and the successes it remembers.

use super::*;

/// The batch endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Items in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Attempts per item (retryable failures only).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The most items in one batch.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Seed of the retry jitter, for reproducible runs.
    #[serde(default)]
    pub seed: Option<u64>,
    /// How long a named batch's successes are kept after its last run.
    #[serde(default = "default_batch_ttl", deserialize_with = "seconds")]
    pub ttl_secs: Duration,
    /// The most item successes kept, all batches together (in memory, or in
    /// Redis with `[state] redis_url`, shared by every proxy on it); the
    /// batches run longest ago are dropped first.
    #[serde(default = "default_batch_records")]
    pub max_records: usize,
    /// The most bytes of answers kept, all batches together, in memory or in
    /// Redis (the least recently run batches are dropped first).
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: usize,
    /// The longest `batch_id` and item `key`, in bytes (letters, digits and
    /// `-_.:` only).
    #[serde(default = "default_batch_id_bytes")]
    pub max_id_bytes: usize,
    /// Asynchronous batches (`Prefer: respond-async`, run by `llm-proxy
    /// worker`): the most items in one submission.
    #[serde(default = "default_max_async_items")]
    pub max_async_items: usize,
    /// Asynchronous batches: the largest request body (JSON or JSONL), in
    /// bytes (every other request keeps `limits.max_body_bytes`).
    #[serde(default = "default_max_async_body_bytes")]
    pub max_async_body_bytes: usize,
    /// `llm-proxy worker`: how long an item stays a worker's without a renewal
    /// (renewed every third of it while it runs); a worker that dies loses
    /// its items to the others after this.
    #[serde(default = "default_job_lease", deserialize_with = "seconds")]
    pub job_lease_secs: Duration,
    /// `llm-proxy worker`: how often a worker tells the queue it is alive; one
    /// silent for six of these is taken for dead and its jobs go to the others.
    #[serde(default = "default_job_heartbeat", deserialize_with = "seconds")]
    pub job_heartbeat_secs: Duration,
    /// Asynchronous batches: how long a batch's items and results are kept
    /// after its last submission or result.
    #[serde(default = "default_job_ttl", deserialize_with = "seconds")]
    pub job_ttl_secs: Duration,
    /// Asynchronous batches: where the queue and the items' states live,
    /// `"redis"` or `"postgres"` (that store of `[state]` must be set). By
    /// default Redis when `[state]` names one, else PostgreSQL.
    #[serde(default)]
    pub job_queue: Option<JobQueue>,
}

/// Where asynchronous batches queue their items (`[batch] job_queue`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobQueue {
    /// apalis-redis, with the items' states in a `RedisJobStore`.
    Redis,
    /// apalis-postgres, with the items' states in a `PostgresJobStore`.
    Postgres,
}

fn default_max_async_items() -> usize {
    100_000
}

fn default_max_async_body_bytes() -> usize {
    256 * 1024 * 1024
}

fn default_job_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_job_heartbeat() -> Duration {
    Duration::from_secs(5)
}

fn default_job_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_batch_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_batch_records() -> usize {
    10_000
}

fn default_batch_bytes() -> usize {
    64 * 1024 * 1024
}

fn default_batch_id_bytes() -> usize {
    128
}

fn default_concurrency() -> usize {
    8
}

fn default_attempts() -> u32 {
    3
}

fn default_max_items() -> usize {
    1000
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            max_attempts: default_attempts(),
            max_items: default_max_items(),
            seed: None,
            ttl_secs: default_batch_ttl(),
            max_records: default_batch_records(),
            max_bytes: default_batch_bytes(),
            max_id_bytes: default_batch_id_bytes(),
            max_async_items: default_max_async_items(),
            max_async_body_bytes: default_max_async_body_bytes(),
            job_lease_secs: default_job_lease(),
            job_heartbeat_secs: default_job_heartbeat(),
            job_ttl_secs: default_job_ttl(),
            job_queue: None,
        }
    }
}
