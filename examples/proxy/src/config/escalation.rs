//! `[escalation]`: when a request goes to a human, how long it waits, where
//! escalations are kept.

use super::*;

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
