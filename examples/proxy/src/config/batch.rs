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
        }
    }
}
