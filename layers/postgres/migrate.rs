//! Embedded, versioned schema migrations, applied once however many instances
//! start at the same time.

use sha2::{Digest, Sha256};

use super::connect::Postgres;
use super::error::{MigrateError, PgError};

/// One migration: plain SQL embedded in the crate.
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order. Never edit one that shipped: add the next.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "escalations",
        sql: include_str!("migrations/0001_escalations.sql"),
    },
    Migration {
        version: 2,
        name: "batches",
        sql: include_str!("migrations/0002_batches.sql"),
    },
    Migration {
        version: 3,
        name: "circuits",
        sql: include_str!("migrations/0003_circuits.sql"),
    },
    Migration {
        version: 4,
        name: "usage_and_audit_log",
        sql: include_str!("migrations/0004_usage_audit.sql"),
    },
    Migration {
        version: 5,
        name: "counters",
        sql: include_str!("migrations/0005_counters.sql"),
    },
    Migration {
        version: 6,
        name: "jobs",
        sql: include_str!("migrations/0006_jobs.sql"),
    },
    Migration {
        version: 7,
        name: "job_counts",
        sql: include_str!("migrations/0007_job_counts.sql"),
    },
];

/// Any constant both instances agree on: the lock that serialises migrations.
const LOCK_KEY: i64 = 0x746f_7765_725f_6c6c; // "tower_ll"

/// What [`Postgres::migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migrated {
    /// The versions this call applied (empty when the schema was current).
    pub applied: Vec<i64>,
    /// The newest version in the database afterwards.
    pub current: i64,
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

impl Postgres {
    /// Brings the database's schema up to this build's
    /// ([`SCHEMA_VERSION`](super::SCHEMA_VERSION)).
    ///
    /// Every migration runs in one transaction holding a transaction-scoped
    /// advisory lock (`pg_advisory_xact_lock`), with its version, name and
    /// checksum recorded in `tower_llm_schema_migrations`: instances that start
    /// together wait for the first, then find nothing left to do, and a crash
    /// midway leaves the schema as it was. Call it at startup or from an explicit
    /// `migrate` command; the backends assume it ran.
    ///
    /// Fails with [`MigrateError::Modified`] when an applied migration's SQL
    /// differs from this build's. A database newer than this build is left alone
    /// (logged at `warn`): a rolling upgrade runs old and new side by side.
    pub async fn migrate(&self) -> Result<Migrated, MigrateError> {
        let mut client = self.inner_pool_get().await?;
        let tx = client.transaction().await.map_err(PgError::Db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(PgError::Db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS tower_llm_schema_migrations (
                version    BIGINT PRIMARY KEY,
                name       TEXT NOT NULL,
                checksum   TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(PgError::Db)?;
        let rows = tx
            .query(
                "SELECT version, checksum FROM tower_llm_schema_migrations ORDER BY version",
                &[],
            )
            .await
            .map_err(PgError::Db)?;
        let done: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut applied = Vec::new();
        for migration in MIGRATIONS {
            let sum = checksum(migration.sql);
            match done.iter().find(|(v, _)| *v == migration.version) {
                Some((_, stored)) if *stored == sum => continue,
                Some(_) => {
                    return Err(MigrateError::Modified {
                        version: migration.version,
                    })
                }
                None => {}
            }
            tx.batch_execute(migration.sql).await.map_err(PgError::Db)?;
            tx.execute(
                "INSERT INTO tower_llm_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.name, &sum],
            )
            .await
            .map_err(PgError::Db)?;
            applied.push(migration.version);
        }
        tx.commit().await.map_err(PgError::Db)?;
        let current = done
            .iter()
            .map(|(v, _)| *v)
            .chain(applied.iter().copied())
            .max()
            .unwrap_or(0);
        if current > SCHEMA_VERSION {
            tracing::warn!(
                database = current,
                build = SCHEMA_VERSION,
                "postgres schema is newer than this build; leaving it as it is"
            );
        }
        if !applied.is_empty() {
            tracing::info!(?applied, current, "postgres migrations applied");
        }
        Ok(Migrated { applied, current })
    }
}
