//! `[auth]`: client and admin keys, review-page sessions, CORS.

use super::*;

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
