//! Usage records: one per answered chat request (client key id, model, tier,
//! tokens, cost, cached, degraded, time), kept in SQLite, on Redis or on
//! PostgreSQL, read by `GET /v1/usage`.
//!
//! Tokens come from the answer: a buffered answer's `usage` object, or a
//! stream's usage events (the OpenAI final chunk, when the upstream sends it;
//! Anthropic's `message_start` / `message_delta`, translated). The cost comes
//! from `[usage]`'s price table, by the model the upstream reported; counters
//! `llm_usage_*` (library, labelled model and tier) are kept as well.
//!
//! Recording never slows a request: rows go through a bounded queue to a
//! writer (thread or task); a full queue drops the row and counts it
//! (`llm_proxy_usage_dropped_total`).

mod body;
mod budget;
mod budget_postgres;
mod postgres;
mod redis;
mod sqlite;
mod tokens;

use std::sync::Arc;

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::FinderRev;

use serde::Serialize;
use tower_llm_resilience::postgres::Postgres;
use tower_llm_resilience::usage::{Accountant, Cost, TokenUsage, UsageReport};

pub(crate) use self::body::UsageBody;
pub(crate) use self::budget::Budgets;
use self::postgres::PostgresUsage;
use self::redis::RedisUsage;
use self::sqlite::SqliteUsage;
use self::tokens::UsageObject;
use crate::config::{ConfigError, UsageConfig};

/// One answered request.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) ts: i64,
    pub(crate) client: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) upstream_model: Arc<str>,
    pub(crate) tier: Arc<str>,
    pub(crate) tokens: TokenUsage,
    pub(crate) cost: Option<Cost>,
    pub(crate) cached: bool,
    pub(crate) degraded: bool,
}

/// What `GET /v1/usage` asks for.
#[derive(Clone, Debug)]
pub(crate) struct Query {
    /// Unix seconds, inclusive.
    pub(crate) from: i64,
    /// Unix seconds, exclusive.
    pub(crate) to: i64,
    /// Only this client key id.
    pub(crate) client: Option<String>,
    pub(crate) by_client: bool,
    pub(crate) by_model: bool,
    pub(crate) by_day: bool,
}

/// Sums over a group of records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) input_tokens: u64,
    pub(crate) cached_input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cost_nano_usd: u64,
    /// Requests answered from the cache.
    pub(crate) cached: u64,
    pub(crate) degraded: u64,
    /// Requests whose model has no price (counted at 0).
    pub(crate) unpriced: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_nano_usd += other.cost_nano_usd;
        self.cached += other.cached;
        self.degraded += other.degraded;
        self.unpriced += other.unpriced;
    }
}

/// One group of `GET /v1/usage`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Group {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) day: Option<String>,
    #[serde(flatten)]
    pub(crate) totals: Totals,
}

/// The usage log: prices, and the store.
pub(crate) struct UsageLog {
    accountant: Accountant,
    store: Store,
    max_groups: usize,
    /// Charged with every record.
    budgets: Option<Arc<Budgets>>,
}

impl std::fmt::Debug for UsageLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageLog")
            .field("prices", self.accountant.prices())
            .finish_non_exhaustive()
    }
}

/// Where records are kept.
enum Store {
    Sqlite(SqliteUsage),
    Redis(RedisUsage),
    Postgres(PostgresUsage),
}

impl UsageLog {
    /// The log `config` asks for: on `postgres` (migrated) when given, else on
    /// `redis` (a client and key prefix) when given, else in SQLite; `None`
    /// when usage is off.
    pub(crate) fn build(
        config: &UsageConfig,
        budgets: Option<Arc<Budgets>>,
        redis: Option<(::redis::Client, String)>,
        postgres: Option<Postgres>,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        if !config.enabled {
            return Ok(None);
        }
        let store = match (postgres, redis) {
            (Some(pg), _) => Store::Postgres(PostgresUsage::open(
                &pg,
                config.queue,
                config.retention_secs,
                config.max_records,
            )),
            (None, Some((client, prefix))) => Store::Redis(RedisUsage::open(
                client,
                prefix,
                config.queue,
                config.retention_secs,
            )?),
            (None, None) => Store::Sqlite(SqliteUsage::open(
                config.sqlite_path.as_deref(),
                config.queue,
                config.retention_secs,
                config.max_records,
            )?),
        };
        Ok(Some(Arc::new(Self {
            accountant: Accountant::new(config.price_table()?),
            store,
            max_groups: config.max_groups,
            budgets,
        })))
    }

    /// Count and keep one answered request. `report`: what the upstream said it
    /// used (`None`: nothing, counted as zero tokens).
    pub(crate) fn record(&self, answered: &Answered, report: Option<UsageReport>) {
        let report = report.unwrap_or_else(|| UsageReport::new("-", TokenUsage::default()));
        let record = self.accountant.account(report, answered.tier.clone());
        if let Some(budgets) = &self.budgets {
            let cost = record.cost.map_or(0, Cost::nano_usd);
            budgets.charge(&answered.client, record.report.tokens.total_tokens(), cost);
        }
        let row = Row {
            ts: unix_now(),
            client: answered.client.clone(),
            model: answered.model.clone(),
            upstream_model: record.report.model,
            tier: record.tier,
            tokens: record.report.tokens,
            cost: record.cost,
            cached: answered.cached,
            degraded: answered.degraded,
        };
        let queued = match &self.store {
            Store::Sqlite(store) => store.record(row),
            Store::Redis(store) => store.record(row),
            Store::Postgres(store) => store.record(row),
        };
        if !queued {
            metrics::counter!("llm_proxy_usage_dropped_total").increment(1);
        }
    }

    /// Keep a request answered from the cache: no tokens, no cost; what the
    /// answer cost when it was first made is counted as saved
    /// (`llm_proxy_cache_saved_nano_usd_total`).
    pub(crate) fn record_cache_hit(&self, answered: &Answered, answer: &[u8]) {
        let report = report_from_body(answer);
        if let Some(saved) = report
            .as_ref()
            .and_then(|r| self.accountant.prices().cost(&r.model, &r.tokens))
        {
            metrics::counter!("llm_proxy_cache_saved_nano_usd_total").increment(saved.nano_usd());
        }
        let model = report.map_or_else(|| Arc::from("-"), |r| r.model);
        self.record(
            answered,
            Some(UsageReport::new(model, TokenUsage::default())),
        );
    }

    /// Waits until every record queued so far is written (a graceful stop's
    /// last step: a record queued is not lost). Unbounded: the caller bounds
    /// it, and counts what is left with [`queued`](Self::queued).
    pub(crate) async fn flush(&self) -> Result<(), String> {
        match &self.store {
            Store::Sqlite(store) => store.flush().await,
            Store::Redis(store) => store.flush().await,
            Store::Postgres(store) => store.flush().await,
        }
    }

    /// Records queued and not written yet (on SQLite: unknown, 0).
    pub(crate) fn queued(&self) -> usize {
        match &self.store {
            Store::Sqlite(_) => 0,
            Store::Redis(store) => store.queued(),
            Store::Postgres(store) => store.queued(),
        }
    }

    /// The groups of `query` (every record written first), their totals, and
    /// whether the list was cut at `usage.max_groups`.
    pub(crate) async fn query(&self, query: Query) -> Result<(Vec<Group>, Totals, bool), String> {
        match &self.store {
            Store::Sqlite(store) => store.query(query, self.max_groups).await,
            Store::Redis(store) => store.query(query, self.max_groups).await,
            Store::Postgres(store) => store.query(query, self.max_groups).await,
        }
    }
}

/// Who and what one answer was for: everything a record needs but the tokens.
#[derive(Clone, Debug)]
pub(crate) struct Answered {
    pub(crate) client: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) tier: Arc<str>,
    pub(crate) cached: bool,
    pub(crate) degraded: bool,
}

/// The model and usage of a buffered chat completion, read without parsing the
/// whole answer: the top-level `"model"` and the last `"usage"` object.
pub(crate) fn report_from_body(body: &[u8]) -> Option<UsageReport> {
    static USAGE: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"usage\""));
    static MODEL: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"model\""));
    let usage_at = USAGE.rfind(body)?;
    let tokens = after_colon::<UsageObject>(&body[usage_at + 7..])?.tokens()?;
    let model = MODEL
        .rfind(body)
        .and_then(|at| after_colon::<Cow<'_, str>>(&body[at + 7..]))
        .map_or_else(|| Arc::from("-"), |model| Arc::from(&*model));
    Some(UsageReport::new(model, tokens))
}

/// A streaming request's body asking for the stream's usage
/// (`"stream_options":{"include_usage":true}` added as its first member);
/// `None` when it has `stream_options` already (the client's own choice) or is
/// not a non-empty object.
pub(crate) fn with_stream_usage(body: &[u8]) -> Option<bytes::Bytes> {
    if contains(body, b"\"stream_options\"") {
        return None;
    }
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let first = body[open + 1..].iter().find(|b| !b.is_ascii_whitespace())?;
    if *first == b'}' {
        return None;
    }
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let mut out = Vec::with_capacity(body.len() + MEMBER.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(MEMBER);
    out.extend_from_slice(&body[open + 1..]);
    Some(out.into())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// The JSON value after `: ` at the start of `rest`, as `T`.
fn after_colon<'a, T: serde::Deserialize<'a>>(rest: &'a [u8]) -> Option<T> {
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let mut values = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter();
    values.next()?.ok()
}

pub(crate) fn unix_now() -> i64 {
    i64::try_from(crate::body::unix_now()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_answers_give_model_and_tokens() {
        let body = br#"{"choices":[{"message":{"content":"\"usage\" in text"}}],"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
        let report = report_from_body(body).unwrap();
        assert_eq!(&*report.model, "gpt-4o");
        assert_eq!(report.tokens, TokenUsage::new(5, 7));
        assert!(report_from_body(br#"{"choices":[]}"#).is_none());
        assert!(report_from_body(br#"{"usage": 3}"#).is_none());
    }

    #[test]
    fn streams_are_asked_for_usage_unless_the_client_chose() {
        let asked = with_stream_usage(br#" {"model":"m","stream":true}"#).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(parsed["stream_options"]["include_usage"], true);
        assert_eq!(parsed["model"], "m");
        let own = br#"{"stream":true,"stream_options":{"include_usage":false}}"#;
        assert!(with_stream_usage(own).is_none());
        assert!(with_stream_usage(b"{ }").is_none());
        assert!(with_stream_usage(b"[1]").is_none());
    }
}
