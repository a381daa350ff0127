//! `[cache]`: answers served again for identical requests.

use super::*;

/// Which requests the cache serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// No cache (the default).
    Off,
    /// Requests with `temperature` 0, and those sending `x-llm-proxy-cache: use`.
    Deterministic,
    /// Only requests sending `x-llm-proxy-cache: use`.
    OptIn,
}

/// The response cache.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Which requests are served from the cache.
    #[serde(default = "default_mode")]
    pub mode: CacheMode,
    /// How long an answer is served.
    #[serde(default = "default_ttl", deserialize_with = "seconds")]
    pub ttl_secs: Duration,
    /// The most answers kept in memory.
    #[serde(default = "default_entries")]
    pub max_entries: usize,
    /// The most bytes of answers kept in memory.
    #[serde(default = "default_bytes")]
    pub max_bytes: usize,
    /// The largest answer kept (in memory or in Redis).
    #[serde(default = "default_entry_bytes")]
    pub max_entry_bytes: usize,
}

fn default_mode() -> CacheMode {
    CacheMode::Off
}

fn default_ttl() -> Duration {
    Duration::from_secs(600)
}

fn default_entries() -> usize {
    10_000
}

fn default_bytes() -> usize {
    64 * 1024 * 1024
}

fn default_entry_bytes() -> usize {
    1024 * 1024
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            mode: default_mode(),
            ttl_secs: default_ttl(),
            max_entries: default_entries(),
            max_bytes: default_bytes(),
            max_entry_bytes: default_entry_bytes(),
        }
    }
}

impl CacheConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("cache.ttl_secs", self.ttl_secs)?;
        for (name, value) in [
            ("cache.max_entries", self.max_entries),
            ("cache.max_bytes", self.max_bytes),
            ("cache.max_entry_bytes", self.max_entry_bytes),
        ] {
            if value == 0 {
                return err(format!("{name} must be at least 1"));
            }
        }
        if self.max_entry_bytes > self.max_bytes {
            return err("cache.max_entry_bytes must not be larger than cache.max_bytes");
        }
        Ok(())
    }
}
