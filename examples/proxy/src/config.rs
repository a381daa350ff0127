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
    #[serde(default = "default_timeout_secs", deserialize_with = "seconds")]
    pub timeout_secs: Duration,
    /// The longest silence inside a stream once it started.
    #[serde(default = "default_idle_secs", deserialize_with = "seconds")]
    pub stream_idle_timeout_secs: Duration,
    /// Overrides of the `[circuit]` defaults for this upstream.
    #[serde(default)]
    pub circuit: Option<CircuitConfig>,
}

fn default_timeout_secs() -> Duration {
    Duration::from_secs(60)
}

fn default_idle_secs() -> Duration {
    Duration::from_secs(30)
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

/// Who may call the proxy. Its `Debug` shows how many keys, never a key.
#[derive(Clone, Deserialize)]
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
    /// Listening on an address other than loopback with no client key is
    /// refused unless this is `true` (anyone who reaches the port can spend
    /// the upstream credits).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// How long a review-page sign-in lasts.
    #[serde(default = "default_session_secs", deserialize_with = "seconds")]
    pub admin_session_secs: Duration,
    /// The most review-page sessions at once (the oldest is ended first).
    #[serde(default = "default_max_sessions")]
    pub max_admin_sessions: usize,
    /// Mark the session cookie `Secure` even on plain HTTP requests (behind a
    /// TLS-terminating proxy that does not send `X-Forwarded-Proto: https`).
    #[serde(default)]
    pub secure_cookies: bool,
    /// Sign-in attempts allowed per client address per minute (then 429).
    #[serde(default = "default_login_attempts")]
    pub login_attempts_per_minute: u32,
    /// Browser origins (`https://app.example.com`) allowed to call the client
    /// endpoints through CORS. Empty (the default): no CORS headers at all.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("client_keys", &self.client_keys.len())
            .field("client_keys_env", &self.client_keys_env)
            .field("admin_keys", &self.admin_keys.len())
            .field("admin_keys_env", &self.admin_keys_env)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .finish_non_exhaustive()
    }
}

fn default_session_secs() -> Duration {
    Duration::from_secs(8 * 3600)
}

fn default_max_sessions() -> usize {
    1024
}

fn default_login_attempts() -> u32 {
    10
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            client_keys: Vec::new(),
            client_keys_env: None,
            admin_keys: Vec::new(),
            admin_keys_env: None,
            allow_unauthenticated: false,
            admin_session_secs: default_session_secs(),
            max_admin_sessions: default_max_sessions(),
            secure_cookies: false,
            login_attempts_per_minute: default_login_attempts(),
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// Request limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Larger request bodies get a 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// A stream that sends no event for this long after its head falls back.
    #[serde(default = "default_first_event_secs", deserialize_with = "seconds")]
    pub first_event_timeout_secs: Duration,
    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish.
    #[serde(default = "default_grace_secs", deserialize_with = "seconds")]
    pub shutdown_grace_secs: Duration,
    /// Open client connections, in all (nginx `worker_connections`); over it,
    /// new connections wait in the listen queue while the open ones are served.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The longest a client may take to send a request head (nginx
    /// `client_header_timeout`); also the longest a kept-alive connection waits
    /// for its next request.
    #[serde(default = "default_client_timeout_secs", deserialize_with = "seconds")]
    pub client_header_timeout_secs: Duration,
    /// The longest silence between two reads of a request body (nginx
    /// `client_body_timeout`): a 408 then.
    #[serde(default = "default_client_timeout_secs", deserialize_with = "seconds")]
    pub client_body_timeout_secs: Duration,
    /// An idle kept-alive connection is closed after this (nginx
    /// `keepalive_timeout`; `client_header_timeout_secs` when shorter).
    #[serde(default = "default_keepalive_secs", deserialize_with = "seconds")]
    pub keepalive_timeout_secs: Duration,
    /// How often the metrics recorder drains its samples, whether or not
    /// `/metrics` is scraped.
    #[serde(default = "default_upkeep_secs", deserialize_with = "seconds")]
    pub metrics_upkeep_secs: Duration,
    /// The most an upstream may answer, in bytes (a buffered answer, or a whole
    /// stream): over it the tier fails as an invalid response and falls back.
    #[serde(default = "default_max_upstream_body")]
    pub max_upstream_body_bytes: usize,
}

fn default_max_connections() -> usize {
    1024
}

fn default_client_timeout_secs() -> Duration {
    Duration::from_secs(60)
}

fn default_keepalive_secs() -> Duration {
    Duration::from_secs(75)
}

fn default_upkeep_secs() -> Duration {
    Duration::from_secs(5)
}

fn default_max_upstream_body() -> usize {
    16 * 1024 * 1024
}

fn default_max_body() -> usize {
    1024 * 1024
}

fn default_first_event_secs() -> Duration {
    Duration::from_secs(10)
}

fn default_grace_secs() -> Duration {
    Duration::from_secs(10)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            first_event_timeout_secs: default_first_event_secs(),
            shutdown_grace_secs: default_grace_secs(),
            max_connections: default_max_connections(),
            client_header_timeout_secs: default_client_timeout_secs(),
            client_body_timeout_secs: default_client_timeout_secs(),
            keepalive_timeout_secs: default_keepalive_secs(),
            metrics_upkeep_secs: default_upkeep_secs(),
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
    #[serde(default = "default_cooldown", deserialize_with = "seconds")]
    pub cooldown_secs: Duration,
    /// The longest cooldown.
    #[serde(default = "default_max_cooldown", deserialize_with = "seconds")]
    pub max_cooldown_secs: Duration,
    /// Also open when this share of the recent calls failed (0 to 1).
    #[serde(default)]
    pub failure_rate: Option<f64>,
}

fn default_consecutive() -> u32 {
    5
}

fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}

fn default_max_cooldown() -> Duration {
    Duration::from_secs(300)
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
    #[serde(default = "default_escalation_timeout", deserialize_with = "seconds")]
    pub timeout_secs: Duration,
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
    #[serde(default = "default_poll_secs", deserialize_with = "seconds")]
    pub poll_interval_secs: Duration,
    /// The most escalations pending at once, all clients together; over it a
    /// request that would escalate gets a 429 and nothing is stored.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// The most escalations pending at once for one client key.
    #[serde(default = "default_max_pending_per_client")]
    pub max_pending_per_client: usize,
    /// Resolved and expired escalations are deleted this long after they expire.
    #[serde(default = "default_retention", deserialize_with = "seconds")]
    pub retention_secs: Duration,
    /// The environment variable holding the key (32 bytes, base64) that
    /// encrypts escalation snapshots at rest; unset: stored in clear. See
    /// the `sealed` module for rotation.
    #[serde(default)]
    pub encryption_key_env: Option<String>,
    /// The environment variable holding older keys (comma separated), still
    /// used to read records sealed before a rotation.
    #[serde(default)]
    pub previous_encryption_keys_env: Option<String>,
}

fn default_max_pending() -> usize {
    1000
}

fn default_max_pending_per_client() -> usize {
    100
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn yes() -> bool {
    true
}

fn default_mode() -> EscalationMode {
    EscalationMode::Wait
}

fn default_escalation_timeout() -> Duration {
    Duration::from_secs(300)
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

fn default_poll_secs() -> Duration {
    Duration::from_secs(2)
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
            max_pending: default_max_pending(),
            max_pending_per_client: default_max_pending_per_client(),
            retention_secs: default_retention(),
            encryption_key_env: None,
            previous_encryption_keys_env: None,
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

/// The longest duration a `*_secs` setting may hold (about 31 years).
const MAX_SECS: f64 = 1e9;

/// A `*_secs` setting: a positive, finite number of seconds (an integer or a
/// decimal) in the file, a `Duration` once read. The error says what is wrong;
/// [`Config::from_toml`] puts the setting's name in front.
fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && value > 0.0 && value < MAX_SECS {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(serde::de::Error::custom(format!(
            "must be > 0 and < {MAX_SECS} (a number of seconds), not {value}"
        )))
    }
}

/// `Ok` when `value`, the duration of `setting`, is positive: a config built
/// or edited in code has not been through [`seconds`].
fn positive(setting: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        err(format!("{setting}: must be > 0"))
    } else {
        Ok(())
    }
}

impl Config {
    /// Parse and check a TOML text.
    ///
    /// An error in a setting names it (`limits.client_body_timeout_secs: must
    /// be > 0 ...`), with the line it is on.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let parsed = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError(e.to_string()))
            .and_then(|deserializer| {
                serde_path_to_error::deserialize(deserializer).map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    if path == "." {
                        return ConfigError(inner.to_string());
                    }
                    let line = inner
                        .span()
                        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
                    match line {
                        Some(line) => {
                            ConfigError(format!("{path}: {} (line {line})", inner.message()))
                        }
                        None => ConfigError(format!("{path}: {}", inner.message())),
                    }
                })
            });
        let config: Config = parsed?;
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
            let name = &upstream.name;
            positive(
                &format!("upstream {name:?}: timeout_secs"),
                upstream.timeout_secs,
            )?;
            positive(
                &format!("upstream {name:?}: stream_idle_timeout_secs"),
                upstream.stream_idle_timeout_secs,
            )?;
            if let Some(circuit) = &upstream.circuit {
                circuit.validate(&format!("upstream {name:?}: circuit"))?;
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
        let limits = &self.limits;
        for (setting, value) in [
            (
                "limits.first_event_timeout_secs",
                limits.first_event_timeout_secs,
            ),
            ("limits.shutdown_grace_secs", limits.shutdown_grace_secs),
            (
                "limits.client_header_timeout_secs",
                limits.client_header_timeout_secs,
            ),
            (
                "limits.client_body_timeout_secs",
                limits.client_body_timeout_secs,
            ),
            (
                "limits.keepalive_timeout_secs",
                limits.keepalive_timeout_secs,
            ),
            ("limits.metrics_upkeep_secs", limits.metrics_upkeep_secs),
            ("batch.ttl_secs", self.batch.ttl_secs),
            ("escalation.timeout_secs", self.escalation.timeout_secs),
            (
                "escalation.poll_interval_secs",
                self.escalation.poll_interval_secs,
            ),
            ("escalation.retention_secs", self.escalation.retention_secs),
            ("auth.admin_session_secs", self.auth.admin_session_secs),
        ] {
            positive(setting, value)?;
        }
        if !(1..=1_000_000).contains(&self.limits.max_connections) {
            return err("limits.max_connections must be between 1 and 1000000");
        }
        if self.batch.max_records == 0 || self.batch.max_bytes == 0 || self.batch.max_id_bytes == 0
        {
            return err("batch.max_records, max_bytes and max_id_bytes must be positive");
        }
        if self.escalation.max_pending == 0 || self.escalation.max_pending_per_client == 0 {
            return err("escalation.max_pending and max_pending_per_client must be positive");
        }
        self.circuit.validate("circuit")?;
        if self.batch.concurrency == 0 || self.batch.max_attempts == 0 || self.batch.max_items == 0
        {
            return err("batch.concurrency, max_attempts and max_items must be positive");
        }
        self.state.validate()?;
        Ok(())
    }

    /// Client keys from the file and the environment. An empty key, or a
    /// `client_keys_env` variable that is unset or empty, is an error: a key
    /// that is meant to exist never turns into "no auth".
    pub fn client_keys(&self) -> Result<Vec<String>, ConfigError> {
        read_keys(
            "auth.client_keys",
            &self.auth.client_keys,
            self.auth.client_keys_env.as_deref(),
        )
    }

    /// Admin keys from the file and the environment, checked like
    /// [`client_keys`](Self::client_keys).
    pub fn admin_keys(&self) -> Result<Vec<String>, ConfigError> {
        read_keys(
            "auth.admin_keys",
            &self.auth.admin_keys,
            self.auth.admin_keys_env.as_deref(),
        )
    }

    /// The startup checks that read the environment: every key and every
    /// `*_env` variable (client, admin, upstream) is set and not empty, the
    /// session and CORS settings make sense, and a proxy listening beyond
    /// loopback without any client key has `auth.allow_unauthenticated = true`.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        let client_keys = self.client_keys()?;
        self.admin_keys()?;
        for upstream in &self.upstreams {
            if let Some(var) = &upstream.api_key_env {
                match std::env::var(var) {
                    Ok(value) if !value.trim().is_empty() => {}
                    Ok(_) => {
                        return err(format!(
                            "upstream {:?}: environment variable {var} is empty",
                            upstream.name
                        ))
                    }
                    Err(_) => {
                        return err(format!(
                            "upstream {:?}: environment variable {var} is not set",
                            upstream.name
                        ))
                    }
                }
            }
        }
        if client_keys.is_empty()
            && !self.listen.ip().is_loopback()
            && !self.auth.allow_unauthenticated
        {
            return err(format!(
                "listening on {} (not loopback) without any client key: anyone who reaches \
                 the port could use the upstreams. Set auth.client_keys (or client_keys_env), \
                 or auth.allow_unauthenticated = true to run open on purpose",
                self.listen
            ));
        }
        if self.auth.max_admin_sessions == 0 || self.auth.login_attempts_per_minute == 0 {
            return err("auth.max_admin_sessions and login_attempts_per_minute must be positive");
        }
        for origin in &self.auth.cors_allowed_origins {
            let valid = http::HeaderValue::try_from(origin.as_str()).is_ok()
                && (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/');
            if !valid {
                return err(format!(
                    "auth.cors_allowed_origins: {origin:?} is not an origin \
                     (scheme://host[:port], no path)"
                ));
            }
        }
        Ok(())
    }
}

fn read_keys(
    setting: &str,
    listed: &[String],
    env: Option<&str>,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::with_capacity(listed.len());
    for key in listed {
        if key.trim().is_empty() {
            return err(format!("{setting} holds an empty key"));
        }
        out.push(key.clone());
    }
    if let Some(name) = env {
        let value = match std::env::var(name) {
            Ok(value) => value,
            Err(_) => {
                return err(format!(
                    "{setting}_env: environment variable {name} is not set"
                ))
            }
        };
        if value.trim().is_empty() {
            return err(format!(
                "{setting}_env: environment variable {name} is empty"
            ));
        }
        for key in value.split(',').map(str::trim) {
            if key.is_empty() {
                return err(format!(
                    "{setting}_env: environment variable {name} holds an empty key"
                ));
            }
            out.push(key.to_owned());
        }
    }
    Ok(out)
}

impl CircuitConfig {
    /// `table`: where it is in the file, for the errors.
    fn validate(&self, table: &str) -> Result<(), ConfigError> {
        if self.consecutive_failures == 0 {
            return err(format!("{table}.consecutive_failures must be positive"));
        }
        positive(&format!("{table}.cooldown_secs"), self.cooldown_secs)?;
        positive(
            &format!("{table}.max_cooldown_secs"),
            self.max_cooldown_secs,
        )?;
        if let Some(rate) = self.failure_rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return err(format!("{table}.failure_rate must be in (0, 1]"));
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
        let e = Config::from_toml(&bad).unwrap_err().0;
        assert!(e.starts_with("circuit.cooldown_secs: must be > 0"), "{e}");
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
    fn durations_are_read_once_and_errors_name_the_setting() {
        let text = format!(
            "{FIXED}\n[limits]\nclient_body_timeout_secs = 0.25\nshutdown_grace_secs = 2\n"
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.limits.client_body_timeout_secs,
            Duration::from_millis(250)
        );
        assert_eq!(config.limits.shutdown_grace_secs, Duration::from_secs(2));
        for bad in ["0", "-1", "nan", "inf", "1e10", "\"ten\""] {
            let text = format!("{FIXED}\n[limits]\nclient_body_timeout_secs = {bad}\n");
            let e = Config::from_toml(&text).unwrap_err().0;
            assert!(
                e.starts_with("limits.client_body_timeout_secs: "),
                "{bad}: {e}"
            );
        }
        let text = FIXED.replace(
            "name = \"secondary\"",
            "name = \"secondary\"\ntimeout_secs = 0",
        );
        let e = Config::from_toml(&text).unwrap_err().0;
        assert!(
            e.starts_with("upstreams[1].timeout_secs: must be > 0"),
            "{e}"
        );
        // Built or edited in code: still checked, by name.
        let mut config = Config::from_toml(FIXED).unwrap();
        config.escalation.poll_interval_secs = Duration::ZERO;
        let e = config.validate().unwrap_err().0;
        assert_eq!(e, "escalation.poll_interval_secs: must be > 0");
        config.escalation.poll_interval_secs = Duration::from_secs(1);
        config.upstreams[0].circuit = Some(CircuitConfig {
            cooldown_secs: Duration::ZERO,
            ..CircuitConfig::default()
        });
        let e = config.validate().unwrap_err().0;
        assert_eq!(
            e,
            "upstream \"primary\": circuit.cooldown_secs: must be > 0"
        );
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
