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
    /// `[escalation.webhook]`: who is told when a request waits for a human.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

/// `[escalation.webhook]`: each new escalation is POSTed to a webhook as signed
/// JSON whose `text` makes it a Slack incoming-webhook message (the library's
/// `WebhookNotifier`): its reason, expiry and a link to the review page; never
/// the request, the answer or a token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The environment variable holding the receiver's URL (`https`; plain
    /// `http` only on loopback). From the environment: a Slack webhook URL is
    /// a secret.
    pub url_env: String,
    /// The environment variable holding the shared secret that signs each
    /// body (`x-escalation-signature: sha256=<hex HMAC-SHA256>`).
    pub secret_env: String,
    /// The proxy's address as reviewers reach it (e.g.
    /// `https://llm-proxy.example.com`); notifications link to
    /// `{public_base_url}/escalations/{id}`. Unset: no link.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Delivery attempts per escalation, the first included (backoff from 1 s,
    /// doubling to 60 s). Failures count in
    /// `escalation_notifications_total{outcome="failed"}`.
    #[serde(default = "default_webhook_attempts")]
    pub attempts: u32,
    /// The longest one attempt may take.
    #[serde(default = "default_webhook_timeout", deserialize_with = "seconds")]
    pub attempt_timeout_secs: Duration,
}

impl WebhookConfig {
    /// Checks the settings that need no environment.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError(format!("escalation.webhook.{what}")));
        if !(1..=20).contains(&self.attempts) {
            return bad("attempts must be between 1 and 20");
        }
        if self.attempt_timeout_secs.is_zero() {
            return bad("attempt_timeout_secs must be positive");
        }
        if self.url_env.is_empty() || self.secret_env.is_empty() {
            return bad("url_env and secret_env must name environment variables");
        }
        if let Some(base) = &self.public_base_url {
            let uri: http::Uri = match base.parse() {
                Ok(uri) => uri,
                Err(_) => return bad("public_base_url is not a URL"),
            };
            let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
            let plain = uri.query().is_none() && !base.contains('#');
            if !scheme_ok || uri.authority().is_none() || !plain {
                return bad(
                    "public_base_url must be an http(s) URL without query or fragment, \
                     e.g. https://llm-proxy.example.com",
                );
            }
        }
        Ok(())
    }
}

fn default_webhook_attempts() -> u32 {
    5
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
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
            webhook: None,
        }
    }
}
