//! [`PostgresUsageStore`]: LLM usage records shared by every instance, summed by
//! key, model and day.

use std::collections::HashMap;
use std::fmt;

use super::connect::Postgres;
use super::error::PgError;

/// Rows one [`insert`](PostgresUsageStore::insert) writes per statement.
const CHUNK: usize = 1000;
/// The most groups a [`query`](PostgresUsageStore::query) returns.
pub const USAGE_MAX_GROUPS: usize = 10_000;

/// One answer's usage (or several with the same key fields, pre-summed in
/// `requests`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// When, in Unix seconds.
    pub ts: i64,
    /// The client (API key id) it is billed to.
    pub client: String,
    /// The model the client asked for.
    pub model: String,
    /// The model that answered (a fallback tier's may differ).
    pub upstream_model: String,
    /// The tier that answered.
    pub tier: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost in billionths of a US dollar; `None` when the model has no price.
    pub cost_nano_usd: Option<u64>,
    /// Answered from a response cache.
    pub cached: bool,
    /// Answered by a fallback tier.
    pub degraded: bool,
}

/// What to sum: a time range, maybe one client, grouped by any of client,
/// model and day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// Unix seconds, inclusive.
    pub from: i64,
    /// Unix seconds, exclusive.
    pub to: i64,
    /// Only this client.
    pub client: Option<String>,
    /// One group per client.
    pub by_client: bool,
    /// One group per model.
    pub by_model: bool,
    /// One group per UTC day.
    pub by_day: bool,
}

/// Sums over a group of records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Answers.
    pub requests: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Prompt tokens from the provider's cache.
    pub cached_input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost of the priced answers, in billionths of a US dollar.
    pub cost_nano_usd: u64,
    /// Answers from a response cache.
    pub cached: u64,
    /// Answers from a fallback tier.
    pub degraded: u64,
    /// Answers without a price.
    pub unpriced: u64,
}

impl UsageTotals {
    fn add(&mut self, other: &UsageTotals) {
        self.requests = self.requests.saturating_add(other.requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(other.cached_input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_nano_usd = self.cost_nano_usd.saturating_add(other.cost_nano_usd);
        self.cached = self.cached.saturating_add(other.cached);
        self.degraded = self.degraded.saturating_add(other.degraded);
        self.unpriced = self.unpriced.saturating_add(other.unpriced);
    }
}

/// One group of a [`UsageReport`]; a field is `None` when not grouped by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageGroup {
    /// The client.
    pub client: Option<String>,
    /// The model asked for.
    pub model: Option<String>,
    /// The UTC day, `YYYY-MM-DD`.
    pub day: Option<String>,
    /// Its sums.
    pub totals: UsageTotals,
}

/// The answer to a [`UsageQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// The groups, ordered by client, model, day.
    pub groups: Vec<UsageGroup>,
    /// The sums of the groups returned.
    pub totals: UsageTotals,
    /// More groups matched than `max_groups`.
    pub truncated: bool,
}

/// Usage records on PostgreSQL (table `tower_llm_usage`, created by
/// [`Postgres::migrate`]): every instance writes its answers' usage, and
/// reports and budgets add up across all of them.
///
/// Writes are batched by the caller ([`insert`](Self::insert) takes many rows;
/// rows with the same key fields and second are summed into one). Retention is
/// [`prune`](Self::prune)'s: call it periodically.
#[derive(Clone)]
pub struct PostgresUsageStore {
    pg: Postgres,
}

impl fmt::Debug for PostgresUsageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresUsageStore")
            .field("pg", &self.pg)
            .finish()
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

type Key<'a> = (i64, &'a str, &'a str, &'a str, &'a str, bool, bool);

const INSERT: &str = "
INSERT INTO tower_llm_usage (ts, client, model, upstream_model, tier, input_tokens,
    cached_input_tokens, output_tokens, cost_nano_usd, requests, unpriced, cached, degraded)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
    $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[],
    $12::bool[], $13::bool[])";

impl PostgresUsageStore {
    /// A store on `pg`.
    pub fn new(pg: &Postgres) -> Self {
        Self { pg: pg.clone() }
    }

    /// Writes `rows` (summing those with the same key fields and second), at
    /// most 1000 per statement, each statement committed on its own; returns how
    /// many table rows were written.
    pub async fn insert(&self, rows: &[UsageRow]) -> Result<usize, PgError> {
        // Summed by key, in the order keys first appear (ids follow time, and
        // pruning by count drops the oldest).
        let mut index: HashMap<Key<'_>, usize> = HashMap::new();
        let mut sums: Vec<(Key<'_>, UsageTotals)> = Vec::new();
        for row in rows {
            let key = (
                row.ts,
                row.client.as_str(),
                row.model.as_str(),
                row.upstream_model.as_str(),
                row.tier.as_str(),
                row.cached,
                row.degraded,
            );
            let slot = *index.entry(key).or_insert_with(|| {
                sums.push((key, UsageTotals::default()));
                sums.len() - 1
            });
            sums[slot].1.add(&UsageTotals {
                requests: 1,
                input_tokens: row.input_tokens,
                cached_input_tokens: row.cached_input_tokens,
                output_tokens: row.output_tokens,
                cost_nano_usd: row.cost_nano_usd.unwrap_or(0),
                cached: 0,
                degraded: 0,
                unpriced: u64::from(row.cost_nano_usd.is_none()),
            });
        }
        let mut written = 0;
        for chunk in sums.chunks(CHUNK) {
            written += self.insert_chunk(chunk).await?;
        }
        Ok(written)
    }

    async fn insert_chunk(&self, chunk: &[(Key<'_>, UsageTotals)]) -> Result<usize, PgError> {
        let column =
            |f: fn(&(Key<'_>, UsageTotals)) -> i64| chunk.iter().map(f).collect::<Vec<i64>>();
        let (ts, input, cached_input, output) = (
            column(|(k, _)| k.0),
            column(|(_, t)| to_i64(t.input_tokens)),
            column(|(_, t)| to_i64(t.cached_input_tokens)),
            column(|(_, t)| to_i64(t.output_tokens)),
        );
        let (cost, requests, unpriced) = (
            column(|(_, t)| to_i64(t.cost_nano_usd)),
            column(|(_, t)| to_i64(t.requests)),
            column(|(_, t)| to_i64(t.unpriced)),
        );
        let client: Vec<&str> = chunk.iter().map(|(k, _)| k.1).collect();
        let model: Vec<&str> = chunk.iter().map(|(k, _)| k.2).collect();
        let upstream: Vec<&str> = chunk.iter().map(|(k, _)| k.3).collect();
        let tier: Vec<&str> = chunk.iter().map(|(k, _)| k.4).collect();
        let cached: Vec<bool> = chunk.iter().map(|(k, _)| k.5).collect();
        let degraded: Vec<bool> = chunk.iter().map(|(k, _)| k.6).collect();
        self.pg
            .run(|client_conn| async move {
                let statement = client_conn.prepare_cached(INSERT).await?;
                let n = client_conn
                    .execute(
                        &statement,
                        &[
                            &ts,
                            &client,
                            &model,
                            &upstream,
                            &tier,
                            &input,
                            &cached_input,
                            &output,
                            &cost,
                            &requests,
                            &unpriced,
                            &cached,
                            &degraded,
                        ],
                    )
                    .await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
            .await
    }

    /// Sums over `query`'s range, grouped as it asks, at most `max_groups`
    /// groups (capped at [`USAGE_MAX_GROUPS`]).
    pub async fn query(
        &self,
        query: &UsageQuery,
        max_groups: usize,
    ) -> Result<UsageReport, PgError> {
        let max_groups = max_groups.min(USAGE_MAX_GROUPS);
        let day = "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')";
        let key = |wanted: bool, column: &'static str| if wanted { column } else { "''" };
        let sql = format!(
            "SELECT {}, {}, {}, sum(requests)::bigint, sum(input_tokens)::bigint,
                    sum(cached_input_tokens)::bigint, sum(output_tokens)::bigint,
                    sum(cost_nano_usd)::bigint,
                    sum(CASE WHEN cached THEN requests ELSE 0 END)::bigint,
                    sum(CASE WHEN degraded THEN requests ELSE 0 END)::bigint,
                    sum(unpriced)::bigint
             FROM tower_llm_usage
             WHERE ts >= $1 AND ts < $2 AND ($3::text IS NULL OR client = $3::text)
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LIMIT $4",
            key(query.by_client, "client"),
            key(query.by_model, "model"),
            key(query.by_day, day),
        );
        let limit = to_i64(max_groups as u64).saturating_add(1);
        let rows = self
            .pg
            .run(|client| async move {
                Ok(client
                    .query(&sql, &[&query.from, &query.to, &query.client, &limit])
                    .await?)
            })
            .await?;
        let mut report = UsageReport::default();
        for row in rows {
            if report.groups.len() == max_groups {
                report.truncated = true;
                break;
            }
            let text = |i: usize| Some(row.get::<_, String>(i)).filter(|s| !s.is_empty());
            let count = |i: usize| to_u64(row.get::<_, Option<i64>>(i));
            let totals = UsageTotals {
                requests: count(3),
                input_tokens: count(4),
                cached_input_tokens: count(5),
                output_tokens: count(6),
                cost_nano_usd: count(7),
                cached: count(8),
                degraded: count(9),
                unpriced: count(10),
            };
            report.totals.add(&totals);
            report.groups.push(UsageGroup {
                client: text(0),
                model: text(1),
                day: text(2),
                totals,
            });
        }
        Ok(report)
    }

    /// One client's own totals over `from..to` (Unix seconds): what a budget
    /// checks.
    pub async fn client_totals(
        &self,
        client: &str,
        from: i64,
        to: i64,
    ) -> Result<UsageTotals, PgError> {
        let query = UsageQuery {
            from,
            to,
            client: Some(client.to_owned()),
            ..UsageQuery::default()
        };
        Ok(self.query(&query, 1).await?.totals)
    }

    /// Deletes records older than `before` (Unix seconds), then the oldest past
    /// `max_records`; returns how many went.
    pub async fn prune(&self, before: i64, max_records: u64) -> Result<u64, PgError> {
        let keep = to_i64(max_records);
        self.pg
            .run(|client| async move {
                let old = client
                    .execute("DELETE FROM tower_llm_usage WHERE ts < $1", &[&before])
                    .await?;
                let over = client
                    .execute(
                        "DELETE FROM tower_llm_usage WHERE id <= (SELECT max(id) FROM tower_llm_usage) - $1",
                        &[&keep],
                    )
                    .await?;
                Ok(old + over)
            })
            .await
    }
}
