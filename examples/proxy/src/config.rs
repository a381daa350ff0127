//! The TOML configuration.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! workers = 2               # optional: serving threads (default: one per CPU)
//!
//! [[upstreams]]
//! name = "primary"          # free text, reported in x-llm-proxy-tier
//! kind = "openai"           # "openai" (any OpenAI-compatible API) or "anthropic"
//! base_url = "http://127.0.0.1:9001/v1"
//! api_key_env = "PRIMARY_KEY"   # optional: the variable holding the upstream key
//!
//! [[models]]
//! name = "smart"
//! tiers = [ { upstream = "primary", model = "gpt-4o" },
//!           { upstream = "secondary", model = "claude-sonnet" } ]
//! template = "We are experiencing issues; please try again shortly."
//! ```
//!
//! Everything else has defaults: `[auth]`, `[limits]`, `[circuit]` (and a
//! `circuit` table on each upstream to override it), `[escalation]`, `[batch]`
//! and `[state]` (`redis_url`: shared state for many proxies). See
//! `examples/proxy/README.md`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the proxy listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serving threads, each with a runtime and upstream connections of its own
    /// (default: one per CPU).
    #[serde(default)]
    pub workers: Option<usize>,
    /// The providers.
    pub upstreams: Vec<UpstreamConfig>,
    /// The model names clients ask for, each a chain of tiers.
    pub models: Vec<ModelConfig>,
    /// Client and admin keys.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Request limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Circuit breaker defaults for every upstream.
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// Human escalation.
    #[serde(default)]
    pub escalation: EscalationConfig,
    /// The `/v1/batch` endpoint.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where circuits, escalations and batch records live.
    #[serde(default)]
    pub state: StateConfig,
}

/// The most serving threads a config may ask for.
pub const MAX_WORKERS: usize = 256;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// The wire format an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// Any OpenAI-compatible chat completions API: requests are passed through.
    Openai,
    /// The Anthropic Messages API: requests and answers are translated.
    Anthropic,
}

/// One provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Free text, reported in `x-llm-proxy-tier`.
    pub name: String,
    /// Its wire format.
    pub kind: UpstreamKind,
    /// Base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The environment variable holding its API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The longest wait for a whole non-streamed answer, or for a stream's head.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// The longest silence inside a stream once it started.
    #[serde(default = "default_idle_secs")]
    pub stream_idle_timeout_secs: f64,
    /// Overrides of the `[circuit]` defaults for this upstream.
    #[serde(default)]
    pub circuit: Option<CircuitConfig>,
}

fn default_timeout_secs() -> f64 {
    60.0
}

fn default_idle_secs() -> f64 {
    30.0
}

/// One tier of a model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// An upstream's name.
    pub upstream: String,
    /// The model name sent to that upstream.
    pub model: String,
}

/// A model name clients ask for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name in `"model"` of client requests.
    pub name: String,
    /// Tried in order.
    pub tiers: Vec<TierConfig>,
    /// The answer of last resort, when every tier failed.
    #[serde(default)]
    pub template: Option<String>,
}

/// Who may call the proxy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer keys clients must send; when empty (and `client_keys_env` unset)
    /// the chat, models and batch endpoints are open.
    #[serde(default)]
    pub client_keys: Vec<String>,
    /// A variable holding more client keys, comma separated.
    #[serde(default)]
    pub client_keys_env: Option<String>,
    /// Keys for the escalation endpoints and the review page.
    #[serde(default)]
    pub admin_keys: Vec<String>,
    /// A variable holding more admin keys, comma separated.
    #[serde(default)]
    pub admin_keys_env: Option<String>,
}

/// Request limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Larger request bodies get a 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// A stream that sends no event for this long after its head falls back.
    #[serde(default = "default_first_event_secs")]
    pub first_event_timeout_secs: f64,
    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish.
    #[serde(default = "default_grace_secs")]
    pub shutdown_grace_secs: f64,
    /// The most an upstream may answer, in bytes (a buffered answer, or a whole
    /// stream): over it the tier fails as an invalid response and falls back.
    #[serde(default = "default_max_upstream_body")]
    pub max_upstream_body_bytes: usize,
}

fn default_max_upstream_body() -> usize {
    16 * 1024 * 1024
}

fn default_max_body() -> usize {
    1024 * 1024
}

fn default_first_event_secs() -> f64 {
    10.0
}

fn default_grace_secs() -> f64 {
    10.0
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            first_event_timeout_secs: default_first_event_secs(),
            shutdown_grace_secs: default_grace_secs(),
            max_upstream_body_bytes: default_max_upstream_body(),
        }
    }
}

/// Circuit breaker settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Failures in a row that open the circuit.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// How long it stays open before a probe (grows on re-trips).
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: f64,
    /// The longest cooldown.
    #[serde(default = "default_max_cooldown")]
    pub max_cooldown_secs: f64,
    /// Also open when this share of the recent calls failed (0 to 1).
    #[serde(default)]
    pub failure_rate: Option<f64>,
}

fn default_consecutive() -> u32 {
    5
}

fn default_cooldown() -> f64 {
    30.0
}

fn default_max_cooldown() -> f64 {
    300.0
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive(),
            cooldown_secs: default_cooldown(),
            max_cooldown_secs: default_max_cooldown(),
            failure_rate: None,
        }
    }
}

/// How a client waits for a human.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscalationMode {
    /// The request waits for the human, up to `timeout_secs`.
    Wait,
    /// The request gets a 202 and a resume token at once.
    Detach,
}

/// What a waiting request gets when nobody answers in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// A 403 rejection.
    Reject,
    /// The call goes on as if approved.
    Approve,
}

/// Where escalations are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In a SQLite file (`sqlite_path`): survives restarts.
    Sqlite,
    /// In memory: lost on restart.
    Memory,
}

/// Human escalation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    /// Off: no request is escalated (the endpoints still answer).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Wait or detach.
    #[serde(default = "default_mode")]
    pub mode: EscalationMode,
    /// Wait: how long a request waits; detach: how long its token is valid.
    #[serde(default = "default_escalation_timeout")]
    pub timeout_secs: f64,
    /// Wait mode: the outcome when nobody answers in time.
    #[serde(default = "default_on_timeout")]
    pub on_timeout: OnTimeout,
    /// Where escalations are kept.
    #[serde(default = "default_store")]
    pub store: StoreKind,
    /// The SQLite file.
    #[serde(default = "default_sqlite_path")]
    pub sqlite_path: PathBuf,
    /// Rule: a request with this header set to `true` waits for approval.
    /// Empty to turn the rule off.
    #[serde(default = "default_approval_header")]
    pub approval_header: String,
    /// Rule: an answer that is not valid JSON, when `response_format` asked for
    /// JSON, goes to a human.
    #[serde(default = "yes")]
    pub invalid_json_answer: bool,
    /// Wait mode: how often a waiting request re-reads the store for
    /// resolutions made by another process.
    #[serde(default = "default_poll_secs")]
    pub poll_interval_secs: f64,
}

fn yes() -> bool {
    true
}

fn default_mode() -> EscalationMode {
    EscalationMode::Wait
}

fn default_escalation_timeout() -> f64 {
    300.0
}

fn default_on_timeout() -> OnTimeout {
    OnTimeout::Reject
}

fn default_store() -> StoreKind {
    StoreKind::Sqlite
}

fn default_sqlite_path() -> PathBuf {
    PathBuf::from("llm-proxy-escalations.db")
}

fn default_approval_header() -> String {
    "x-require-approval".into()
}

fn default_poll_secs() -> f64 {
    2.0
}

impl Default for EscalationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: default_mode(),
            timeout_secs: default_escalation_timeout(),
            on_timeout: default_on_timeout(),
            store: default_store(),
            sqlite_path: default_sqlite_path(),
            approval_header: default_approval_header(),
            invalid_json_answer: true,
            poll_interval_secs: default_poll_secs(),
        }
    }
}

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
        }
    }
}

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

    fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty() {
            return err("state.prefix must not be empty");
        }
        self.redis_client().map(drop)
    }
}

/// A configuration that cannot work.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// A positive, finite number of seconds as a duration.
pub(crate) fn secs(setting: &str, value: f64) -> Result<Duration, ConfigError> {
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        err(format!("{setting} must be a positive number of seconds"))
    }
}

impl Config {
    /// Parse and check a TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and check a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// The number of serving threads: `workers`, or one per CPU.
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// Check names, references and numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(workers) = self.workers {
            if !(1..=MAX_WORKERS).contains(&workers) {
                return err(format!("workers must be between 1 and {MAX_WORKERS}"));
            }
        }
        let mut upstreams = HashSet::new();
        for upstream in &self.upstreams {
            if upstream.name.is_empty() || upstream.name == "template" {
                return err(format!(
                    "upstream name {:?} is reserved or empty",
                    upstream.name
                ));
            }
            if !upstreams.insert(upstream.name.as_str()) {
                return err(format!("two upstreams are named {:?}", upstream.name));
            }
            let uri: http::Uri = upstream.base_url.parse().map_err(|_| {
                ConfigError(format!(
                    "upstream {:?}: base_url is not a URL",
                    upstream.name
                ))
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return err(format!(
                    "upstream {:?}: base_url must be an absolute http(s) URL",
                    upstream.name
                ));
            }
            secs("timeout_secs", upstream.timeout_secs)?;
            secs(
                "stream_idle_timeout_secs",
                upstream.stream_idle_timeout_secs,
            )?;
            if let Some(circuit) = &upstream.circuit {
                circuit.validate()?;
            }
        }
        if self.models.is_empty() {
            return err("at least one [[models]] entry is needed");
        }
        let mut models = HashSet::new();
        for model in &self.models {
            if model.name.is_empty() || !models.insert(model.name.as_str()) {
                return err(format!(
                    "model name {:?} is empty or used twice",
                    model.name
                ));
            }
            if model.tiers.is_empty() {
                return err(format!("model {:?} has no tiers", model.name));
            }
            let mut seen = HashSet::new();
            for tier in &model.tiers {
                if !upstreams.contains(tier.upstream.as_str()) {
                    return err(format!(
                        "model {:?}: unknown upstream {:?}",
                        model.name, tier.upstream
                    ));
                }
                if !seen.insert(tier.upstream.as_str()) {
                    return err(format!(
                        "model {:?}: upstream {:?} appears twice",
                        model.name, tier.upstream
                    ));
                }
            }
        }
        if self.limits.max_body_bytes == 0 {
            return err("limits.max_body_bytes must be positive");
        }
        if self.limits.max_upstream_body_bytes == 0 {
            return err("limits.max_upstream_body_bytes must be positive");
        }
        secs(
            "limits.first_event_timeout_secs",
            self.limits.first_event_timeout_secs,
        )?;
        secs(
            "limits.shutdown_grace_secs",
            self.limits.shutdown_grace_secs,
        )?;
        self.circuit.validate()?;
        secs("escalation.timeout_secs", self.escalation.timeout_secs)?;
        secs(
            "escalation.poll_interval_secs",
            self.escalation.poll_interval_secs,
        )?;
        if self.batch.concurrency == 0 || self.batch.max_attempts == 0 || self.batch.max_items == 0
        {
            return err("batch.concurrency, max_attempts and max_items must be positive");
        }
        self.state.validate()?;
        Ok(())
    }

    /// Client keys from the file and the environment.
    pub fn client_keys(&self) -> Vec<String> {
        keys(&self.auth.client_keys, self.auth.client_keys_env.as_deref())
    }

    /// Admin keys from the file and the environment.
    pub fn admin_keys(&self) -> Vec<String> {
        keys(&self.auth.admin_keys, self.auth.admin_keys_env.as_deref())
    }
}

fn keys(listed: &[String], env: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = listed.iter().filter(|k| !k.is_empty()).cloned().collect();
    if let Some(value) = env.and_then(|name| std::env::var(name).ok()) {
        out.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
        );
    }
    out
}

impl CircuitConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == 0 {
            return err("circuit.consecutive_failures must be positive");
        }
        secs("circuit.cooldown_secs", self.cooldown_secs)?;
        secs("circuit.max_cooldown_secs", self.max_cooldown_secs)?;
        if let Some(rate) = self.failure_rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return err("circuit.failure_rate must be in (0, 1]");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: &str = r#"
listen = "127.0.0.1:8080"

[[upstreams]]
name = "primary"
kind = "openai"
base_url = "http://127.0.0.1:9001/v1"
api_key_env = "PRIMARY_KEY"

[[upstreams]]
name = "secondary"
kind = "anthropic"
base_url = "http://127.0.0.1:9002/v1"

[[models]]
name = "smart"
tiers = [ { upstream = "primary", model = "gpt-4o" },
          { upstream = "secondary", model = "claude-sonnet" } ]
template = "We are experiencing issues; please try again shortly."
"#;

    #[test]
    fn the_fixed_schema_parses_with_defaults() {
        let config = Config::from_toml(FIXED).unwrap();
        assert_eq!(config.upstreams[1].kind, UpstreamKind::Anthropic);
        assert_eq!(config.models[0].tiers[1].model, "claude-sonnet");
        assert_eq!(config.escalation.mode, EscalationMode::Wait);
        assert_eq!(config.limits.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn bad_references_are_errors() {
        let bad = FIXED.replace("upstream = \"secondary\"", "upstream = \"nope\"");
        let e = Config::from_toml(&bad).unwrap_err();
        assert!(e.to_string().contains("unknown upstream"), "{e}");
        let bad = FIXED.replace("http://127.0.0.1:9001/v1", "not a url");
        assert!(Config::from_toml(&bad).is_err());
        let bad = format!("{FIXED}\n[circuit]\ncooldown_secs = -1\n");
        assert!(Config::from_toml(&bad).is_err());
        assert!(Config::from_toml("listen = 3").is_err());
        for workers in ["0", "100000", "-1", "\"two\""] {
            let bad = format!("workers = {workers}\n{FIXED}");
            assert!(Config::from_toml(&bad).is_err(), "workers = {workers}");
        }
        let two = Config::from_toml(&format!("workers = 2\n{FIXED}")).unwrap();
        assert_eq!(two.worker_threads(), 2);
        assert!(Config::from_toml(FIXED).unwrap().worker_threads() >= 1);
    }

    #[test]
    fn state_is_embedded_unless_a_redis_url_is_set() {
        let config = Config::from_toml(FIXED).unwrap();
        assert!(config.state.redis_client().unwrap().is_none());
        let with = format!(
            "{FIXED}\n[state]\nredis_url = \"redis://:secret@127.0.0.1:6390/2\"\nprefix = \"team-a\"\n"
        );
        let config = Config::from_toml(&with).unwrap();
        assert!(config.state.redis_client().unwrap().is_some());
        assert_eq!(config.state.prefix, "team-a");
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn malformed_redis_urls_are_startup_errors() {
        for url in ["", "localhost:6379", "http://127.0.0.1:6379", "redis://"] {
            let text = format!("{FIXED}\n[state]\nredis_url = {url:?}\n");
            let e = Config::from_toml(&text).unwrap_err().to_string();
            assert!(e.contains("state.redis_url"), "{url:?}: {e}");
        }
        let no_prefix = format!("{FIXED}\n[state]\nprefix = \"\"\n");
        assert!(Config::from_toml(&no_prefix).is_err());
    }
}
