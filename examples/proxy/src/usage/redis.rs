//! The usage store on Redis (`[state] redis_url`): every proxy on it adds to
//! one set of counters per day, client key and model, so `GET /v1/usage` on any
//! proxy sees them all.
//!
//! Keys: `{prefix}:usage:{day}:{client}:{model}` (a hash of the [`Totals`]
//! fields, `HINCRBY`), and `{prefix}:usage-index:{day}` (a set of
//! `client`/`model` pairs) to list a day without `SCAN`; both expire after the
//! retention. Days are UTC; a query's range is read at day resolution.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::{Group, Query, Row, Totals};
use crate::config::ConfigError;

enum Message {
    Row(Row),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A queue to the writer task, and a connection for queries.
pub(super) struct RedisUsage {
    queue: mpsc::Sender<Message>,
    conn: ConnectionManager,
    prefix: String,
}

/// The longest range one query reads, in days.
const MAX_DAYS: i64 = 400;
/// Separates client and model in the day index (neither contains it: ids are
/// hex, model names come from the config).
const SEPARATOR: char = '\u{1f}';

fn day_of(ts: i64) -> String {
    let date = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0)),
    )
    .to_string();
    date[..10].to_owned()
}

impl RedisUsage {
    pub(super) fn open(
        client: redis::Client,
        prefix: String,
        queue: usize,
        retention: Duration,
    ) -> Result<Self, ConfigError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ConfigError(format!("usage store on redis: {e}")))?;
        let (sender, receiver) = mpsc::channel(queue);
        let retention_secs = retention.as_secs().max(1) + 24 * 3600;
        tokio::spawn(write(
            receiver,
            conn.clone(),
            prefix.clone(),
            retention_secs,
        ));
        Ok(Self {
            queue: sender,
            conn,
            prefix,
        })
    }

    pub(super) fn record(&self, row: Row) -> bool {
        self.queue.try_send(Message::Row(row)).is_ok()
    }

    /// Waits until every row queued so far is written (or dropped by a failed
    /// write). Unbounded: the caller bounds it.
    pub(super) async fn flush(&self) -> Result<(), String> {
        crate::writer::flush(&self.queue, Message::Flush, "usage writer").await
    }

    /// Rows queued and not written yet.
    pub(super) fn queued(&self) -> usize {
        crate::writer::queued(&self.queue)
    }

    pub(super) async fn query(
        &self,
        query: Query,
        max_groups: usize,
    ) -> Result<(Vec<Group>, Totals, bool), String> {
        self.flush().await?;
        let (first, last) = (
            query.from.div_euclid(86_400),
            (query.to - 1).div_euclid(86_400),
        );
        if last - first >= MAX_DAYS {
            return Err(format!(
                "a range of at most {MAX_DAYS} days is read from Redis"
            ));
        }
        let mut conn = self.conn.clone();
        let mut merged: BTreeMap<GroupKey, Totals> = BTreeMap::new();
        for day_index in first..=last {
            let day = day_of(day_index * 86_400);
            let pairs: Vec<String> = redis::cmd("SMEMBERS")
                .arg(format!("{}:usage-index:{day}", self.prefix))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            for pair in pairs {
                let Some((client, model)) = pair.split_once(SEPARATOR) else {
                    continue;
                };
                if query
                    .client
                    .as_deref()
                    .is_some_and(|wanted| wanted != client)
                {
                    continue;
                }
                let fields: BTreeMap<String, u64> = redis::cmd("HGETALL")
                    .arg(format!("{}:usage:{day}:{client}:{model}", self.prefix))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let key = (
                    query.by_client.then(|| client.to_owned()),
                    query.by_model.then(|| model.to_owned()),
                    query.by_day.then(|| day.clone()),
                );
                merged.entry(key).or_default().add(&totals_of(&fields));
            }
        }
        let truncated = merged.len() > max_groups;
        let mut totals = Totals::default();
        let groups = merged
            .into_iter()
            .take(max_groups)
            .map(|((client, model, day), group)| {
                totals.add(&group);
                Group {
                    client,
                    model,
                    day,
                    totals: group,
                }
            })
            .collect();
        Ok((groups, totals, truncated))
    }
}

/// A group's client, model and day (each `None` when not grouped by it).
type GroupKey = (Option<String>, Option<String>, Option<String>);

fn totals_of(fields: &BTreeMap<String, u64>) -> Totals {
    let get = |name: &str| fields.get(name).copied().unwrap_or(0);
    Totals {
        requests: get("requests"),
        input_tokens: get("input_tokens"),
        cached_input_tokens: get("cached_input_tokens"),
        output_tokens: get("output_tokens"),
        cost_nano_usd: get("cost_nano_usd"),
        cached: get("cached"),
        degraded: get("degraded"),
        unpriced: get("unpriced"),
    }
}

/// The writer: rows in batches of up to 256, one pipeline each.
async fn write(
    mut receiver: mpsc::Receiver<Message>,
    mut conn: ConnectionManager,
    prefix: String,
    retention_secs: u64,
) {
    let mut batch = Vec::with_capacity(256);
    while receiver.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        let mut flushes = Vec::new();
        let mut rows = 0u64;
        for message in batch.drain(..) {
            let row = match message {
                Message::Row(row) => row,
                Message::Flush(done) => {
                    flushes.push(done);
                    continue;
                }
            };
            rows += 1;
            let day = day_of(row.ts);
            let key = format!("{prefix}:usage:{day}:{}:{}", row.client, row.model);
            let index = format!("{prefix}:usage-index:{day}");
            for (field, add) in [
                ("requests", 1),
                ("input_tokens", row.tokens.input_tokens),
                ("cached_input_tokens", row.tokens.cached_input_tokens),
                ("output_tokens", row.tokens.output_tokens),
                ("cost_nano_usd", row.cost.map_or(0, |c| c.nano_usd())),
                ("cached", u64::from(row.cached)),
                ("degraded", u64::from(row.degraded)),
                ("unpriced", u64::from(row.cost.is_none())),
            ] {
                pipe.cmd("HINCRBY").arg(&key).arg(field).arg(add).ignore();
            }
            pipe.cmd("EXPIRE").arg(&key).arg(retention_secs).ignore();
            pipe.cmd("SADD")
                .arg(&index)
                .arg(format!("{}{SEPARATOR}{}", row.client, row.model))
                .ignore();
            pipe.cmd("EXPIRE").arg(&index).arg(retention_secs).ignore();
        }
        if rows > 0 {
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::warn!(error = %e, rows, "usage records not written to redis");
                metrics::counter!("llm_proxy_usage_dropped_total").increment(rows);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
