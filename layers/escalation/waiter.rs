//! Wait mode: a call waiting for its human, released at shutdown, or abandoned
//! when its caller goes away.
//!
//! Three rules keep the waiter and the record in agreement:
//!
//! - The waiter's deadline is the instant its record expires (one clock reading), and
//!   a listing in this process never expires a record whose waiter is still here: the
//!   waiter applies its timeout default at that instant instead.
//! - A waiter whose future is dropped marks its record [`Status::Abandoned`] (in a
//!   background task; until it lands, resolutions are refused from memory), so no
//!   approval is audited for a call that will never run.
//! - [`Handle::release_waiters`](super::Handle::release_waiters) ends every wait at
//!   once with [`EscalationError::Released`] and a fresh token; the record becomes
//!   resumable like a detached one.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::engine::{contention, lock, NewEscalation, Shared, MAX_CONFLICTS, SYSTEM};
use super::error::{EscalationError, ResolveError, StoreError};
use super::id::EscalationId;
use super::record::{AuditAction, AuditEntry, Decision, EscalationRecord};
use super::record::{ModeKind, Resolution, Status};
use super::slot::WaiterSlot;
use super::store::Update;
use super::token::{self, TokenHash};

impl Shared {
    /// Creates a wait-mode escalation and waits for a human up to its expiry; then
    /// applies `default`. Resolutions made through a `Handle` of this process wake
    /// the waiter at once; others (another process sharing the store) wake it
    /// through the store's [`watch`](super::EscalationStore::watch) if it has one,
    /// and are seen at the next `poll_interval` in any case.
    pub(crate) async fn create_and_wait(
        self: &Arc<Self>,
        new: NewEscalation,
        default: &Decision,
        poll_interval: Duration,
    ) -> Result<EscalationRecord, EscalationError> {
        let id = token::new_id().map_err(EscalationError::Random)?;
        let slot = Arc::new(WaiterSlot::default());
        // Registered before the insert, so no listing can expire the record first.
        lock(&self.waiters).insert(id.clone(), slot.clone());
        let mut guard = WaiterGuard {
            shared: self.clone(),
            id: id.clone(),
            armed: true,
        };
        let record = match self.insert_new(id.clone(), new, None).await {
            Ok(record) => record,
            Err(error) => {
                guard.armed = false;
                return Err(error);
            }
        };
        let deadline = self.clock.instant_at(record.expires_at);
        loop {
            let mut notified = pin!(slot.notify.notified());
            notified.as_mut().enable();
            if slot.released.load(Ordering::Acquire) {
                guard.armed = false;
                return self.release(&id).await;
            }
            // Started before the read, so a change right after it is not missed.
            let mut changed = self.store.watch(&id);
            let current = self
                .store
                .get(&id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            match current.status {
                Status::Pending => {}
                // Expired by another process's listing: the wait is over.
                Status::Expired => break,
                _ => {
                    guard.armed = false;
                    return Ok(current);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let next_poll = now.checked_add(poll_interval).unwrap_or(deadline);
            let mut tick = pin!(tokio::time::sleep_until(deadline.min(next_poll)));
            poll_fn(|cx| {
                let remote = changed
                    .as_mut()
                    .is_some_and(|changed| changed.as_mut().poll(cx).is_ready());
                if remote
                    || notified.as_mut().poll(cx).is_ready()
                    || tick.as_mut().poll(cx).is_ready()
                {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
        guard.armed = false;
        let resolved = self
            .resolve(&id, default.clone(), Resolution::TIMEOUT_DEFAULT, true)
            .await;
        match resolved {
            Ok(record) => Ok(record),
            Err(ResolveError::AlreadyResolved(record)) => Ok(*record),
            Err(ResolveError::Expired(id) | ResolveError::Abandoned(id)) => {
                Err(EscalationError::Expired { id })
            }
            Err(ResolveError::NotFound(id)) => Err(StoreError::NotFound(id).into()),
            Err(ResolveError::Store(e)) => Err(e.into()),
        }
    }

    /// Ends every wait of this process at once; returns how many were waiting.
    pub(crate) fn release_waiters(&self) -> usize {
        let waiters = lock(&self.waiters);
        for slot in waiters.values() {
            slot.released.store(true, Ordering::Release);
            slot.notify.notify_waiters();
        }
        waiters.len()
    }

    /// Turns a waiting record into a detached one with a fresh token. A resolution
    /// that landed first wins: it is returned instead.
    async fn release(&self, id: &EscalationId) -> Result<EscalationRecord, EscalationError> {
        let resume_token = token::new_token(id).map_err(EscalationError::Random)?;
        for _ in 0..MAX_CONFLICTS {
            let current = self
                .store
                .get(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            if current.status != Status::Pending {
                return Ok(current);
            }
            let mut next = current.clone();
            next.mode = ModeKind::Detach;
            next.token_hash = Some(TokenHash::of(&resume_token));
            next.version += 1;
            let audit =
                AuditEntry::new(id.clone(), self.clock.now(), SYSTEM, AuditAction::Released);
            if self.store.update(current.version, next, audit).await? == Update::Applied {
                metrics::counter!("escalation_released_total").increment(1);
                tracing::info!(escalation_id = %id, "wait released: resumable with a token");
                return Err(EscalationError::Released {
                    id: id.clone(),
                    resume_token,
                });
            }
        }
        Err(contention().into())
    }

    /// Marks a wait-mode record whose caller went away (no-op once it is resolved).
    async fn abandon(&self, id: &EscalationId) -> Result<(), StoreError> {
        for _ in 0..MAX_CONFLICTS {
            let Some(current) = self.store.get(id).await? else {
                return Ok(());
            };
            if current.status != Status::Pending || current.mode != ModeKind::Wait {
                return Ok(());
            }
            let mut next = current.clone();
            next.status = Status::Abandoned;
            next.version += 1;
            let audit =
                AuditEntry::new(id.clone(), self.clock.now(), SYSTEM, AuditAction::Abandoned);
            if self.store.update(current.version, next, audit).await? == Update::Applied {
                metrics::counter!("escalation_abandoned_total").increment(1);
                tracing::info!(escalation_id = %id, "waiting caller went away: escalation abandoned");
                return Ok(());
            }
        }
        Err(contention())
    }
}

/// Unregisters a waiter; if its future was dropped mid-wait, abandons the record.
struct WaiterGuard {
    shared: Arc<Shared>,
    id: EscalationId,
    armed: bool,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        lock(&self.shared.waiters).remove(&self.id);
        if !self.armed {
            return;
        }
        // Refused from memory at once; written to the store in the background (a
        // destructor cannot wait). Without a runtime the process is going away and
        // the record simply expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        lock(&self.shared.abandoning).insert(self.id.clone());
        let shared = self.shared.clone();
        let id = self.id.clone();
        runtime.spawn(async move {
            if let Err(error) = shared.abandon(&id).await {
                tracing::warn!(escalation_id = %id, %error, "could not mark an abandoned escalation");
            }
            lock(&shared.abandoning).remove(&id);
        });
    }
}
