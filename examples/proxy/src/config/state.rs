//! `[state]`: embedded, or shared through Redis.

use super::*;

/// Where the state lives: embedded (the default) or on Redis, shared by every
/// proxy configured with the same server and prefix.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `redis://[user:password@]host[:port][/db]` (or `redis+unix:///path`):
    /// circuits are shared through Redis, escalations and batch records are kept
    /// there. Unset: circuits are per process, escalations in `[escalation]`'s
    /// store, batch records in memory.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The prefix of every Redis key and channel; proxies that share it share
    /// state.
    #[serde(default = "default_state_prefix")]
    pub prefix: String,
}

fn default_state_prefix() -> String {
    "llm-proxy".into()
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            prefix: default_state_prefix(),
        }
    }
}

// The URL may hold a password: not printed.
impl fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl StateConfig {
    /// The Redis client of `redis_url`, if set. Parses the URL only: nothing is
    /// connected here.
    pub fn redis_client(&self) -> Result<Option<redis::Client>, ConfigError> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        if url.trim().is_empty() {
            return err("state.redis_url is empty (remove it to keep the state embedded)");
        }
        match redis::Client::open(url.as_str()) {
            Ok(client) => Ok(Some(client)),
            // The URL itself is not repeated: it may hold a password.
            Err(e) => err(format!(
                "state.redis_url is not a usable Redis URL ({e}); \
                 expected redis://[user:password@]host[:port][/db]"
            )),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty() {
            return err("state.prefix must not be empty");
        }
        self.redis_client().map(drop)
    }
}
