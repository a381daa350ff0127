//! The usage store on PostgreSQL (`[state] postgres_url_env`): every proxy on
//! it writes its records to one table (the library's
//! [`PostgresUsageStore`]), so `GET /v1/usage` on any proxy sees them all.
//!
//! Rows go through the bounded queue to a writer task that inserts them in
//! batches (rows of one second, client, model, tier and flags summed into one
//! record), off the request path; a batch that cannot be written is logged and
//! counted in `llm_proxy_usage_dropped_total`. The writer also applies the
//! retention (`usage.retention_secs`, `usage.max_records`), at most once a
//! minute.

use std::time::Duration;

use tokio::sync::mpsc;
use tower_llm_resilience::postgres::{Postgres, PostgresUsageStore, UsageQuery, UsageRow};

use super::{Group, Query, Row, Totals};

enum Message {
    Row(Row),
    /// Answer once every row sent before has been written (or dropped).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A queue to the writer task, and the store queries read.
pub(super) struct PostgresUsage {
    queue: mpsc::Sender<Message>,
    store: PostgresUsageStore,
}

/// Rows one insert takes, at most.
const BATCH: usize = 1000;
/// The longest a query waits for the records queued before it.
const FLUSH_WAIT: Duration = Duration::from_secs(5);
/// The least time between two prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl PostgresUsage {
    /// A store on `pg` (migrated by the caller). Spawns its writer on the
    /// current tokio runtime; never waits for Postgres.
    pub(super) fn open(pg: &Postgres, queue: usize, retention: Duration, max_records: u64) -> Self {
        let store = PostgresUsageStore::new(pg);
        let (sender, receiver) = mpsc::channel(queue.max(1));
        let retention_secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        tokio::spawn(write(receiver, store.clone(), retention_secs, max_records));
        Self {
            queue: sender,
            store,
        }
    }

    /// Waits until every row queued so far is written (or dropped by a failed
    /// write); waits for room in the queue first. Unbounded: the caller bounds it.
    pub(super) async fn flush(&self) -> Result<(), String> {
        crate::writer::flush(&self.queue, Message::Flush, "usage writer").await
    }

    /// Rows queued and not written yet.
    pub(super) fn queued(&self) -> usize {
        crate::writer::queued(&self.queue)
    }

    /// Queue `row`; `false` when the queue is full (the row is dropped).
    pub(super) fn record(&self, row: Row) -> bool {
        self.queue.try_send(Message::Row(row)).is_ok()
    }

    /// Wait until every row queued so far is written, then run `query`.
    pub(super) async fn query(
        &self,
        query: Query,
        max_groups: usize,
    ) -> Result<(Vec<Group>, Totals, bool), String> {
        // The records queued before this query are written first, within
        // FLUSH_WAIT: a slow database answers a 503, not a hang. The flush
        // takes a queue slot only when one is free (records keep priority).
        let (done, written) = tokio::sync::oneshot::channel();
        let flushed = async {
            self.queue
                .try_send(Message::Flush(done))
                .map_err(|_| "the usage queue is full: try again shortly".to_owned())?;
            written
                .await
                .map_err(|_| "the usage writer stopped".to_owned())
        };
        tokio::time::timeout(FLUSH_WAIT, flushed)
            .await
            .map_err(|_| "the usage records are not written yet: try again shortly".to_owned())??;
        let query = UsageQuery {
            from: query.from,
            to: query.to,
            client: query.client,
            by_client: query.by_client,
            by_model: query.by_model,
            by_day: query.by_day,
        };
        let report = self
            .store
            .query(&query, max_groups)
            .await
            .map_err(|e| e.to_string())?;
        let groups = report
            .groups
            .into_iter()
            .map(|group| Group {
                client: group.client,
                model: group.model,
                day: group.day,
                totals: totals(&group.totals),
            })
            .collect();
        Ok((groups, totals(&report.totals), report.truncated))
    }
}

fn totals(t: &tower_llm_resilience::postgres::UsageTotals) -> Totals {
    Totals {
        requests: t.requests,
        input_tokens: t.input_tokens,
        cached_input_tokens: t.cached_input_tokens,
        output_tokens: t.output_tokens,
        cost_nano_usd: t.cost_nano_usd,
        cached: t.cached,
        degraded: t.degraded,
        unpriced: t.unpriced,
    }
}

fn usage_row(row: Row) -> UsageRow {
    UsageRow {
        ts: row.ts,
        client: row.client.to_string(),
        model: row.model.to_string(),
        upstream_model: row.upstream_model.to_string(),
        tier: row.tier.to_string(),
        input_tokens: row.tokens.input_tokens,
        cached_input_tokens: row.tokens.cached_input_tokens,
        output_tokens: row.tokens.output_tokens,
        cost_nano_usd: row.cost.map(|c| c.nano_usd()),
        cached: row.cached,
        degraded: row.degraded,
    }
}

/// The writer: rows in batches of up to [`BATCH`], one insert each; the
/// retention at most once a minute (also when idle).
async fn write(
    mut receiver: mpsc::Receiver<Message>,
    store: PostgresUsageStore,
    retention_secs: i64,
    max_records: u64,
) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            received = receiver.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    return;
                }
            }
            _ = prune.tick() => {
                let before = super::unix_now().saturating_sub(retention_secs);
                match store.prune(before, max_records).await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::debug!(pruned, "usage records pruned"),
                    Err(e) => tracing::warn!(error = %e, "usage records not pruned"),
                }
                continue;
            }
        }
        let mut rows = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for message in batch.drain(..) {
            match message {
                Message::Row(row) => rows.push(usage_row(row)),
                Message::Flush(done) => flushes.push(done),
            }
        }
        if !rows.is_empty() {
            if let Err(e) = store.insert(&rows).await {
                tracing::warn!(error = %e, rows = rows.len(), "usage records not written to postgres");
                metrics::counter!("llm_proxy_usage_dropped_total").increment(rows.len() as u64);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
