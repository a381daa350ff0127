//! Bounded escalations: caps on pending escalations, and their counts.
//!
//! [`CappedStore`] wraps the escalation store. A new escalation is stored only
//! while fewer than `[escalation] max_pending` are pending in all and fewer than
//! `max_pending_per_client` for its client key (the `x-llm-proxy-client` id in
//! its request snapshot; requests without one share the `anonymous` count); over
//! either cap nothing is stored and the client gets a 429 in the OpenAI error
//! format.
//!
//! The counts are kept in memory (id → client and expiry of each pending
//! escalation), so neither a cap check nor a `/metrics` scrape reads the store:
//! a pending record past its expiry stops counting at once, a resolution stops it
//! counting when this process writes it. The proxy re-reads the pending records
//! from the store at startup and every minute ([`CappedStore::sync`]), which
//! also picks up what other proxies sharing a Redis store did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tower_llm_resilience::escalation::store::{ChangeFuture, StoreFuture, Update};
use tower_llm_resilience::escalation::{
    AuditEntry, Cursor, EscalationError, EscalationId, EscalationRecord, EscalationStore, Page,
    Status, StoreError,
};
use tower_llm_resilience::BoxError;

/// The request header carrying the client key id into the escalation snapshot.
pub(crate) const CLIENT_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-llm-proxy-client");

/// The owner of escalations whose request named no client.
const ANONYMOUS: &str = "anonymous";

/// A new escalation was refused: too many are pending.
#[derive(Debug)]
pub(crate) struct PendingCapReached {
    /// Which cap: `max_pending` or `max_pending_per_client`.
    pub(crate) setting: &'static str,
    /// Its value.
    pub(crate) cap: usize,
}

impl std::fmt::Display for PendingCapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = if self.setting == "max_pending" {
            "in all"
        } else {
            "for this API key"
        };
        write!(
            f,
            "too many escalations are waiting for a human ({} {whose}, \
             escalation.{}); try again once some are resolved",
            self.cap, self.setting
        )
    }
}

impl std::error::Error for PendingCapReached {}

/// The 429 for an escalation refused by a cap, if `err` is one.
pub(crate) fn cap_error(err: &BoxError) -> Option<crate::error::ApiError> {
    let Some(EscalationError::Store(StoreError::Backend(inner))) =
        err.downcast_ref::<EscalationError>()
    else {
        return None;
    };
    let cap = inner.downcast_ref::<PendingCapReached>()?;
    Some(crate::error::ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "too_many_pending_escalations",
        cap.to_string(),
    ))
}

/// What the counts keep of one pending escalation.
#[derive(Debug)]
struct Pending {
    /// The client key id its request named (`anonymous` for none).
    owner: Arc<str>,
    created_at: SystemTime,
    expires_at: SystemTime,
}

impl Pending {
    fn of(record: &EscalationRecord) -> Self {
        Self {
            owner: owner(record),
            created_at: record.created_at,
            expires_at: record.expires_at,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// Every pending escalation this process knows of.
    pending: HashMap<EscalationId, Pending>,
}

impl Counts {
    fn prune(&mut self, now: SystemTime) {
        self.pending.retain(|_, p| p.expires_at > now);
    }
}

/// An escalation store with caps on pending escalations (see the module docs).
#[derive(Debug)]
pub(crate) struct CappedStore {
    inner: Arc<dyn EscalationStore>,
    max_total: usize,
    max_per_client: usize,
    /// How long after its creation a record is purged: the escalation timeout
    /// plus the retention.
    keep_for: Duration,
    counts: Mutex<Counts>,
}

impl CappedStore {
    /// `inner`, capped; records are purged `keep_for` after their creation.
    pub(crate) fn new(
        inner: impl EscalationStore,
        max_total: usize,
        max_per_client: usize,
        keep_for: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            max_total,
            max_per_client,
            keep_for,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Delete the records created more than `keep_for` ago: every record
    /// expires `[escalation] timeout_secs` after its creation, so these are the
    /// resolved and expired ones past `retention_secs`.
    pub(crate) async fn purge_old(&self) -> Result<usize, StoreError> {
        match SystemTime::now().checked_sub(self.keep_for) {
            Some(cutoff) => self.inner.purge(cutoff).await,
            None => Ok(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Each change below is one map operation: nothing is left half-done.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pending escalations (not expired), from the in-memory counts.
    pub(crate) fn pending(&self) -> usize {
        let mut counts = self.lock();
        counts.prune(SystemTime::now());
        counts.pending.len()
    }

    /// How long the oldest pending escalation (not expired) has waited, from
    /// the in-memory counts; zero when none is pending. At most
    /// `[escalation] max_pending` entries are looked at.
    pub(crate) fn oldest_pending_age(&self) -> Duration {
        let now = SystemTime::now();
        let mut counts = self.lock();
        counts.prune(now);
        counts
            .pending
            .values()
            .map(|p| now.duration_since(p.created_at).unwrap_or_default())
            .max()
            .unwrap_or_default()
    }

    /// Re-read the pending escalations from the store, page by page.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let mut fresh = HashMap::new();
        let mut after = None;
        loop {
            let page = self
                .inner
                .list_page(Some(Status::Pending), after.take(), 500)
                .await?;
            for record in &page.records {
                fresh.insert(record.id.clone(), Pending::of(record));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut counts = self.lock();
        counts.pending = fresh;
        counts.prune(SystemTime::now());
        Ok(())
    }

    /// Reserve a place for `record`, or say which cap refuses it.
    fn reserve(&self, record: &EscalationRecord) -> Result<(), PendingCapReached> {
        let entry = Pending::of(record);
        let mut counts = self.lock();
        counts.prune(SystemTime::now());
        if counts.pending.len() >= self.max_total {
            return Err(PendingCapReached {
                setting: "max_pending",
                cap: self.max_total,
            });
        }
        let mine = (counts.pending.values())
            .filter(|p| p.owner == entry.owner)
            .count();
        if mine >= self.max_per_client {
            return Err(PendingCapReached {
                setting: "max_pending_per_client",
                cap: self.max_per_client,
            });
        }
        counts.pending.insert(record.id.clone(), entry);
        Ok(())
    }
}

/// The client key id a record's request snapshot names.
fn owner(record: &EscalationRecord) -> Arc<str> {
    record
        .request
        .pointer("/headers/x-llm-proxy-client")
        .and_then(|v| v.as_str())
        .unwrap_or(ANONYMOUS)
        .into()
}

impl EscalationStore for CappedStore {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let pending = record.status == Status::Pending;
            if pending {
                if let Err(cap) = self.reserve(&record) {
                    tracing::warn!(%cap, "escalation refused");
                    metrics::counter!("llm_proxy_escalations_refused_total", "cap" => cap.setting)
                        .increment(1);
                    return Err(StoreError::Backend(Box::new(cap)));
                }
            }
            let id = record.id.clone();
            let inserted = self.inner.insert(record, audit).await;
            if inserted.is_err() && pending {
                self.lock().pending.remove(&id);
            }
            inserted
        })
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        self.inner.get(id)
    }

    fn update(
        &self,
        expected_version: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        Box::pin(async move {
            let id = record.id.clone();
            let resolved = record.status != Status::Pending;
            let outcome = self.inner.update(expected_version, record, audit).await?;
            if resolved && outcome == Update::Applied {
                self.lock().pending.remove(&id);
            }
            Ok(outcome)
        })
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        self.inner.list(status)
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        self.inner.audit(id)
    }

    fn list_page(
        &self,
        status: Option<Status>,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<'_, Page> {
        self.inner.list_page(status, after, limit)
    }

    fn count(&self, status: Status) -> StoreFuture<'_, usize> {
        self.inner.count(status)
    }

    fn purge(&self, created_before: SystemTime) -> StoreFuture<'_, usize> {
        self.inner.purge(created_before)
    }

    fn watch(&self, id: &EscalationId) -> Option<ChangeFuture> {
        self.inner.watch(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tower_llm_resilience::escalation::store::to_unix_ms;
    use tower_llm_resilience::escalation::{AuditAction, MemoryStore};

    const HOUR: Duration = Duration::from_secs(3600);

    /// A pending record created `age` ago, expiring `left` from now.
    fn record(id: &str, age: Duration, left: Duration) -> EscalationRecord {
        let now = SystemTime::now();
        serde_json::from_value(json!({
            "id": id, "version": 0, "stage": "request", "mode": "detach",
            "reason": "needs a human", "request": {"method": "POST"}, "result": null,
            "created_at": to_unix_ms(now - age), "expires_at": to_unix_ms(now + left),
            "status": "pending", "resolution": null, "token_hash": "00".repeat(32),
            "used_at": null,
            "notification": {"attempts": 0, "delivered": null, "last_error": null}
        }))
        .expect("a valid record")
    }

    fn created(record: &EscalationRecord) -> AuditEntry {
        let reason = record.reason.clone();
        AuditEntry::new(
            record.id.clone(),
            record.created_at,
            "system",
            AuditAction::Created { reason },
        )
    }

    /// Within a minute of `expected` (the test's own run time).
    fn about(age: Duration, expected: Duration) -> bool {
        age >= expected && age < expected + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn the_oldest_pending_age_follows_creations_resolutions_and_expiries() {
        let store = CappedStore::new(MemoryStore::new(), 10, 10, 24 * HOUR);
        assert_eq!(store.oldest_pending_age(), Duration::ZERO);
        let old = record("old", 3 * HOUR, HOUR);
        let newer = record("newer", HOUR, HOUR);
        let stale = record("stale", 5 * HOUR, Duration::ZERO);
        for r in [&old, &newer, &stale] {
            store.insert(r.clone(), created(r)).await.unwrap();
        }
        // The expired one does not count, however old.
        assert!(
            about(store.oldest_pending_age(), 3 * HOUR),
            "{:?}",
            store.oldest_pending_age()
        );
        assert_eq!(store.pending(), 2);
        // Resolving the oldest leaves the next one.
        let mut resolved = old.clone();
        resolved.status = Status::Approved;
        let audit = created(&resolved);
        assert_eq!(
            store.update(0, resolved, audit).await.unwrap(),
            Update::Applied
        );
        assert!(
            about(store.oldest_pending_age(), HOUR),
            "{:?}",
            store.oldest_pending_age()
        );
        // A re-read from the store keeps the creation times.
        store.sync().await.unwrap();
        assert!(
            about(store.oldest_pending_age(), HOUR),
            "{:?}",
            store.oldest_pending_age()
        );
    }
}
