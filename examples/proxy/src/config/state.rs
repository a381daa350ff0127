//! `[state]`: embedded, or shared through Redis, PostgreSQL, or both.

use tower_llm_resilience::postgres::Postgres;

use super::*;

/// Where the state lives: embedded (the default), on Redis, on PostgreSQL, or
/// both (circuits, budgets and the cache on Redis, records on Postgres). Proxies
/// configured with the same servers (and prefix) share it; the README's
/// "Which state lives where" tells which state goes where in each setup.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `redis://[user:password@]host[:port][/db]` (or `redis+unix:///path`).
    /// Unset (and no Postgres): circuits are per process, escalations in
    /// `[escalation]`'s store, batch records in memory.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The environment variable holding that URL instead (it holds a password
    /// when Redis has one, which then stays out of the config file). Not with
    /// `redis_url`.
    #[serde(default)]
    pub redis_url_env: Option<String>,
    /// `postgres://user:password@host[:port]/db[?sslmode=require]`: escalations,
    /// batch records and usage records are kept there (and circuits and budgets
    /// too, unless Redis is set). Prefer `postgres_url_env`: the URL holds a
    /// password.
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// The environment variable holding that URL instead. Not with
    /// `postgres_url`.
    #[serde(default)]
    pub postgres_url_env: Option<String>,
    /// The most pooled PostgreSQL connections (each store that listens for
    /// notifications opens one more of its own).
    #[serde(default = "default_pool_size")]
    pub postgres_pool_size: usize,
    /// How long connecting to PostgreSQL (or waiting for a pooled connection)
    /// may take.
    #[serde(default = "default_connect_timeout", deserialize_with = "seconds")]
    pub postgres_connect_timeout_secs: Duration,
    /// How long one store operation on PostgreSQL may take in all.
    #[serde(default = "default_op_timeout", deserialize_with = "seconds")]
    pub postgres_op_timeout_secs: Duration,
    /// A PEM file of root certificates to trust for TLS to PostgreSQL too (a
    /// managed Postgres's own CA); the system's roots are trusted as well.
    #[serde(default)]
    pub postgres_ca_file: Option<PathBuf>,
    /// Apply the schema migrations when the proxy starts (it then refuses to
    /// start while PostgreSQL is unreachable). `false`: run `llm-proxy migrate`
    /// yourself before starting new versions.
    #[serde(default = "yes")]
    pub postgres_migrate: bool,
    /// The prefix of every Redis key and channel, and of the circuits' names on
    /// PostgreSQL; proxies that share it share state.
    #[serde(default = "default_state_prefix")]
    pub prefix: String,
}

fn default_state_prefix() -> String {
    "llm-proxy".into()
}

fn default_pool_size() -> usize {
    16
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_op_timeout() -> Duration {
    Duration::from_secs(10)
}

fn yes() -> bool {
    true
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_url_env: None,
            postgres_url: None,
            postgres_url_env: None,
            postgres_pool_size: default_pool_size(),
            postgres_connect_timeout_secs: default_connect_timeout(),
            postgres_op_timeout_secs: default_op_timeout(),
            postgres_ca_file: None,
            postgres_migrate: true,
            prefix: default_state_prefix(),
        }
    }
}

// The URLs may hold passwords: not printed.
impl fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_url_env", &self.redis_url_env)
            .field("postgres_url", &self.postgres_url.as_ref().map(|_| "<set>"))
            .field("postgres_url_env", &self.postgres_url_env)
            .field("postgres_pool_size", &self.postgres_pool_size)
            .field("postgres_migrate", &self.postgres_migrate)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The URL a `*_url` / `*_url_env` pair names, and the setting it came from
/// (for messages, which never repeat the URL: it may hold a password).
fn url_of(
    url: &Option<String>,
    env: &Option<String>,
    name: &str,
) -> Result<Option<(String, String)>, ConfigError> {
    let (url, setting) = match (url, env) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return err(format!(
                "state.{name}_url and state.{name}_url_env are both set: keep one"
            ))
        }
        (Some(url), None) => (url.clone(), format!("state.{name}_url")),
        (None, Some(var)) => match std::env::var(var) {
            Ok(url) => (url, format!("state.{name}_url_env ({var})")),
            Err(_) => {
                return err(format!(
                    "state.{name}_url_env: the environment variable {var} is not set \
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
    Ok(Some((url, setting)))
}

impl StateConfig {
    /// The Redis client of `redis_url` (or of the variable `redis_url_env`
    /// names), if set. Parses the URL only: nothing is connected here.
    pub fn redis_client(&self) -> Result<Option<redis::Client>, ConfigError> {
        let Some((url, setting)) = url_of(&self.redis_url, &self.redis_url_env, "redis")? else {
            return Ok(None);
        };
        match redis::Client::open(url.as_str()) {
            Ok(client) => Ok(Some(client)),
            // The URL itself is not repeated: it may hold a password.
            Err(e) => err(format!(
                "{setting} is not a usable Redis URL ({e}); \
                 expected redis://[user:password@]host[:port][/db]"
            )),
        }
    }

    /// The PostgreSQL of `postgres_url` (or of the variable `postgres_url_env`
    /// names) with the pool settings, if set. Parses the URL and reads the CA
    /// file only: nothing is connected here.
    pub fn postgres(&self) -> Result<Option<Postgres>, ConfigError> {
        let Some((url, setting)) = url_of(&self.postgres_url, &self.postgres_url_env, "postgres")?
        else {
            return Ok(None);
        };
        // `user:p@ss@host` parses as host `ss@host`, and would then be shown
        // with part of the password in it.
        if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            if authority.matches('@').count() > 1 {
                return err(format!(
                    "{setting}: more than one '@' before the host: percent-encode an '@' \
                     in the password as %40"
                ));
            }
        }
        let mut builder = Postgres::builder(&url)
            .name(self.prefix.as_str())
            .pool_size(self.postgres_pool_size)
            .connect_timeout(self.postgres_connect_timeout_secs)
            .op_timeout(self.postgres_op_timeout_secs);
        if let Some(path) = &self.postgres_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError(format!(
                    "state.postgres_ca_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            builder = builder.root_certificates_pem(&pem).map_err(|e| {
                ConfigError(format!("state.postgres_ca_file {}: {e}", path.display()))
            })?;
        }
        // The library's messages never repeat the URL.
        builder.build().map(Some).map_err(|e| {
            ConfigError(format!(
                "{setting}: {e}; expected postgres://user:password@host[:port]/db"
            ))
        })
    }

    /// A pool (sqlx, apalis-postgres's driver) on the same PostgreSQL as
    /// [`postgres`](Self::postgres), for the asynchronous batches' queue, with
    /// the same pool size and CA file, `postgres_connect_timeout_secs` to get
    /// a connection and `postgres_op_timeout_secs` as the server's
    /// `statement_timeout` and `lock_timeout`. Nothing is connected here.
    pub(crate) fn postgres_queue_pool(
        &self,
    ) -> Result<Option<apalis_postgres::PgPool>, ConfigError> {
        // Checks the URL and the CA file with the messages of `postgres`.
        if self.postgres()?.is_none() {
            return Ok(None);
        }
        let Some((url, setting)) = url_of(&self.postgres_url, &self.postgres_url_env, "postgres")?
        else {
            return Ok(None);
        };
        // sqlx's parse errors never repeat the URL either.
        let mut options: apalis_postgres::PgConnectOptions = url.parse().map_err(|e| {
            ConfigError(format!(
                "{setting}: {e}; expected postgres://user:password@host[:port]/db"
            ))
        })?;
        if let Some(path) = &self.postgres_ca_file {
            options = options.ssl_root_cert(path.as_path());
        }
        // The proxy's other pool verifies the server's certificate and name
        // whenever it uses TLS; sqlx's `require` would encrypt without
        // checking either (and send the password to whoever answers). Its
        // `prefer` (the default) stays libpq's: TLS when offered, unverified,
        // and plain text when not (see the README).
        if matches!(options.get_ssl_mode(), sqlx::postgres::PgSslMode::Require) {
            options = options.ssl_mode(sqlx::postgres::PgSslMode::VerifyFull);
        }
        // sqlx has no operation timeout: the server ends a statement (or a
        // wait for a lock) that takes longer than the other pool's.
        let op_ms = self.postgres_op_timeout_secs.as_millis().max(1);
        options = options.options([("statement_timeout", op_ms), ("lock_timeout", op_ms)]);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.postgres_pool_size.min(u32::MAX as usize) as u32)
            .acquire_timeout(self.postgres_connect_timeout_secs)
            .connect_lazy_with(options);
        Ok(Some(pool))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty() {
            return err("state.prefix must not be empty");
        }
        if self.prefix.len() > 128 {
            return err("state.prefix: at most 128 bytes");
        }
        if self.postgres_pool_size == 0 || self.postgres_pool_size > 1024 {
            return err("state.postgres_pool_size: between 1 and 1024");
        }
        for (name, value) in [
            (
                "postgres_connect_timeout_secs",
                self.postgres_connect_timeout_secs,
            ),
            ("postgres_op_timeout_secs", self.postgres_op_timeout_secs),
        ] {
            if value.is_zero() {
                return err(format!("state.{name} must be > 0"));
            }
        }
        self.redis_client().map(drop)?;
        self.postgres().map(drop)
    }
}
