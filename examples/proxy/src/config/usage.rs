//! `[usage]`: per-request usage records, their store, and the prices they are
//! costed with.

use std::collections::BTreeMap;

use super::*;

/// Usage accounting.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Record every answered chat request (client key id, model, tier, tokens,
    /// cost, degraded, time) and serve `GET /v1/usage`. Default off: no usage
    /// file is written unless asked (its cost: the README's figures).
    #[serde(default)]
    pub enabled: bool,
    /// The SQLite file the records are kept in. Unset: an in-memory database
    /// (lost on restart). With `[state] redis_url` the records go to Redis
    /// instead, shared by every proxy there.
    #[serde(default)]
    pub sqlite_path: Option<PathBuf>,
    /// Records older than this are deleted (default 90 days).
    #[serde(default = "default_retention", deserialize_with = "seconds")]
    pub retention_secs: Duration,
    /// The most records kept; the oldest go first (default 1 000 000; at most
    /// 100 000 in memory).
    #[serde(default = "default_max_records")]
    pub max_records: u64,
    /// Records waiting to be written; past it a record is dropped and counted
    /// (`llm_proxy_usage_dropped_total`), never a request slowed (default 10 000).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The most groups one `GET /v1/usage` answer lists (default 10 000).
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// A price file in LiteLLM's `model_prices_and_context_window.json` format.
    #[serde(default)]
    pub prices_file: Option<PathBuf>,
    /// Prices per upstream model, dollars per million tokens (over the file's).
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
}

/// One model's prices, dollars per million tokens.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cached input tokens (default: the input price).
    #[serde(default)]
    pub cached_input: Option<f64>,
}

fn default_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

fn default_max_records() -> u64 {
    1_000_000
}

fn default_queue() -> usize {
    10_000
}

fn default_max_groups() -> usize {
    10_000
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sqlite_path: None,
            retention_secs: default_retention(),
            max_records: default_max_records(),
            queue: default_queue(),
            max_groups: default_max_groups(),
            prices_file: None,
            prices: BTreeMap::new(),
        }
    }
}

impl UsageConfig {
    /// The price table: the file's, then the inline prices over it.
    pub fn price_table(&self) -> Result<tower_llm_resilience::usage::PriceTable, ConfigError> {
        use tower_llm_resilience::usage::{ModelPrice, PriceTable};
        let mut table = match &self.prices_file {
            Some(path) => PriceTable::load_litellm_file(path)
                .map_err(|e| ConfigError(format!("usage.prices_file: {e}")))?,
            None => PriceTable::new(),
        };
        for (model, price) in &self.prices {
            let setting = |e: tower_llm_resilience::usage::PriceError| {
                ConfigError(format!("usage.prices.{model:?}: {e}"))
            };
            let mut parsed = ModelPrice::new(price.input, price.output).map_err(setting)?;
            if let Some(cached) = price.cached_input {
                parsed = parsed.with_cached_input(cached).map_err(setting)?;
            }
            table.insert(model, parsed).map_err(setting)?;
        }
        Ok(table)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("usage.retention_secs", self.retention_secs)?;
        for (name, value) in [
            ("usage.max_records", self.max_records as usize),
            ("usage.queue", self.queue),
            ("usage.max_groups", self.max_groups),
        ] {
            if value == 0 {
                return err(format!("{name} must be at least 1"));
            }
        }
        // Inline prices are checked here; the file when the proxy starts.
        if self.prices_file.is_none() {
            self.price_table().map(drop)?;
        }
        Ok(())
    }
}
