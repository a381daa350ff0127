//! Runs a notifier in the background, retries it, records the outcome.

use std::sync::Arc;

use crate::escalation::engine::{contention, Shared, MAX_CONFLICTS, SYSTEM};
use crate::escalation::error::StoreError;
use crate::escalation::id::EscalationId;
use crate::escalation::notify::{Notification, Notifier, NotifyError};
use crate::escalation::record::{AuditAction, AuditEntry, EscalationRecord, NotificationState};
use crate::escalation::store::Update;

impl Shared {
    pub(crate) fn spawn_notification(self: &Arc<Self>, record: &EscalationRecord) {
        let Some(notifier) = self.notifier.clone() else {
            return;
        };
        let notification = Notification::for_record(record, self.review_base.as_deref());
        let shared = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { shared.deliver(&*notifier, notification).await });
            }
            Err(_) => {
                tracing::warn!(escalation_id = %record.id, "no tokio runtime: notification not sent")
            }
        }
    }

    async fn deliver(&self, notifier: &dyn Notifier, notification: Notification) {
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let result =
                tokio::time::timeout(self.retry.attempt_timeout(), notifier.notify(&notification))
                    .await
                    .unwrap_or(Err(NotifyError::TimedOut));
            match result {
                Ok(()) => break Ok(()),
                Err(e) if attempt >= self.retry.attempts() => break Err(e),
                Err(e) => {
                    tracing::debug!(escalation_id = %notification.id, attempt, error = %e, "notification attempt failed");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
            }
        };
        let (state, action) = match outcome {
            Ok(()) => {
                metrics::counter!("escalation_notifications_total", "outcome" => "delivered")
                    .increment(1);
                tracing::info!(escalation_id = %notification.id, attempts = attempt, "notification delivered");
                let state = NotificationState {
                    attempts: attempt,
                    delivered: Some(true),
                    last_error: None,
                };
                (
                    state,
                    AuditAction::NotificationDelivered { attempts: attempt },
                )
            }
            Err(e) => {
                metrics::counter!("escalation_notifications_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(escalation_id = %notification.id, attempts = attempt, error = %e, "notification failed; escalation stays pending");
                let error = e.to_string();
                let state = NotificationState {
                    attempts: attempt,
                    delivered: Some(false),
                    last_error: Some(error.clone()),
                };
                (
                    state,
                    AuditAction::NotificationFailed {
                        attempts: attempt,
                        error,
                    },
                )
            }
        };
        if let Err(e) = self.set_notification(&notification.id, state, action).await {
            tracing::error!(escalation_id = %notification.id, error = %e, "could not record the notification outcome");
        }
    }

    async fn set_notification(
        &self,
        id: &EscalationId,
        state: NotificationState,
        action: AuditAction,
    ) -> Result<(), StoreError> {
        for _ in 0..MAX_CONFLICTS {
            let Some(current) = self.store.get(id).await? else {
                return Err(StoreError::NotFound(id.clone()));
            };
            let mut next = current.clone();
            next.notification = state.clone();
            next.version += 1;
            let audit = AuditEntry::new(id.clone(), self.clock.now(), SYSTEM, action.clone());
            if self.store.update(current.version, next, audit).await? == Update::Applied {
                return Ok(());
            }
        }
        Err(contention())
    }
}
