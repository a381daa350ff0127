use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::{EscalationStore, StoreFuture, Update};
use crate::escalation::error::StoreError;
use crate::escalation::id::EscalationId;
use crate::escalation::record::{AuditEntry, EscalationRecord, Status};

/// An in-process store: fast, shared by every clone of one layer, gone on restart.
///
/// For tests, a single process, or escalations that may be lost with the process.
/// Use [`SqliteStore`](super::SqliteStore) (feature `sqlite`) to survive restarts.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<EscalationId, EscalationRecord>,
    audit: Vec<AuditEntry>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change: every
        // change below is a single insert or push after all checks.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EscalationStore for MemoryStore {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        let result = {
            let mut inner = self.lock();
            if inner.records.contains_key(&record.id) {
                Err(StoreError::Duplicate(record.id))
            } else {
                inner.records.insert(record.id.clone(), record);
                inner.audit.push(audit);
                Ok(())
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        let record = self.lock().records.get(id).cloned();
        Box::pin(std::future::ready(Ok(record)))
    }

    fn update(
        &self,
        expected_version: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        let outcome = {
            let mut inner = self.lock();
            match inner.records.get_mut(&record.id) {
                Some(current) if current.version == expected_version => {
                    *current = record;
                    inner.audit.push(audit);
                    Update::Applied
                }
                current => Update::Conflict(current.map(|r| Box::new(r.clone()))),
            }
        };
        Box::pin(std::future::ready(Ok(outcome)))
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        let mut records: Vec<_> = self
            .lock()
            .records
            .values()
            .filter(|r| status.is_none_or(|s| r.status == s))
            .cloned()
            .collect();
        records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Box::pin(std::future::ready(Ok(records)))
    }

    fn count(&self, status: Status) -> StoreFuture<'_, usize> {
        let count = self
            .lock()
            .records
            .values()
            .filter(|r| r.status == status)
            .count();
        Box::pin(std::future::ready(Ok(count)))
    }

    fn purge(&self, created_before: SystemTime) -> StoreFuture<'_, usize> {
        let purged = {
            let mut inner = self.lock();
            let before = inner.records.len();
            inner.records.retain(|_, r| r.created_at >= created_before);
            let Inner { records, audit } = &mut *inner;
            audit.retain(|e| records.contains_key(&e.escalation_id));
            before - records.len()
        };
        Box::pin(std::future::ready(Ok(purged)))
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        let entries = self
            .lock()
            .audit
            .iter()
            .filter(|e| id.is_none_or(|id| &e.escalation_id == id))
            .cloned()
            .collect();
        Box::pin(std::future::ready(Ok(entries)))
    }
}
