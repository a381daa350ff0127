//! Operators' actions (an escalation resolved, a circuit forced, a sign-in, a
//! test prompt): always logged on the `llm_proxy::audit` target; with `[state]
//! postgres_url`, also kept in PostgreSQL's audit log (`tower_llm_audit_log`,
//! shared by every proxy on the database), read at `GET /v1/admin/audit`.
//!
//! Events are kept 400 days (a year and a bit, for yearly reviews), then pruned.
//! Writing never slows the action: events go through a bounded queue to a
//! writer task; a full queue or a failed write drops the event from the table
//! (it is in the log already) and counts it (`llm_proxy_audit_dropped_total`).

use tokio::sync::mpsc;
use tower_llm_resilience::postgres::{AuditEvent, PostgresAuditLog};

use crate::postgres_state::PostgresState;

/// How long events are kept in the table (older ones are pruned every minute).
pub(crate) const RETENTION: std::time::Duration = std::time::Duration::from_secs(400 * 24 * 3600);

/// Events waiting to be written, at most.
const QUEUE: usize = 1024;

/// Where operators' actions are kept besides the log.
pub(crate) struct AuditTrail {
    table: Option<(mpsc::Sender<Message>, PostgresAuditLog)>,
}

/// What the writer receives.
enum Message {
    Event(AuditEvent),
    /// Answer once every event sent before is written (or dropped).
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("postgres", &self.table.is_some())
            .finish()
    }
}

impl AuditTrail {
    /// The trail of a proxy on `postgres` (`None`: the log only). Spawns the
    /// writer on the current runtime.
    pub(crate) fn new(postgres: Option<&PostgresState>) -> Self {
        let table = postgres.map(|pg| {
            let log = PostgresAuditLog::new(pg.pg());
            let (queue, events) = mpsc::channel(QUEUE);
            tokio::spawn(write(events, log.clone()));
            (queue, log)
        });
        Self { table }
    }

    /// Keep `action` by admin `actor` on `subject` (`detail`: more, as JSON
    /// text, or empty). The caller logs it on `llm_proxy::audit`.
    pub(crate) fn record(&self, actor: &str, action: &str, subject: &str, detail: String) {
        let Some((queue, _)) = &self.table else {
            return;
        };
        let event = AuditEvent {
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail,
        };
        if queue.try_send(Message::Event(event)).is_err() {
            metrics::counter!("llm_proxy_audit_dropped_total").increment(1);
        }
    }

    /// Waits until every event queued so far is written (a graceful stop's
    /// last step). Unbounded: the caller bounds it.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        let Some((queue, _)) = &self.table else {
            return Ok(());
        };
        crate::writer::flush(queue, Message::Flush, "audit writer").await
    }

    /// Events queued and not written yet.
    pub(crate) fn queued(&self) -> usize {
        self.table
            .as_ref()
            .map_or(0, |(queue, _)| crate::writer::queued(queue))
    }

    /// The table, if this proxy keeps one.
    pub(crate) fn log(&self) -> Option<&PostgresAuditLog> {
        self.table.as_ref().map(|(_, log)| log)
    }
}

async fn write(mut events: mpsc::Receiver<Message>, log: PostgresAuditLog) {
    while let Some(message) = events.recv().await {
        let event = match message {
            Message::Event(event) => event,
            Message::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        if let Err(e) = log.append(&event).await {
            tracing::warn!(error = %e, action = %event.action, "audit event not written to postgres");
            metrics::counter!("llm_proxy_audit_dropped_total").increment(1);
        }
    }
}
