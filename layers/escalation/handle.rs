use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::engine::Shared;
use super::error::{ResolveError, StoreError};
use super::id::EscalationId;
use super::notify::NotifyRetry;
use super::record::{AuditEntry, Decision, EscalationRecord, Status};
use super::store::EscalationStore;

/// For humans and tools (a review page, a CLI, a Slack bot): list, inspect and
/// resolve escalations, and read the audit trail.
///
/// Get one from [`EscalationLayer::handle`](super::EscalationLayer::handle) to share
/// the layer's state (a resolution then wakes a waiting call at once), or make one
/// over a store with [`Handle::new`] in another process (waiting calls then see the
/// resolution at their next poll). Every resolution names who made it and is written
/// to the audit trail in the same atomic step. The first resolution wins; later ones
/// fail with [`ResolveError::AlreadyResolved`].
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("store", &self.shared.store)
            .finish()
    }
}

impl Handle {
    /// A handle over a store, not attached to any layer.
    pub fn new(store: impl EscalationStore) -> Self {
        Self::from_shared(Arc::new(Shared::new(
            Arc::new(store),
            None,
            NotifyRetry::default(),
            None,
        )))
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The store behind this handle.
    pub fn store(&self) -> &Arc<dyn EscalationStore> {
        &self.shared.store
    }

    /// Pending escalations, oldest first. Those past their expiry are marked
    /// expired on the way and left out.
    pub async fn list_pending(&self) -> Result<Vec<EscalationRecord>, StoreError> {
        let now = self.shared.clock.now();
        let mut pending = Vec::new();
        for record in self.shared.store.list(Some(Status::Pending)).await? {
            if record.is_expired_at(now) {
                self.shared.mark_expired(&record).await?;
            } else {
                pending.push(record);
            }
        }
        Ok(pending)
    }

    /// Every escalation with this status (all when `None`), oldest first, as stored.
    pub async fn list(&self, status: Option<Status>) -> Result<Vec<EscalationRecord>, StoreError> {
        self.shared.store.list(status).await
    }

    /// One escalation. A pending one past its expiry is marked expired first.
    pub async fn get(&self, id: &EscalationId) -> Result<Option<EscalationRecord>, StoreError> {
        let Some(record) = self.shared.store.get(id).await? else {
            return Ok(None);
        };
        if record.status_at(self.shared.clock.now()) == record.status {
            return Ok(Some(record));
        }
        self.shared.mark_expired(&record).await?;
        self.shared.store.get(id).await
    }

    /// Let the call go on (or return the reviewed response).
    pub async fn approve(
        &self,
        id: &EscalationId,
        by: &str,
    ) -> Result<EscalationRecord, ResolveError> {
        self.resolve(id, by, Decision::Approve).await
    }

    /// Refuse, with a reason the caller receives.
    pub async fn reject(
        &self,
        id: &EscalationId,
        by: &str,
        reason: impl Into<String>,
    ) -> Result<EscalationRecord, ResolveError> {
        self.resolve(
            id,
            by,
            Decision::Reject {
                reason: reason.into(),
            },
        )
        .await
    }

    /// Answer in the model's place: the payload becomes the response.
    pub async fn answer(
        &self,
        id: &EscalationId,
        by: &str,
        payload: Value,
    ) -> Result<EscalationRecord, ResolveError> {
        self.resolve(id, by, Decision::Answer { payload }).await
    }

    /// Resolve with any [`Decision`]. The first resolution wins.
    pub async fn resolve(
        &self,
        id: &EscalationId,
        by: &str,
        decision: Decision,
    ) -> Result<EscalationRecord, ResolveError> {
        self.shared.resolve(id, decision, by, false).await
    }

    /// Ends every wait-mode call of this process that is waiting now, at once: each
    /// returns [`EscalationError::Released`](super::EscalationError::Released) with a
    /// fresh resume token, and its escalation stays pending but becomes resumable
    /// like a detached one (resend the same request with the token once a human has
    /// resolved it, before the escalation's original expiry). With a durable store
    /// the decision can be picked up after a restart. Meant for graceful shutdown:
    /// call it when the process stops accepting work, then let in-flight calls
    /// finish. Calls that start waiting afterwards are not affected. A resolution
    /// that lands before a waiter is released wins: that call returns it as usual.
    ///
    /// Returns how many calls were waiting. The records are rewritten by the
    /// waiting calls themselves as they wake.
    pub fn release_waiters(&self) -> usize {
        self.shared.release_waiters()
    }

    /// Marks every pending escalation past its expiry as expired; returns their ids.
    pub async fn expire_due(&self) -> Result<Vec<EscalationId>, StoreError> {
        let now = self.shared.clock.now();
        let mut expired = Vec::new();
        for record in self.shared.store.list(Some(Status::Pending)).await? {
            if record.is_expired_at(now) && self.shared.mark_expired(&record).await? {
                expired.push(record.id);
            }
        }
        Ok(expired)
    }

    /// The audit trail of one escalation (all when `None`), oldest first.
    pub async fn audit(&self, id: Option<&EscalationId>) -> Result<Vec<AuditEntry>, StoreError> {
        self.shared.store.audit(id).await
    }
}
