//! Budget counters on PostgreSQL (the library's [`PostgresCounters`]): every
//! proxy on the database enforces one budget per client key.
//!
//! Keys are Redis's without the window, which is the counter's window column:
//! `{prefix}:budget:{client}:{spend|tokens|requests}` with `[state] prefix`.
//! Admitting is one round trip (read spend and tokens, add the request);
//! charging goes through a bounded queue to a task that adds in batches, off
//! the answer's path; the same task prunes expired counters at most once a
//! minute.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tower_llm_resilience::postgres::{CounterError, PgError, Postgres, PostgresCounters};

/// Charges waiting for the task, at most; past it a charge is dropped (and
/// counted in `llm_proxy_budget_errors_total`).
const CHARGE_QUEUE: usize = 10_000;
/// Charges one statement adds (two counters each, within the library's 1000).
const CHARGE_BATCH: usize = 500;
/// The least time between two prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The longest admission waits for the counters (as on Redis) before it
/// admits: a slow database does not hold every request for its own timeout.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a minute's counters live.
const MINUTE_TTL: Duration = Duration::from_secs(120);

fn key(prefix: &str, client: &str, counter: &str) -> String {
    format!("{prefix}:budget:{client}:{counter}")
}

fn window(window: u64) -> i64 {
    i64::try_from(window).unwrap_or(i64::MAX)
}

/// What the charging task receives.
enum Message {
    Charge(Charge),
    /// Answer once every charge sent before is added (or dropped).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What an answer used, to be added.
struct Charge {
    client: Arc<str>,
    spend_window: u64,
    minute: u64,
    tokens: u64,
    cost_nano_usd: u64,
    spend_ttl: Duration,
}

/// The counters, and the queue to the charging task.
pub(super) struct PostgresBudget {
    counters: PostgresCounters,
    prefix: String,
    charges: mpsc::Sender<Message>,
}

impl PostgresBudget {
    /// Counters on `pg` (migrated by the caller). Spawns the charging task on
    /// the current tokio runtime; never waits for Postgres.
    pub(super) fn open(pg: &Postgres, prefix: String) -> Self {
        let counters = PostgresCounters::new(pg);
        let (charges, receiver) = mpsc::channel(CHARGE_QUEUE);
        tokio::spawn(charge_task(receiver, counters.clone(), prefix.clone()));
        Self {
            counters,
            prefix,
            charges,
        }
    }

    fn key(&self, client: &str, counter: &str) -> String {
        key(&self.prefix, client, counter)
    }

    /// `(spent this period, tokens this minute, requests this minute with this
    /// one)`, adding `request` (0 or 1) to the minute's requests: one round trip,
    /// within [`ADMIT_TIMEOUT`].
    pub(super) async fn read_and_count(
        &self,
        client: &str,
        spend_window: u64,
        minute: u64,
        request: u64,
    ) -> Result<(u64, u64, u64), CounterError> {
        let (spend, tokens, requests) = (
            self.key(client, "spend"),
            self.key(client, "tokens"),
            self.key(client, "requests"),
        );
        let reads = [
            (spend.as_str(), window(spend_window)),
            (&tokens, window(minute)),
        ];
        // Without an `rpm` limit nothing is counted: a read, no write.
        let counted = async {
            if request == 0 {
                Ok((self.counters.read(&reads).await?, 0))
            } else {
                self.counters
                    .read_and_add(&reads, (&requests, window(minute), request, MINUTE_TTL))
                    .await
            }
        };
        let (read, requests) = tokio::time::timeout(ADMIT_TIMEOUT, counted)
            .await
            .map_err(|_| CounterError::Pg(PgError::Timeout(ADMIT_TIMEOUT)))??;
        let at = |i: usize| read.get(i).copied().unwrap_or(0);
        Ok((at(0), at(1), requests))
    }

    /// Queue what an answer used; a full queue drops it (logged and counted).
    pub(super) fn charge(
        &self,
        client: &Arc<str>,
        (spend_window, period_secs): (u64, u64),
        minute: u64,
        tokens: u64,
        cost_nano_usd: u64,
    ) {
        let charge = Charge {
            client: client.clone(),
            spend_window,
            minute,
            tokens,
            cost_nano_usd,
            spend_ttl: Duration::from_secs(period_secs.saturating_add(60)),
        };
        if self.charges.try_send(Message::Charge(charge)).is_err() {
            tracing::warn!("budget charges queue full; spend not counted");
            metrics::counter!("llm_proxy_budget_errors_total").increment(1);
        }
    }
}

impl PostgresBudget {
    /// Waits until every charge queued so far is added (or dropped by a failed
    /// write). Unbounded: the caller bounds it.
    pub(super) async fn flush(&self) -> Result<(), String> {
        crate::writer::flush(&self.charges, Message::Flush, "budget charging task").await
    }
}

/// Adds queued charges in batches; prunes expired counters once a minute.
async fn charge_task(
    mut receiver: mpsc::Receiver<Message>,
    counters: PostgresCounters,
    prefix: String,
) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut messages = Vec::with_capacity(CHARGE_BATCH);
    let mut batch = Vec::with_capacity(CHARGE_BATCH);
    let mut flushes = Vec::new();
    loop {
        tokio::select! {
            received = receiver.recv_many(&mut messages, CHARGE_BATCH) => {
                if received == 0 {
                    return;
                }
            }
            _ = prune.tick() => {
                match counters.prune_expired().await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::debug!(pruned, "expired budget counters pruned"),
                    Err(e) => tracing::warn!(error = %e, "budget counters not pruned"),
                }
                continue;
            }
        }
        for message in messages.drain(..) {
            match message {
                Message::Charge(charge) => batch.push(charge),
                Message::Flush(done) => flushes.push(done),
            }
        }
        let keys: Vec<(String, String)> = batch
            .iter()
            .map(|c| {
                (
                    key(&prefix, &c.client, "spend"),
                    key(&prefix, &c.client, "tokens"),
                )
            })
            .collect();
        let mut adds = Vec::with_capacity(2 * batch.len());
        for (charge, (spend, tokens)) in batch.iter().zip(&keys) {
            if charge.cost_nano_usd > 0 {
                adds.push((
                    spend.as_str(),
                    window(charge.spend_window),
                    charge.cost_nano_usd,
                    charge.spend_ttl,
                ));
            }
            if charge.tokens > 0 {
                adds.push((
                    tokens.as_str(),
                    window(charge.minute),
                    charge.tokens,
                    MINUTE_TTL,
                ));
            }
        }
        if !adds.is_empty() {
            if let Err(e) = counters.add_many(&adds).await {
                tracing::warn!(error = %e, charges = batch.len(), "budget spend not counted");
                metrics::counter!("llm_proxy_budget_errors_total").increment(batch.len() as u64);
            }
        }
        drop(adds);
        batch.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
