//! The embedded usage store: SQLite, written by one thread in batches.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};

use super::{Group, Query, Row, Totals};
use crate::config::ConfigError;

/// What the writer thread is sent.
pub(super) enum Message {
    Row(Row),
    /// Answer once every row sent before has been written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The store: a queue to the writer thread, and the connection queries share
/// with it.
pub(super) struct SqliteUsage {
    queue: SyncSender<Message>,
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    client TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    tier TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_nano_usd INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    unpriced INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    degraded INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE INDEX IF NOT EXISTS usage_client_ts ON usage (client, ts);
";

impl SqliteUsage {
    pub(super) fn open(
        path: Option<&std::path::Path>,
        queue: usize,
        retention: Duration,
        max_records: u64,
    ) -> Result<Self, ConfigError> {
        let fail = |e: rusqlite::Error| ConfigError(format!("usage store: {e}"));
        let conn = match path {
            Some(path) => Connection::open(path).map_err(fail)?,
            None => Connection::open_in_memory().map_err(fail)?,
        };
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        let conn = Arc::new(Mutex::new(conn));
        // In memory, the records are bounded tighter (about 20 MB).
        let max_records = match path {
            Some(_) => max_records,
            None => max_records.min(IN_MEMORY_MAX_RECORDS),
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel(queue);
        let writer = Writer {
            conn: conn.clone(),
            retention_secs: i64::try_from(retention.as_secs()).unwrap_or(i64::MAX),
            max_records: i64::try_from(max_records).unwrap_or(i64::MAX),
        };
        std::thread::Builder::new()
            .name("llm-proxy-usage".into())
            .spawn(move || writer.run(&receiver))
            .map_err(|e| ConfigError(format!("usage store: cannot start its writer: {e}")))?;
        Ok(Self {
            queue: sender,
            conn,
        })
    }

    /// Queue `row`; `false` when the queue is full (the row is dropped).
    pub(super) fn record(&self, row: Row) -> bool {
        match self.queue.try_send(Message::Row(row)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Waits until every row queued so far is written (or dropped by a failed
    /// write). Unbounded: the caller bounds it.
    pub(super) async fn flush(&self) -> Result<(), String> {
        let (done, written) = tokio::sync::oneshot::channel();
        let queue = self.queue.clone();
        // A blocking send: the queue may be full for a moment.
        tokio::task::spawn_blocking(move || queue.send(Message::Flush(done)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the usage writer stopped".to_owned())?;
        written
            .await
            .map_err(|_| "the usage writer stopped".to_owned())
    }

    /// Wait until every row queued so far is written, then run `query`.
    pub(super) async fn query(
        &self,
        query: Query,
        max_groups: usize,
    ) -> Result<(Vec<Group>, Totals, bool), String> {
        self.flush().await?;
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            run_query(&conn, &query, max_groups).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

struct Writer {
    conn: Arc<Mutex<Connection>>,
    retention_secs: i64,
    max_records: i64,
}

/// The most records an in-memory store keeps, whatever `usage.max_records` says.
pub(super) const IN_MEMORY_MAX_RECORDS: u64 = 100_000;

/// Rows written per transaction, at most.
const BATCH: usize = 4096;

/// How long the writer lets rows pile up after the first one: a query waits
/// at most this long for the rows before it, and at a high rate a transaction
/// holds this long's rows (rows of one second, client and model become one
/// record).
const PACE: Duration = Duration::from_millis(100);

/// Rows written between two prunes (and every minute when idle).
const PRUNE_EVERY: usize = 10_000;

impl Writer {
    fn run(self, receiver: &Receiver<Message>) {
        let mut written_since_prune = 0usize;
        loop {
            let first = match receiver.recv_timeout(Duration::from_secs(60)) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    self.prune();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Let the rows of the next moment pile up: while this thread
            // sleeps, a request's `try_send` wakes nobody, and they are written
            // in one transaction instead of one each.
            std::thread::sleep(PACE);
            let mut next = Some(first);
            loop {
                let mut rows = Vec::new();
                let mut flushes = Vec::new();
                while let Some(message) = next.take() {
                    match message {
                        Message::Row(row) => rows.push(row),
                        Message::Flush(done) => flushes.push(done),
                    }
                    if rows.len() < BATCH {
                        next = receiver.try_recv().ok();
                    }
                }
                if let Err(e) = self.write(&rows) {
                    tracing::warn!(error = %e, rows = rows.len(), "usage records not written");
                    metrics::counter!("llm_proxy_usage_dropped_total").increment(rows.len() as u64);
                }
                written_since_prune += rows.len();
                if written_since_prune >= PRUNE_EVERY {
                    written_since_prune = 0;
                    self.prune();
                }
                for done in flushes {
                    let _ = done.send(());
                }
                // More than a batch was waiting: write the rest now.
                match receiver.try_recv() {
                    Ok(message) => next = Some(message),
                    Err(_) => break,
                }
            }
        }
    }

    /// Write `rows`, those of one second, client, model, upstream model, tier,
    /// cached and degraded flag summed into one record (at a high rate a batch
    /// of hundreds of requests is a few inserts).
    fn write(&self, rows: &[Row]) -> rusqlite::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        type Key<'a> = (i64, &'a str, &'a str, &'a str, &'a str, bool, bool);
        let mut sums: HashMap<Key<'_>, Totals> = HashMap::new();
        for row in rows {
            let key = (
                row.ts,
                &*row.client,
                &*row.model,
                &*row.upstream_model,
                &*row.tier,
                row.cached,
                row.degraded,
            );
            let sum = sums.entry(key).or_default();
            sum.requests += 1;
            sum.input_tokens += row.tokens.input_tokens;
            sum.cached_input_tokens += row.tokens.cached_input_tokens;
            sum.output_tokens += row.tokens.output_tokens;
            sum.cost_nano_usd += row.cost.map_or(0, |c| c.nano_usd());
            sum.unpriced += u64::from(row.cost.is_none());
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO usage (ts, client, model, upstream_model, tier, input_tokens,
                 cached_input_tokens, output_tokens, cost_nano_usd, requests, unpriced, cached,
                 degraded)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for ((ts, client, model, upstream_model, tier, cached, degraded), sum) in &sums {
                insert.execute(params![
                    ts,
                    client,
                    model,
                    upstream_model,
                    tier,
                    saturating(sum.input_tokens),
                    saturating(sum.cached_input_tokens),
                    saturating(sum.output_tokens),
                    saturating(sum.cost_nano_usd),
                    saturating(sum.requests),
                    saturating(sum.unpriced),
                    cached,
                    degraded,
                ])?;
            }
        }
        tx.commit()
    }

    /// Delete records past the retention, then the oldest past `max_records`.
    fn prune(&self) {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = super::unix_now().saturating_sub(self.retention_secs);
        let result = conn
            .execute("DELETE FROM usage WHERE ts < ?1", params![cutoff])
            .and_then(|_| {
                conn.execute(
                    "DELETE FROM usage WHERE id <= (SELECT MAX(id) FROM usage) - ?1",
                    params![self.max_records],
                )
            });
        if let Err(e) = result {
            tracing::warn!(error = %e, "usage records not pruned");
        }
    }
}

fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn run_query(
    conn: &Connection,
    query: &Query,
    max_groups: usize,
) -> rusqlite::Result<(Vec<Group>, Totals, bool)> {
    let day = "strftime('%Y-%m-%d', ts, 'unixepoch')";
    let mut keys = Vec::new();
    for (wanted, column) in [
        (query.by_client, "client"),
        (query.by_model, "model"),
        (query.by_day, day),
    ] {
        keys.push(if wanted { column } else { "''" });
    }
    let sql = format!(
        "SELECT {k0}, {k1}, {k2}, SUM(requests), SUM(input_tokens), SUM(cached_input_tokens),
                SUM(output_tokens), SUM(cost_nano_usd), SUM(cached * requests),
                SUM(degraded * requests), SUM(unpriced)
         FROM usage
         WHERE ts >= ?1 AND ts < ?2 AND (?3 IS NULL OR client = ?3)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LIMIT ?4",
        k0 = keys[0],
        k1 = keys[1],
        k2 = keys[2],
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let limit = i64::try_from(max_groups)
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let rows = statement.query_map(
        params![query.from, query.to, query.client.as_deref(), limit],
        |r| {
            let text = |i: usize| -> rusqlite::Result<Option<String>> {
                let value: String = r.get(i)?;
                Ok((!value.is_empty()).then_some(value))
            };
            let count = |i: usize| -> rusqlite::Result<u64> {
                Ok(u64::try_from(r.get::<_, Option<i64>>(i)?.unwrap_or(0)).unwrap_or(0))
            };
            Ok(Group {
                client: text(0)?,
                model: text(1)?,
                day: text(2)?,
                totals: Totals {
                    requests: count(3)?,
                    input_tokens: count(4)?,
                    cached_input_tokens: count(5)?,
                    output_tokens: count(6)?,
                    cost_nano_usd: count(7)?,
                    cached: count(8)?,
                    degraded: count(9)?,
                    unpriced: count(10)?,
                },
            })
        },
    )?;
    let mut groups = Vec::new();
    let mut totals = Totals::default();
    let mut truncated = false;
    for group in rows {
        let group = group?;
        if groups.len() == max_groups {
            truncated = true;
            break;
        }
        totals.add(&group.totals);
        groups.push(group);
    }
    Ok((groups, totals, truncated))
}
