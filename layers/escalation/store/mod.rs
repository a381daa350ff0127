//! Where escalations live: a small trait, an in-memory store, and SQLite.
//!
//! The trait is a versioned compare-and-swap over whole records plus an append-only
//! audit trail. All the rules (first resolution wins, single use, expiry) are built on
//! top of [`EscalationStore::update`] by the layer and the [`Handle`](super::Handle),
//! so a store only has to make one thing atomic: "replace this record if its version
//! is still `expected_version`, and append this audit entry with it".
//!
//! That maps onto SQLite (`UPDATE .. WHERE version = ?` in a transaction), Redis (a
//! `WATCH`/`MULTI` or a Lua script that compares the version field, then `RPUSH`es
//! the audit entry), or any SQL database.
//!
//! The layer's users need only [`MemoryStore`] or [`SqliteStore`] (re-exported by
//! [`escalation`](super)); the rest of this module is for writing a backend.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use super::error::StoreError;
use super::id::EscalationId;
use super::record::{AuditEntry, EscalationRecord, Status};

mod memory;
mod page;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use self::memory::MemoryStore;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use self::page::unreadable as store_unreadable;
pub use self::page::{Cursor, Page};
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteStore;
pub use super::record::{from_unix_ms, to_unix_ms};

/// The boxed future every store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The future [`EscalationStore::watch`] returns: completes when a record may have
/// changed.
pub type ChangeFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The result of [`EscalationStore::update`].
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// The record was replaced and the audit entry appended.
    Applied,
    /// Nothing changed: the stored version was not the expected one. Carries the
    /// record as it is now (`None` if it does not exist).
    Conflict(Option<Box<EscalationRecord>>),
}

/// Storage for escalation records and their audit trail.
///
/// Contract (the store-contract tests in `tests/escalation_store.rs` check it for
/// every store):
///
/// - [`insert`](Self::insert) adds a new record and its audit entry, or fails with
///   [`StoreError::Duplicate`] if the id exists.
/// - [`update`](Self::update) replaces the record with id `record.id` **only if** its
///   stored `version` equals `expected_version`, appending `audit` in the same atomic
///   step; otherwise it changes nothing and returns [`Update::Conflict`]. Two racing
///   updates from the same version: exactly one is applied.
/// - [`get`](Self::get) and [`list`](Self::list) return records exactly as written
///   (times have millisecond precision); `list` orders by creation time, then id.
/// - [`audit`](Self::audit) returns entries in the order they were appended.
/// - Stores never interpret expiry: a pending record past `expires_at` is still
///   pending until the layer writes `Expired` (a backend may additionally drop
///   records long after expiry, for retention).
/// - A stored record that cannot be read back never fails a listing: it is
///   skipped, logged and counted (`escalation_store_unreadable_total`), and every
///   other record stays listed and resolvable.
/// - [`list_page`](Self::list_page) returns at most `limit` records in the order of
///   `list`, starting after the cursor; following `next` visits each record once.
/// - [`count`](Self::count) counts records with a status without reading them.
/// - [`purge`](Self::purge) removes records created before a time, with their
///   audit trail, whatever their status (retention).
pub trait EscalationStore: Send + Sync + fmt::Debug + 'static {
    /// Adds a new record (version 0) with its creation audit entry.
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()>;

    /// The record with this id.
    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>>;

    /// Compare-and-swap on the version, plus an audit entry, atomically.
    fn update(
        &self,
        expected_version: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update>;

    /// Records with this status (all when `None`), oldest first.
    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>>;

    /// The audit trail of one escalation, or of all when `None`, in append order.
    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>>;

    /// At most `limit` records with this status (all when `None`), oldest first,
    /// starting just after `after`.
    ///
    /// The default reads the whole listing and cuts it; stores with an index
    /// override it.
    fn list_page(
        &self,
        status: Option<Status>,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<'_, Page> {
        Box::pin(async move {
            let all = self.list(status).await?;
            Ok(page_of(all, after.as_ref(), limit))
        })
    }

    /// How many records have this status.
    ///
    /// The default reads the whole listing; stores with an index override it.
    fn count(&self, status: Status) -> StoreFuture<'_, usize> {
        Box::pin(async move { Ok(self.list(Some(status)).await?.len()) })
    }

    /// Removes every record created before `created_before` (any status), with
    /// its audit trail; returns how many records went.
    ///
    /// The default removes nothing: for stores that expire records on their own
    /// (the Redis store keeps each one for a retention period after it expires).
    fn purge(&self, created_before: SystemTime) -> StoreFuture<'_, usize> {
        let _ = created_before;
        Box::pin(std::future::ready(Ok(0)))
    }

    /// A wake-up for waiters: a future that completes when the record `id` may
    /// have changed, including through another process sharing the store (e.g.
    /// Redis pub/sub). The watch starts when this method returns, so a change made
    /// before the future is first polled still completes it. Completing without a
    /// change is allowed (the waiter reads the record again); never completing is
    /// allowed too, since waiters also poll.
    ///
    /// The default returns `None`: the store cannot tell, and a wait-mode call sees
    /// resolutions made by other processes at its next poll.
    fn watch(&self, id: &EscalationId) -> Option<ChangeFuture> {
        let _ = id;
        None
    }
}

impl<T: EscalationStore + ?Sized> EscalationStore for Arc<T> {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        (**self).insert(record, audit)
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        (**self).get(id)
    }

    fn update(
        &self,
        expected_version: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        (**self).update(expected_version, record, audit)
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        (**self).list(status)
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        (**self).audit(id)
    }

    fn list_page(
        &self,
        status: Option<Status>,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<'_, Page> {
        (**self).list_page(status, after, limit)
    }

    fn count(&self, status: Status) -> StoreFuture<'_, usize> {
        (**self).count(status)
    }

    fn purge(&self, created_before: SystemTime) -> StoreFuture<'_, usize> {
        (**self).purge(created_before)
    }

    fn watch(&self, id: &EscalationId) -> Option<ChangeFuture> {
        (**self).watch(id)
    }
}

/// A [`ChangeFuture`] for `id` over a channel of changes heard from other
/// instances (`Some(id)`: that record changed; `None`: anything may have, e.g.
/// after a reconnection). Missed messages wake it too.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn watch_changes(
    mut changes: tokio::sync::broadcast::Receiver<Option<EscalationId>>,
    id: EscalationId,
) -> ChangeFuture {
    use tokio::sync::broadcast::error::RecvError;
    Box::pin(async move {
        loop {
            match changes.recv().await {
                Ok(Some(changed)) if changed != id => continue,
                Ok(_) | Err(RecvError::Lagged(_)) => return,
                Err(RecvError::Closed) => std::future::pending().await,
            }
        }
    })
}

/// The page of `records` (in `list` order) after `after`, at most `limit` long.
pub(crate) fn page_of(
    records: Vec<EscalationRecord>,
    after: Option<&Cursor>,
    limit: usize,
) -> Page {
    let mut records: Vec<EscalationRecord> = records
        .into_iter()
        .filter(|r| {
            after.is_none_or(|c| c.precedes(super::record::to_unix_ms(r.created_at), &r.id))
        })
        .take(limit.saturating_add(1))
        .collect();
    let next = if records.len() > limit {
        records.truncate(limit);
        records.last().map(Cursor::after)
    } else {
        None
    };
    Page {
        records,
        next,
        unreadable: 0,
    }
}
