//! The state shared by a layer's services and its `Handle`, and the rules on top of
//! the store's compare-and-swap: first resolution wins, single use, expiry.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::clock::Clock;
use super::error::{EscalationError, ResolveError, StoreError};
use super::id::EscalationId;
use super::notify::{Notifier, NotifyRetry};
use super::record::{
    AuditAction, AuditEntry, Decision, EscalationRecord, ModeKind, Resolution, Stage, Status,
};
use super::slot::WaiterSlot;
use super::store::{EscalationStore, Update};
use super::token::{self, ResumeToken, TokenHash};

/// Actor name of changes the library makes itself.
pub(crate) const SYSTEM: &str = "system";
/// Give up on a compare-and-swap after this many conflicts in a row.
pub(crate) const MAX_CONFLICTS: usize = 64;

/// What to create.
pub(crate) struct NewEscalation {
    pub(crate) stage: Stage,
    pub(crate) mode: ModeKind,
    pub(crate) reason: String,
    pub(crate) request: serde_json::Value,
    pub(crate) fingerprint: Option<String>,
    pub(crate) result: Option<serde_json::Value>,
    pub(crate) ttl: Duration,
}

type Parked = (SystemTime, Box<dyn Any + Send>);

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn EscalationStore>,
    pub(crate) notifier: Option<Arc<dyn Notifier>>,
    pub(crate) retry: NotifyRetry,
    pub(crate) review_base: Option<String>,
    pub(crate) clock: Clock,
    /// Wait-mode calls of this process that are waiting now.
    pub(super) waiters: Mutex<HashMap<EscalationId, Arc<WaiterSlot>>>,
    /// Waiters that went away and whose record is being marked abandoned.
    pub(super) abandoning: Mutex<HashSet<EscalationId>>,
    parked: Mutex<HashMap<EscalationId, Parked>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("notifier", &self.notifier)
            .field("review_base", &self.review_base)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn EscalationStore>,
        notifier: Option<Arc<dyn Notifier>>,
        retry: NotifyRetry,
        review_base: Option<String>,
    ) -> Self {
        Self {
            store,
            notifier,
            retry,
            review_base,
            clock: Clock::new(),
            waiters: Mutex::default(),
            abandoning: Mutex::default(),
            parked: Mutex::default(),
        }
    }

    /// Stores a new pending escalation, starts its notification, and returns it with
    /// its resume token (detach mode).
    pub(crate) async fn create(
        self: &Arc<Self>,
        new: NewEscalation,
    ) -> Result<(EscalationRecord, Option<ResumeToken>), EscalationError> {
        let id = token::new_id().map_err(EscalationError::Random)?;
        let token = match new.mode {
            ModeKind::Detach => Some(token::new_token(&id).map_err(EscalationError::Random)?),
            ModeKind::Wait => None,
        };
        let record = self.insert_new(id, new, token.as_ref()).await?;
        Ok((record, token))
    }

    /// Stores a new pending escalation with id `id` and starts its notification.
    pub(super) async fn insert_new(
        self: &Arc<Self>,
        id: EscalationId,
        new: NewEscalation,
        token: Option<&ResumeToken>,
    ) -> Result<EscalationRecord, EscalationError> {
        let now = self.clock.now();
        let record = EscalationRecord::pending(
            id.clone(),
            new.stage,
            new.mode,
            new.reason.clone(),
            new.request,
            new.fingerprint,
            new.result,
            now,
            new.ttl,
            token.map(TokenHash::of),
        );
        let audit = AuditEntry::new(
            id.clone(),
            now,
            SYSTEM,
            AuditAction::Created { reason: new.reason },
        );
        self.store.insert(record.clone(), audit).await?;
        metrics::counter!("escalation_created_total", "stage" => stage_label(new.stage), "mode" => mode_label(new.mode)).increment(1);
        tracing::info!(escalation_id = %id, stage = stage_label(new.stage), mode = mode_label(new.mode), reason = %record.reason, "escalated to a human");
        self.spawn_notification(&record);
        Ok(record)
    }

    /// First resolution wins. With `by_timeout`, the configured default is being
    /// applied at the deadline, so expiry does not stop it.
    pub(crate) async fn resolve(
        &self,
        id: &EscalationId,
        decision: Decision,
        by: &str,
        by_timeout: bool,
    ) -> Result<EscalationRecord, ResolveError> {
        for _ in 0..MAX_CONFLICTS {
            let now = self.clock.now();
            let Some(current) = self.store.get(id).await? else {
                return Err(ResolveError::NotFound(id.clone()));
            };
            let status = if by_timeout {
                current.status
            } else {
                current.status_at(now)
            };
            match status {
                Status::Pending if !by_timeout && self.is_abandoning(id) => {
                    return Err(ResolveError::Abandoned(id.clone()))
                }
                Status::Pending => {}
                // A wait-mode record expires when its wait times out; if another
                // process listed it in between, its waiter's default still applies.
                Status::Expired
                    if by_timeout
                        && current.mode == ModeKind::Wait
                        && current.resolution.is_none() => {}
                Status::Abandoned => return Err(ResolveError::Abandoned(id.clone())),
                Status::Expired => {
                    self.mark_expired(&current).await?;
                    return Err(ResolveError::Expired(id.clone()));
                }
                _ => return Err(ResolveError::AlreadyResolved(Box::new(current))),
            }
            let resolution = Resolution {
                decision: decision.clone(),
                resolved_by: by.to_owned(),
                resolved_at: now,
            };
            let mut next = current.clone();
            next.status = decision.status();
            next.resolution = Some(resolution.clone());
            next.version += 1;
            let action = if by_timeout {
                AuditAction::TimeoutDefault { resolution }
            } else {
                AuditAction::Resolved { resolution }
            };
            let audit = AuditEntry::new(id.clone(), now, by, action);
            if self
                .store
                .update(current.version, next.clone(), audit)
                .await?
                == Update::Applied
            {
                metrics::counter!("escalation_resolved_total", "status" => next.status.as_str(), "by_timeout" => if by_timeout { "true" } else { "false" }).increment(1);
                tracing::info!(escalation_id = %id, status = next.status.as_str(), by_timeout, "escalation resolved");
                self.wake(id);
                return Ok(next);
            }
        }
        Err(contention().into())
    }

    /// Writes `Expired` on a pending record past its expiry (no-op otherwise). A
    /// wait-mode record with a waiter in this process is left to that waiter, which
    /// applies its timeout default at the same instant.
    /// Returns whether the record is (now) expired in the store.
    pub(crate) async fn mark_expired(
        &self,
        current: &EscalationRecord,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now();
        if current.status_at(now) != Status::Expired || current.status != Status::Pending {
            return Ok(current.status == Status::Expired);
        }
        if current.mode == ModeKind::Wait && lock(&self.waiters).contains_key(&current.id) {
            return Ok(false);
        }
        let mut next = current.clone();
        next.status = Status::Expired;
        next.version += 1;
        let audit = AuditEntry::new(current.id.clone(), now, SYSTEM, AuditAction::Expired);
        if self.store.update(current.version, next, audit).await? == Update::Applied {
            metrics::counter!("escalation_expired_total").increment(1);
            tracing::info!(escalation_id = %current.id, "escalation expired unresolved");
            self.wake(&current.id);
            return Ok(true);
        }
        Ok(false)
    }

    /// Checks a resume token and uses it up: the resolved record, once.
    pub(crate) async fn redeem(
        &self,
        token: &ResumeToken,
        fingerprint: Option<&str>,
    ) -> Result<EscalationRecord, EscalationError> {
        let result = self.redeem_inner(token, fingerprint).await;
        let outcome = match &result {
            Ok(_) => "resumed",
            Err(EscalationError::StillPending { .. }) => "still_pending",
            Err(EscalationError::Expired { .. }) => "expired",
            Err(EscalationError::AlreadyUsed { .. }) => "already_used",
            Err(EscalationError::InvalidToken) => "invalid_token",
            Err(EscalationError::RequestMismatch { .. }) => "request_mismatch",
            Err(_) => "error",
        };
        metrics::counter!("escalation_resume_total", "outcome" => outcome).increment(1);
        tracing::debug!(escalation_id = ?token.escalation_id().map(|id| id.to_string()), outcome, "resume attempt");
        result
    }

    async fn redeem_inner(
        &self,
        token: &ResumeToken,
        fingerprint: Option<&str>,
    ) -> Result<EscalationRecord, EscalationError> {
        let id = token.escalation_id().ok_or(EscalationError::InvalidToken)?;
        for _ in 0..MAX_CONFLICTS {
            let now = self.clock.now();
            let record = self
                .store
                .get(&id)
                .await?
                .ok_or(EscalationError::InvalidToken)?;
            match &record.token_hash {
                Some(hash) if token.matches(hash) => {}
                _ => return Err(EscalationError::InvalidToken),
            }
            // Checked before anything is written: a mismatch never uses the token up.
            if let Some(expected) = &record.request_fingerprint {
                if fingerprint != Some(expected.as_str()) {
                    tracing::warn!(escalation_id = %id, "resume refused: not the escalated request");
                    return Err(EscalationError::RequestMismatch { id });
                }
            }
            if record.used_at.is_some() {
                return Err(EscalationError::AlreadyUsed { id });
            }
            if record.is_expired_at(now) || record.status == Status::Expired {
                self.mark_expired(&record).await?;
                self.unpark(&id);
                return Err(EscalationError::Expired { id });
            }
            if record.status == Status::Pending {
                return Err(EscalationError::StillPending {
                    id,
                    expires_at: record.expires_at,
                });
            }
            let mut next = record.clone();
            next.used_at = Some(now);
            next.version += 1;
            let audit = AuditEntry::new(id.clone(), now, "caller", AuditAction::Resumed);
            if self
                .store
                .update(record.version, next.clone(), audit)
                .await?
                == Update::Applied
            {
                return Ok(next);
            }
        }
        Err(contention().into())
    }

    pub(super) fn wake(&self, id: &EscalationId) {
        if let Some(slot) = lock(&self.waiters).get(id) {
            slot.notify.notify_waiters();
        }
    }

    pub(super) fn is_abandoning(&self, id: &EscalationId) -> bool {
        lock(&self.abandoning).contains(id)
    }

    /// Keeps a response under review (detach mode) so an approval can return it.
    pub(crate) fn park(
        &self,
        id: EscalationId,
        expires_at: SystemTime,
        response: Box<dyn Any + Send>,
    ) {
        let now = self.clock.now();
        let mut parked = lock(&self.parked);
        parked.retain(|_, (expires_at, _)| *expires_at > now);
        parked.insert(id, (expires_at, response));
    }

    pub(crate) fn unpark(&self, id: &EscalationId) -> Option<Box<dyn Any + Send>> {
        lock(&self.parked).remove(id).map(|(_, response)| response)
    }
}

pub(crate) fn contention() -> StoreError {
    StoreError::Backend("escalation store: too many concurrent changes to one record".into())
}

pub(crate) const fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Request => "request",
        Stage::Response => "response",
    }
}

const fn mode_label(mode: ModeKind) -> &'static str {
    match mode {
        ModeKind::Wait => "wait",
        ModeKind::Detach => "detach",
    }
}
