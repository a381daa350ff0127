use std::fmt;

/// A setting a PostgreSQL backend refused. Building never connects: backends
/// connect lazily and keep retrying.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The connection URL could not be parsed. The URL itself is never part of the
    /// message (it may hold a password).
    InvalidUrl(String),
    /// A count that must be at least 1 was 0.
    Zero(&'static str),
    /// A duration that must be positive was zero.
    ZeroDuration(&'static str),
    /// A root certificate (PEM) could not be read.
    Certificate(String),
    /// The TLS settings were refused.
    Tls(rustls::Error),
    /// The connection pool refused its settings.
    Pool(String),
    /// A circuit sync's name is empty or longer than 512 bytes (its length).
    InvalidName(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidUrl(why) => {
                write!(f, "postgres backend: invalid connection URL: {why}")
            }
            ConfigError::Zero(what) => write!(f, "postgres backend: {what} must be at least 1"),
            ConfigError::ZeroDuration(what) => {
                write!(f, "postgres backend: {what} must be longer than zero")
            }
            ConfigError::Certificate(why) => {
                write!(f, "postgres backend: root certificate: {why}")
            }
            ConfigError::Tls(e) => write!(f, "postgres backend: TLS settings: {e}"),
            ConfigError::Pool(why) => write!(f, "postgres backend: connection pool: {why}"),
            ConfigError::InvalidName(len) => write!(
                f,
                "postgres backend: a circuit sync name must be 1 to 512 bytes, got {len}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Tls(e) => Some(e),
            _ => None,
        }
    }
}

/// A PostgreSQL operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PgError {
    /// No connection could be had from the pool (server unreachable, pool
    /// exhausted past its wait timeout, ...).
    Pool(deadpool_postgres::PoolError),
    /// The server or the connection failed a statement.
    Db(tokio_postgres::Error),
    /// The operation took longer than the backend's operation timeout.
    Timeout(std::time::Duration),
    /// A stored value could not be read back.
    Corrupt(String),
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Pool(e) => write!(f, "postgres: no connection: {e}"),
            PgError::Db(e) => match e.as_db_error() {
                // The server's own words (never parameters), with its code.
                Some(db) => write!(f, "postgres: {} ({})", db.message(), db.code().code()),
                None => write!(f, "postgres: {e}"),
            },
            PgError::Timeout(after) => write!(f, "postgres: no answer within {after:?}"),
            PgError::Corrupt(why) => write!(f, "postgres: unreadable stored value: {why}"),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgError::Pool(e) => Some(e),
            PgError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PgError::Pool(e)
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(e)
    }
}

/// Applying the embedded migrations failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum MigrateError {
    /// The database failed.
    Pg(PgError),
    /// A migration already applied has different SQL than this build embeds: the
    /// schema was changed by hand or by a different build.
    Modified {
        /// The migration's version.
        version: i64,
    },
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::Pg(e) => write!(f, "migrations: {e}"),
            MigrateError::Modified { version } => write!(
                f,
                "migrations: migration {version} was applied with different SQL than this build's"
            ),
        }
    }
}

impl std::error::Error for MigrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MigrateError::Pg(e) => Some(e),
            MigrateError::Modified { .. } => None,
        }
    }
}

impl<E: Into<PgError>> From<E> for MigrateError {
    fn from(e: E) -> Self {
        MigrateError::Pg(e.into())
    }
}
