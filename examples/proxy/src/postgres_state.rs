//! `[state] postgres_url`: circuits, escalations, batch and usage records on
//! PostgreSQL, shared by every proxy on the same database.
//!
//! - escalations are kept in a [`PostgresEscalationStore`]: created on one
//!   proxy, listed and resolved through any, a waiting request woken wherever it
//!   waits (`LISTEN`/`NOTIFY`, the poll interval as the backstop);
//! - batch records in a [`PostgresBatchStore`]: a batch re-run on another proxy
//!   gets its successes back as cached;
//! - usage records and budget counters (see [`crate::usage`]);
//! - unless `[state]` also names a Redis (which then keeps them), each
//!   upstream's circuit is attached with a [`PostgresCircuitSync`] named
//!   `{prefix}/{upstream}`: an open decision on one proxy opens the circuit on
//!   every other (the closed path stays local).
//!
//! Nothing connects when the state is built: the pool connects on the first
//! operation and reconnects on its own. The schema is migrated before (by
//! [`migrate`], which the proxy runs at startup unless `postgres_migrate =
//! false`, and `llm-proxy migrate` runs alone). While PostgreSQL is unreachable
//! the circuits decide on local state and the store-backed operations fail with
//! a 503 (see the README).

use std::time::Duration;

use tower_llm_resilience::circuit_breaker::Handle;
use tower_llm_resilience::postgres::{
    MigrateError, Migrated, PgError, Postgres, PostgresBatchStore, PostgresCircuitSync,
    PostgresEscalationStore,
};

use crate::config::{Config, ConfigError, StateConfig};

/// The PostgreSQL behind `[state] postgres_url`, with the prefix of circuit
/// names.
#[derive(Clone, Debug)]
pub(crate) struct PostgresState {
    pg: Postgres,
    prefix: String,
}

impl PostgresState {
    /// The PostgreSQL of `config`, if set (nothing is connected). The backends
    /// spawn their tasks on the current tokio runtime, so the proxy must be
    /// built inside the runtime that serves it.
    pub(crate) fn from_config(config: &StateConfig) -> Result<Option<Self>, ConfigError> {
        let Some(pg) = config.postgres()? else {
            return Ok(None);
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError(
                "state.postgres_url: the proxy must be built inside a tokio runtime".into(),
            ));
        }
        tracing::info!(postgres = ?pg, "shared state on PostgreSQL");
        Ok(Some(Self {
            pg,
            prefix: config.prefix.clone(),
        }))
    }

    /// The database (a pool; clones share it).
    pub(crate) fn pg(&self) -> &Postgres {
        &self.pg
    }

    /// `[state] prefix`: of circuit names and budget counter keys.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Share the circuits of `handle` (upstream `upstream`) with every proxy on
    /// this database and prefix, until the returned guard is dropped.
    pub(crate) fn attach_circuit(
        &self,
        upstream: &str,
        handle: &Handle<()>,
    ) -> Result<PostgresCircuitSync, ConfigError> {
        PostgresCircuitSync::attach_as(&self.pg, handle, &format!("{}/{upstream}", self.prefix))
            .map_err(|e| ConfigError(format!("circuit of upstream {upstream:?}: {e}")))
    }

    /// The escalation store.
    pub(crate) fn escalation_store(&self) -> Result<PostgresEscalationStore, ConfigError> {
        PostgresEscalationStore::builder(&self.pg)
            .build()
            .map_err(|e| ConfigError(format!("escalation store: {e}")))
    }

    /// The batch store.
    pub(crate) fn batch_store(&self) -> PostgresBatchStore {
        PostgresBatchStore::new(&self.pg)
    }
}

/// How long one migration attempt may take in all (waiting for another
/// instance's migration included).
pub(crate) const MIGRATE_DEADLINE: Duration = Duration::from_secs(60);

/// Why a migration did not apply.
#[derive(Debug)]
pub(crate) enum MigrateFailure {
    /// PostgreSQL did not answer (unreachable, or not within
    /// [`MIGRATE_DEADLINE`]): worth trying again later.
    Unreachable(ConfigError),
    /// It answered and refused (a modified migration, no permission, a bad
    /// setting): trying again will not help.
    Refused(ConfigError),
}

impl MigrateFailure {
    pub(crate) fn into_error(self) -> ConfigError {
        match self {
            MigrateFailure::Unreachable(e) | MigrateFailure::Refused(e) => e,
        }
    }
}

/// Applies the PostgreSQL schema migrations of `config`'s `[state]`, if it names
/// a PostgreSQL (`None` otherwise): what `llm-proxy migrate` does, and the proxy
/// at startup unless `postgres_migrate = false`. Safe when several proxies
/// start at once: one applies, the others wait and find nothing left. Bounded
/// by a minute.
pub async fn migrate(config: &Config) -> Result<Option<Migrated>, ConfigError> {
    try_migrate(config)
        .await
        .map_err(MigrateFailure::into_error)
}

pub(crate) async fn try_migrate(config: &Config) -> Result<Option<Migrated>, MigrateFailure> {
    let Some(pg) = config.state.postgres().map_err(MigrateFailure::Refused)? else {
        return Ok(None);
    };
    let attempt = tokio::time::timeout(MIGRATE_DEADLINE, pg.migrate()).await;
    let Ok(result) = attempt else {
        return Err(MigrateFailure::Unreachable(ConfigError(format!(
            "cannot migrate the PostgreSQL schema ({pg:?}): no answer within \
             {MIGRATE_DEADLINE:?} (is another migration holding its lock?)"
        ))));
    };
    match result {
        Ok(migrated) => {
            if !migrated.applied.is_empty() {
                tracing::info!(
                    applied = ?migrated.applied,
                    version = migrated.current,
                    "PostgreSQL schema migrated"
                );
            }
            Ok(Some(migrated))
        }
        Err(e) => {
            let message = ConfigError(format!(
                "cannot migrate the PostgreSQL schema ({pg:?}): {e}"
            ));
            let answered = match &e {
                MigrateError::Pg(PgError::Db(db)) => db.as_db_error().is_some(),
                MigrateError::Pg(PgError::Corrupt(_)) => true,
                MigrateError::Pg(_) => false,
                _ => true,
            };
            Err(if answered {
                MigrateFailure::Refused(message)
            } else {
                MigrateFailure::Unreachable(message)
            })
        }
    }
}

/// Tries [`try_migrate`] again every `every` until it applies or is refused:
/// a proxy that started while PostgreSQL was unreachable gets its schema when
/// it returns.
pub(crate) async fn migrate_in_background(config: Config, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match try_migrate(&config).await {
            Ok(_) => {
                tracing::info!("PostgreSQL reachable: schema migrated");
                return;
            }
            Err(MigrateFailure::Refused(e)) => {
                tracing::error!(error = %e, "the PostgreSQL schema cannot be migrated");
                return;
            }
            Err(MigrateFailure::Unreachable(_)) => {}
        }
    }
}
