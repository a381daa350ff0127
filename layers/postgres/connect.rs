//! [`Postgres`]: the connection settings and pool every PostgreSQL backend shares.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::{ConfigError, PgError};
use super::link::{link, Link};

/// Builds a [`Postgres`].
///
/// Defaults: at most 16 pooled connections, 5 s to connect (and to wait for a
/// pooled connection), 10 s for one operation, the system's root certificates for
/// TLS.
#[derive(Clone)]
pub struct PostgresBuilder {
    /// The parsed URL, or why it could not be parsed.
    config: Result<tokio_postgres::Config, String>,
    pool_size: usize,
    connect_timeout: Duration,
    op_timeout: Duration,
    extra_roots: Vec<CertificateDer<'static>>,
    system_roots: bool,
    name: String,
}

impl fmt::Debug for PostgresBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBuilder")
            .field("server", &self.config.as_ref().map(describe).ok())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresBuilder {
    /// The most connections the pool opens (default 16). Each backend that
    /// listens for notifications (escalation store, circuit sync) opens one more
    /// connection of its own.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections;
        self
    }

    /// How long connecting, or waiting for a free pooled connection, may take
    /// (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one store operation may take in all (default 10 s); past it the
    /// operation fails with [`PgError::Timeout`].
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Trusts the root certificates in this PEM text too (a managed Postgres's
    /// own CA, e.g. Amazon RDS's bundle).
    pub fn root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        for cert in CertificateDer::pem_slice_iter(pem) {
            self.extra_roots
                .push(cert.map_err(|e| ConfigError::Certificate(e.to_string()))?);
        }
        if self.extra_roots.is_empty() {
            return Err(ConfigError::Certificate("no certificate in the PEM".into()));
        }
        Ok(self)
    }

    /// Whether to trust the system's root certificates (default yes).
    pub fn system_roots(mut self, trust: bool) -> Self {
        self.system_roots = trust;
        self
    }

    /// A name for this database in metrics and logs (default `default`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the pool. Never connects: the first operation does.
    ///
    /// TLS follows the URL's `sslmode`: `disable` never uses it, `prefer` (the
    /// default) uses it when the server offers it, `require` refuses a server
    /// without it. When TLS is used the server's certificate is always verified
    /// against the trusted roots and its host name.
    pub fn build(self) -> Result<Postgres, ConfigError> {
        let mut config = self.config.map_err(ConfigError::InvalidUrl)?;
        if self.pool_size == 0 {
            return Err(ConfigError::Zero("pool_size"));
        }
        for (what, value) in [
            ("connect_timeout", self.connect_timeout),
            ("op_timeout", self.op_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(what));
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("tower-llm-resilience");
        }
        let tls = tls_connector(&self.extra_roots, self.system_roots)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.connect_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .build()
            .map_err(|e| ConfigError::Pool(e.to_string()))?;
        Ok(Postgres {
            inner: Arc::new(Inner {
                hubs: Hubs::default(),
                link: Arc::new(link("pool", self.name.clone())),
                config,
                pool,
                tls,
                op_timeout: self.op_timeout,
                name: self.name,
            }),
        })
    }
}

fn tls_connector(
    extra: &[CertificateDer<'static>],
    system: bool,
) -> Result<MakeRustlsConnect, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    if system {
        // Unreadable system certificates are skipped; a server signed by none of
        // the rest fails its handshake with a clear error.
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
    }
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| ConfigError::Certificate(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ConfigError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `user@host:port/dbname (sslmode)`, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let sslmode = match config.get_ssl_mode() {
        SslMode::Disable => "disable",
        SslMode::Require => "require",
        _ => "prefer",
    };
    format!(
        "{}@{host}:{port}/{} (sslmode={sslmode})",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?"),
    )
}

/// A connection outside the pool, to be polled by its owner.
pub(crate) type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// A PostgreSQL database shared by the backends in [`postgres`](super): the
/// parsed connection settings, a connection pool (deadpool) and TLS (rustls).
///
/// Build one per database and hand it to each backend. Cheap to clone; clones
/// share the pool. Its `Debug` shows user, host, port and database, never the
/// password.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

/// Shared `LISTEN` connections of one database handle, by channel (each a
/// `listen::Hub`, kept here without naming it: the listening side builds on
/// this module, not the other way round).
pub(crate) type Hubs = std::sync::Mutex<
    std::collections::HashMap<String, std::sync::Weak<dyn std::any::Any + Send + Sync>>,
>;

struct Inner {
    hubs: Hubs,
    config: tokio_postgres::Config,
    pool: Pool,
    tls: MakeRustlsConnect,
    link: Arc<Link>,
    op_timeout: Duration,
    name: String,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("Postgres")
            .field("name", &self.inner.name)
            .field("server", &describe(&self.inner.config))
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .field("connected", &self.inner.link.is_up())
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Configure a database from its URL (`postgres://user:password@host:port/db?sslmode=require`)
    /// or key-value string (`host=... user=...`). A URL that cannot be parsed
    /// fails [`build`](PostgresBuilder::build), without echoing it.
    pub fn builder(url: &str) -> PostgresBuilder {
        PostgresBuilder {
            config: tokio_postgres::Config::from_str(url).map_err(|e| e.to_string()),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            extra_roots: Vec::new(),
            system_roots: true,
            name: "default".to_owned(),
        }
    }

    /// A database with the defaults; see [`PostgresBuilder::build`].
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        Self::builder(url).build()
    }

    /// Whether the last exchange through the pool worked.
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_up()
    }

    /// One round trip through the pool (`SELECT 1`), within the operation
    /// timeout: for readiness checks.
    pub async fn ping(&self) -> Result<(), PgError> {
        self.run(|client| async move {
            client.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    /// The name given at build time (metrics label).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The shared `LISTEN` connections of this handle (and its clones).
    pub(crate) fn hubs(&self) -> &Hubs {
        &self.inner.hubs
    }

    /// Runs `work` with a pooled connection, within the operation timeout,
    /// recording reachability.
    pub(crate) async fn run<T, F, Fut>(&self, work: F) -> Result<T, PgError>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = Result<T, PgError>>,
    {
        let timeout = self.inner.op_timeout;
        let result = tokio::time::timeout(timeout, async {
            let client = self.inner.pool.get().await?;
            work(client).await
        })
        .await
        .unwrap_or(Err(PgError::Timeout(timeout)));
        match &result {
            Ok(_) => self.inner.link.up(),
            // A statement the server refused (a conflict, a constraint) says the
            // server is there.
            Err(PgError::Db(e)) if e.as_db_error().is_some() => self.inner.link.up(),
            Err(PgError::Corrupt(_)) => {}
            Err(e) => self.inner.link.down(e),
        }
        result
    }

    /// A pooled connection, with no operation timeout (migrations may wait for
    /// another instance's).
    pub(crate) async fn inner_pool_get(&self) -> Result<deadpool_postgres::Object, PgError> {
        match self.inner.pool.get().await {
            Ok(client) => {
                self.inner.link.up();
                Ok(client)
            }
            Err(e) => {
                self.inner.link.down(&e);
                Err(PgError::Pool(e))
            }
        }
    }

    /// A connection of its own, outside the pool (for `LISTEN`): the client and
    /// the connection future that must be polled for it to work.
    pub(crate) async fn connect_dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), PgError> {
        let timeout = self.inner.op_timeout;
        tokio::time::timeout(timeout, self.inner.config.connect(self.inner.tls.clone()))
            .await
            .map_err(|_| PgError::Timeout(timeout))?
            .map_err(PgError::Db)
    }
}
