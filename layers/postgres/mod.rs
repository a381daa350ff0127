//! Shared, durable state on PostgreSQL (feature `postgres`): for teams that
//! already run a Postgres and would rather not add Redis.
//!
//! One [`Postgres`] per database holds the parsed connection settings, a
//! [deadpool](deadpool_postgres) pool of [`tokio_postgres`] connections, and TLS
//! through rustls (chosen by the URL's `sslmode`). Each backend takes it:
//!
//! | backend | plugs into | shares |
//! |---|---|---|
//! | [`PostgresEscalationStore`] | [`EscalationLayer`](crate::escalation::EscalationLayer)`::builder(..).store(..)` | escalations, audit trail, wake-ups (`LISTEN`/`NOTIFY`) |
//! | [`PostgresCircuitSync`] | a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s [`Handle`](crate::circuit_breaker::Handle) | open/closed decisions (`NOTIFY`) |
//! | [`PostgresBatchStore`] | [`PartialBatchLayer`](crate::PartialBatchLayer)`::builder().store(..)` | successes of named batches |
//! | [`PostgresUsageStore`] | your usage accounting (e.g. the output of [`usage`](crate::usage)) | token and cost records, grouped by client, model, day |
//! | [`PostgresAuditLog`] | your operators' actions | an append-only audit log |
//! | [`PostgresCounters`] | your budgets and rate limits | fixed-window counters |
//! | `PostgresJobStore` (feature `apalis`) | [`jobs`](crate::jobs)' submitter, workers and report | a distributed batch's item states, claims, pause and results |
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_llm_resilience::escalation::{EscalationLayer, InvalidJsonAnswer};
//! use tower_llm_resilience::postgres::{Postgres, PostgresEscalationStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The URL holds a password: read it from the environment, never log it.
//! let url = std::env::var("DATABASE_URL")?;
//! let pg = Postgres::builder(&url).pool_size(16).build()?;
//! // Once at startup (or from a `migrate` command): safe when instances start together.
//! pg.migrate().await?;
//!
//! let escalation = EscalationLayer::builder(InvalidJsonAnswer)
//!     .store(PostgresEscalationStore::new(&pg))
//!     .detach(Duration::from_secs(3600))
//!     .build()?;
//! # let _ = escalation;
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//!
//! Plain SQL migrations are embedded in the crate and applied by
//! [`Postgres::migrate`] in one transaction under an advisory lock, recorded
//! in `tower_llm_schema_migrations`. Every table is named `tower_llm_*`, so the
//! backends can share a database with an application.
//!
//! Two deployments can share one database in separate schemas (put
//! `options=-c search_path=team_a` in the URL). Notifications are per database,
//! though: give their circuit syncs distinct names
//! ([`PostgresCircuitSync::attach_as`]).
//!
//! # When Postgres is unreachable
//!
//! Store operations fail with a store error (never lose or repeat work); the
//! pool reconnects on the next operation. Listening connections reconnect with
//! backoff and, once back, wake every waiter to read again. The outage is logged
//! once (`warn`, then `info` when back) and exported as the gauge
//! `llm_postgres_connected{component, name}` and the counter
//! `llm_postgres_errors_total{component, name}`. Nothing logs the connection URL
//! or its password.

mod audit_log;
mod batch_store;
mod circuit_sync;
mod connect;
mod counters;
mod error;
mod escalation_rows;
mod escalation_store;
#[cfg(feature = "apalis")]
mod job_store;
mod link;
mod listen;
mod migrate;
mod usage;

pub use self::audit_log::{
    AuditEvent, LoggedEvent, PostgresAuditLog, AUDIT_APPEND_LOCK, AUDIT_MAX_DETAIL,
    AUDIT_MAX_FIELD, AUDIT_MAX_PAGE,
};
pub use self::batch_store::PostgresBatchStore;
pub use self::circuit_sync::PostgresCircuitSync;
pub use self::connect::{Postgres, PostgresBuilder};
pub use self::counters::{
    CounterAdd, CounterError, PostgresCounters, COUNTER_MAX_BATCH, COUNTER_MAX_KEY,
};
pub use self::error::{ConfigError, MigrateError, PgError};
pub use self::escalation_store::{PostgresEscalationStore, PostgresEscalationStoreBuilder};
#[cfg(feature = "apalis")]
pub use self::job_store::PostgresJobStore;
pub use self::migrate::{Migrated, SCHEMA_VERSION};
pub use self::usage::{
    PostgresUsageStore, UsageGroup, UsageQuery, UsageReport, UsageRow, UsageTotals,
    USAGE_MAX_GROUPS,
};
