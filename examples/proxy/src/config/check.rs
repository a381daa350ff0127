//! Checking a parsed config: names, references, numbers, keys and secrets,
//! once, each error naming its setting.

use super::*;

impl Config {
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
            ("batch.job_heartbeat_secs", self.batch.job_heartbeat_secs),
            ("batch.job_ttl_secs", self.batch.job_ttl_secs),
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
        if let Some(webhook) = &self.escalation.webhook {
            webhook.validate()?;
        }
        self.circuit.validate("circuit")?;
        if self.batch.concurrency == 0 || self.batch.max_attempts == 0 || self.batch.max_items == 0
        {
            return err("batch.concurrency, max_attempts and max_items must be positive");
        }
        if self.batch.max_async_items == 0 || self.batch.max_async_body_bytes == 0 {
            return err("batch.max_async_items and max_async_body_bytes must be positive");
        }
        match self.batch.job_queue {
            Some(super::JobQueue::Redis)
                if self.state.redis_url.is_none() && self.state.redis_url_env.is_none() =>
            {
                return err("batch.job_queue = \"redis\" needs [state] redis_url");
            }
            Some(super::JobQueue::Postgres)
                if self.state.postgres_url.is_none() && self.state.postgres_url_env.is_none() =>
            {
                return err("batch.job_queue = \"postgres\" needs [state] postgres_url");
            }
            _ => {}
        }
        if self.batch.job_lease_secs < Duration::from_millis(100) {
            return err("batch.job_lease_secs must be at least 0.1");
        }
        self.state.validate()?;
        self.telemetry.validate()?;
        self.usage.validate()?;
        self.budgets.validate(self.usage.enabled)?;
        self.cache.validate()?;
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
