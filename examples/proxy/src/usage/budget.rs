//! Budgets per client key: spend per period, requests and tokens per minute,
//! checked before any upstream is called; counted in memory, or in Redis or
//! PostgreSQL so every proxy on it enforces one budget.
//!
//! Windows are fixed, counted from the Unix epoch (a minute for `rpm`/`tpm`,
//! `budget_period` for spend), so every proxy agrees on them without talking.
//! A refusal is a 429 in the OpenAI format with a code saying which limit and
//! `Retry-After` the end of its window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use redis::aio::ConnectionManager;
use tower_llm_resilience::postgres::Postgres;

use super::budget_postgres::PostgresBudget;

use crate::config::{BudgetConfig, BudgetsConfig, ConfigError};
use crate::error::ApiError;

/// One key's limits, in the units counted.
#[derive(Clone, Debug)]
struct Limits {
    budget_nano_usd: Option<u64>,
    period_secs: u64,
    rpm: Option<u64>,
    tpm: Option<u64>,
}

impl From<&BudgetConfig> for Limits {
    fn from(config: &BudgetConfig) -> Self {
        Self {
            // Checked finite, >= 0 and < 1e9 dollars: fits in u64 nano-dollars.
            budget_nano_usd: config.budget_usd.map(|usd| (usd * 1e9).round() as u64),
            period_secs: config.budget_period.as_secs().max(60),
            rpm: config.rpm,
            tpm: config.tpm,
        }
    }
}

/// What is counted, per client and window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Counter {
    Spend,
    Requests,
    Tokens,
}

impl Counter {
    const fn name(self) -> &'static str {
        match self {
            Counter::Spend => "spend",
            Counter::Requests => "requests",
            Counter::Tokens => "tokens",
        }
    }
}

/// `(client, counter) -> (window, value)`: one entry per client key id and
/// counter at most.
type Windows = HashMap<(Arc<str>, Counter), (u64, u64)>;

/// Add `add` to a counter in `window` (a new window starts from 0); its value.
fn bump(windows: &mut Windows, client: &Arc<str>, counter: Counter, window: u64, add: u64) -> u64 {
    let entry = windows
        .entry((client.clone(), counter))
        .or_insert((window, 0));
    if entry.0 != window {
        *entry = (window, 0);
    }
    entry.1 = entry.1.saturating_add(add);
    entry.1
}

enum Store {
    Memory(Mutex<Windows>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
        /// Charges being sent, on the runtime the budgets were built in (the
        /// proxy's control runtime, which outlives the serving ones), so that
        /// a graceful stop can wait for them.
        charges: tokio_util::task::TaskTracker,
        runtime: tokio::runtime::Handle,
    },
    Postgres(PostgresBudget),
}

/// The limits and their counters.
pub(crate) struct Budgets {
    default: Option<Limits>,
    keys: HashMap<String, Limits>,
    store: Store,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("keys", &self.keys.len())
            .field("default", &self.default.is_some())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    u64::try_from(super::unix_now()).unwrap_or(0)
}

impl Budgets {
    /// The budgets of `config` (`None`: no limit anywhere), counted in Redis when
    /// `redis` is given (the lower latency), else in `postgres` (migrated) when
    /// given, else in memory.
    pub(crate) fn build(
        config: &BudgetsConfig,
        redis: Option<(redis::Client, String)>,
        postgres: Option<(Postgres, String)>,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        if !config.any() {
            return Ok(None);
        }
        let store = match (redis, postgres) {
            (Some((client, prefix)), _) => {
                let manager = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(1);
                let conn = ConnectionManager::new_lazy_with_config(client, manager)
                    .map_err(|e| ConfigError(format!("budgets on redis: {e}")))?;
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    ConfigError("budgets on redis: built outside a tokio runtime".into())
                })?;
                Store::Redis {
                    conn,
                    prefix,
                    charges: tokio_util::task::TaskTracker::new(),
                    runtime,
                }
            }
            (None, Some((pg, prefix))) => Store::Postgres(PostgresBudget::open(&pg, prefix)),
            (None, None) => Store::Memory(Mutex::new(HashMap::new())),
        };
        Ok(Some(Arc::new(Self {
            default: config.default.as_ref().map(Limits::from),
            keys: config
                .keys
                .iter()
                .map(|(id, b)| (id.clone(), Limits::from(b)))
                .collect(),
            store,
        })))
    }

    fn limits(&self, client: &str) -> Option<&Limits> {
        self.keys.get(client).or(self.default.as_ref())
    }

    /// Admit one request of `client`, or the 429 to answer. Counts the request
    /// against `rpm`. A Redis or Postgres error admits (and is logged and counted): a
    /// budget store outage does not stop the service.
    pub(crate) async fn admit(&self, client: &Arc<str>) -> Result<(), ApiError> {
        let Some(limits) = self.limits(client) else {
            return Ok(());
        };
        let now = now_secs();
        let spend_window = now / limits.period_secs;
        let minute = now / 60;
        let counts = match self
            .read_and_count(client, limits, spend_window, minute)
            .await
        {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(error = %e, "budget counters unreachable; request admitted");
                metrics::counter!("llm_proxy_budget_errors_total").increment(1);
                return Ok(());
            }
        };
        let (spent, tokens, requests) = counts;
        let until = |window_secs: u64, window: u64| {
            Duration::from_secs(((window + 1) * window_secs).saturating_sub(now).max(1))
        };
        if let Some(budget) = limits.budget_nano_usd.filter(|budget| spent >= *budget) {
            return Err(refuse(
                "budget_exceeded",
                format!(
                    "This key has spent its budget of ${:.2} for the period; it renews when the period ends.",
                    budget as f64 / 1e9
                ),
                until(limits.period_secs, spend_window),
            ));
        }
        if let Some(tpm) = limits.tpm.filter(|tpm| tokens >= *tpm) {
            return Err(refuse(
                "tokens_per_minute_exceeded",
                format!("This key used its {tpm} tokens for this minute."),
                until(60, minute),
            ));
        }
        if let Some(rpm) = limits.rpm.filter(|rpm| requests > *rpm) {
            return Err(refuse(
                "requests_per_minute_exceeded",
                format!("This key made its {rpm} requests for this minute."),
                until(60, minute),
            ));
        }
        Ok(())
    }

    /// `(spent this period, tokens this minute, requests this minute with this one)`.
    async fn read_and_count(
        &self,
        client: &Arc<str>,
        limits: &Limits,
        spend_window: u64,
        minute: u64,
    ) -> Result<(u64, u64, u64), tower::BoxError> {
        match &self.store {
            Store::Memory(counters) => {
                let mut counters = counters.lock().unwrap_or_else(|p| p.into_inner());
                let spent = bump(&mut counters, client, Counter::Spend, spend_window, 0);
                let tokens = bump(&mut counters, client, Counter::Tokens, minute, 0);
                let one = u64::from(limits.rpm.is_some());
                let requests = bump(&mut counters, client, Counter::Requests, minute, one);
                Ok((spent, tokens, requests))
            }
            Store::Redis { conn, prefix, .. } => {
                let key = |counter: Counter, window: u64| {
                    format!("{prefix}:budget:{client}:{}:{window}", counter.name())
                };
                let mut conn = conn.clone();
                let requests_key = key(Counter::Requests, minute);
                let (spent, tokens, requests): (Option<u64>, Option<u64>, u64) = redis::pipe()
                    .cmd("GET")
                    .arg(key(Counter::Spend, spend_window))
                    .cmd("GET")
                    .arg(key(Counter::Tokens, minute))
                    .cmd("INCR")
                    .arg(&requests_key)
                    .cmd("EXPIRE")
                    .arg(&requests_key)
                    .arg(120)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok((spent.unwrap_or(0), tokens.unwrap_or(0), requests))
            }
            Store::Postgres(budget) => {
                let one = u64::from(limits.rpm.is_some());
                Ok(budget
                    .read_and_count(client, spend_window, minute, one)
                    .await?)
            }
        }
    }

    /// Count what an answered request of `client` used.
    pub(crate) fn charge(&self, client: &Arc<str>, tokens: u64, cost_nano_usd: u64) {
        let Some(limits) = self.limits(client) else {
            return;
        };
        let now = now_secs();
        let (spend_window, minute) = (now / limits.period_secs, now / 60);
        match &self.store {
            Store::Memory(counters) => {
                let mut counters = counters.lock().unwrap_or_else(|p| p.into_inner());
                bump(
                    &mut counters,
                    client,
                    Counter::Spend,
                    spend_window,
                    cost_nano_usd,
                );
                bump(&mut counters, client, Counter::Tokens, minute, tokens);
            }
            Store::Redis {
                conn,
                prefix,
                charges,
                runtime,
            } => {
                let spend_key = format!("{prefix}:budget:{client}:spend:{spend_window}");
                let tokens_key = format!("{prefix}:budget:{client}:tokens:{minute}");
                let spend_ttl = limits.period_secs.saturating_add(60);
                let mut conn = conn.clone();
                // Off the answer's path: the answer does not wait for Redis.
                let charged = async move {
                    let result: redis::RedisResult<()> = redis::pipe()
                        .cmd("INCRBY")
                        .arg(&spend_key)
                        .arg(cost_nano_usd)
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&spend_key)
                        .arg(spend_ttl)
                        .ignore()
                        .cmd("INCRBY")
                        .arg(&tokens_key)
                        .arg(tokens)
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&tokens_key)
                        .arg(120)
                        .ignore()
                        .query_async(&mut conn)
                        .await;
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "budget spend not counted");
                        metrics::counter!("llm_proxy_budget_errors_total").increment(1);
                    }
                };
                charges.spawn_on(charged, runtime);
            }
            // Off the answer's path too, through a bounded queue.
            Store::Postgres(budget) => budget.charge(
                client,
                (spend_window, limits.period_secs),
                minute,
                tokens,
                cost_nano_usd,
            ),
        }
    }
}

impl Budgets {
    /// Waits until every charge made so far is counted in the shared store (a
    /// graceful stop's last step). Unbounded: the caller bounds it.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        match &self.store {
            Store::Memory(_) => Ok(()),
            Store::Redis { charges, .. } => {
                charges.close();
                charges.wait().await;
                charges.reopen();
                Ok(())
            }
            Store::Postgres(budget) => budget.flush().await,
        }
    }
}

fn refuse(code: &'static str, message: String, retry_after: Duration) -> ApiError {
    metrics::counter!("llm_proxy_budget_rejections_total", "code" => code).increment(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        code,
        message,
    )
    .retry_after(retry_after)
}
