//! Whether PostgreSQL is reachable, as one component sees it (the shared
//! [`Link`](crate::backend::Link)).

pub(crate) use crate::backend::Link;

/// The reachability of PostgreSQL for one component (`pool`,
/// `escalation_listen`, `circuit_listen`) of one database (its name).
///
/// Metrics: gauge `llm_postgres_connected{component, name}` (1 or 0) and counter
/// `llm_postgres_errors_total{component, name}`.
pub(crate) fn link(component: &'static str, name: impl Into<String>) -> Link {
    Link::new(&crate::backend::POSTGRES, component, name)
}
