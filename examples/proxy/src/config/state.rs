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
    /// The environment variable holding that URL instead (it holds a password
    /// when Redis has one, which then stays out of the config file). Not with
    /// `redis_url`.
    #[serde(default)]
    pub redis_url_env: Option<String>,
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
            redis_url_env: None,
            prefix: default_state_prefix(),
        }
    }
}

// The URL may hold a password: not printed.
impl fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_url_env", &self.redis_url_env)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl StateConfig {
    /// The Redis client of `redis_url` (or of the variable `redis_url_env`
    /// names), if set. Parses the URL only: nothing is connected here.
    pub fn redis_client(&self) -> Result<Option<redis::Client>, ConfigError> {
        let (url, setting) = match (&self.redis_url, &self.redis_url_env) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return err("state.redis_url and state.redis_url_env are both set: keep one")
            }
            (Some(url), None) => (url.clone(), "state.redis_url".to_owned()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(url) => (url, format!("state.redis_url_env ({var})")),
                Err(_) => {
                    return err(format!(
                        "state.redis_url_env: the environment variable {var} is not set \
                         (or not UTF-8)"
                    ))
                }
            },
        };
        if url.trim().is_empty() {
            return err(format!(
                "{setting} is empty (remove it to keep the state embedded)"
            ));
        }
        match redis::Client::open(url.as_str()) {
            Ok(client) => Ok(Some(client)),
            // The URL itself is not repeated: it may hold a password.
            Err(e) => err(format!(
                "{setting} is not a usable Redis URL ({e}); \
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
