//! What the shared-state backends (`redis`, `postgres`) have in common: whether
//! the server is reachable, as one component sees it, and their spawned tasks.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A backend's name and its metrics.
#[derive(Debug)]
pub(crate) struct Backend {
    name: &'static str,
    connected: &'static str,
    errors: &'static str,
}

#[cfg(feature = "redis")]
pub(crate) const REDIS: Backend = Backend {
    name: "redis",
    connected: "llm_redis_connected",
    errors: "llm_redis_errors_total",
};

#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: Backend = Backend {
    name: "postgres",
    connected: "llm_postgres_connected",
    errors: "llm_postgres_errors_total",
};

/// The reachability of a backend's server for one component (`circuit`,
/// `escalation_store`, ...): logged once per outage, exported as a gauge.
///
/// Metrics: gauge `llm_{backend}_connected{component, name}` (1 or 0) and
/// counter `llm_{backend}_errors_total{component, name}`.
#[derive(Debug)]
pub(crate) struct Link {
    backend: &'static Backend,
    component: &'static str,
    name: String,
    state: AtomicU8,
}

impl Link {
    pub(crate) fn new(
        backend: &'static Backend,
        component: &'static str,
        name: impl Into<String>,
    ) -> Self {
        Self {
            backend,
            component,
            name: name.into(),
            state: AtomicU8::new(UNKNOWN),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// An exchange succeeded.
    pub(crate) fn up(&self) {
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            metrics::gauge!(self.backend.connected, "component" => self.component, "name" => self.name.clone())
                .set(1.0);
            tracing::info!(component = self.component, name = %self.name, "{} reachable", self.backend.name);
        }
    }

    /// An exchange failed: warn once per outage, count every time. `error` must
    /// hold no secret (a connection URL with its password).
    pub(crate) fn down(&self, error: &dyn fmt::Display) {
        metrics::counter!(self.backend.errors, "component" => self.component, "name" => self.name.clone())
            .increment(1);
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            metrics::gauge!(self.backend.connected, "component" => self.component, "name" => self.name.clone())
                .set(0.0);
            tracing::warn!(
                component = self.component,
                name = %self.name,
                error = %error,
                "{} unreachable; keeping local state until it returns",
                self.backend.name
            );
        }
    }
}

/// Aborts the spawned task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every circuit of a layer, with its encoded key (`None`: the single circuit).
pub(crate) fn circuits<K: crate::circuit_breaker::SyncKey>(
    handle: &crate::circuit_breaker::Handle<K>,
) -> Vec<(Option<String>, crate::circuit_breaker::CircuitRef<K>)> {
    let mut circuits = vec![(None, handle.circuit())];
    circuits.extend(
        handle
            .keyed()
            .into_iter()
            .map(|(k, c)| (Some(k.encode()), c)),
    );
    circuits
}

/// The local circuit an encoded key names, created if the key can be decoded.
pub(crate) fn find_circuit<K: crate::circuit_breaker::SyncKey>(
    handle: &crate::circuit_breaker::Handle<K>,
    key: Option<&str>,
) -> Option<crate::circuit_breaker::CircuitRef<K>> {
    match key {
        None => Some(handle.circuit()),
        Some(text) => match K::decode(text) {
            // A key that does not fit is skipped: its state must not land on
            // the overflow circuit, which other (healthy) keys share.
            Some(key) => handle.try_get_or_create(key),
            None => handle
                .keyed()
                .into_iter()
                .find(|(k, _)| k.encode() == text)
                .map(|(_, c)| c),
        },
    }
}
