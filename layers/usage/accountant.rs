//! Pricing answers and counting them, with the counters registered once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use metrics::Counter;

use super::price::PriceTable;
use super::tokens::{Cost, UsageReport};

/// The `tier` label of answers that carry no [`Degraded`](crate::Degraded) marker.
pub const PRIMARY_TIER: &str = "primary";

/// The `model` label of answers whose model has no price in the table.
pub const UNPRICED_MODEL: &str = "unpriced";

/// One answer's usage, as handed to [`UsageLayer::on_record`](super::UsageLayer::on_record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The model and tokens the provider reported.
    pub report: UsageReport,
    /// The fallback tier that answered ([`PRIMARY_TIER`] unless degraded).
    pub tier: Arc<str>,
    /// Its cost; `None` when the price table has no price for the model.
    pub cost: Option<Cost>,
}

/// How many `(model, tier)` label pairs keep registered counters. Labels are
/// bounded already (the price table's names, or `unpriced`, times the tiers);
/// past this, counters are looked up on each answer instead.
const MAX_LABEL_PAIRS: usize = 1024;

/// Prices each [`UsageReport`] with a [`PriceTable`] and counts it in the
/// `llm_usage_*` metrics (see the [module docs](super)).
///
/// The counters of a `(model, tier)` pair are registered with the `metrics`
/// recorder the first time that pair is counted, and kept: counting an answer
/// then costs a read lock and five atomic adds, not five label lookups. Install
/// the recorder before counting (as any `metrics` user does). Clones share the
/// table and the counters.
///
/// ```
/// use tower_llm_resilience::usage::{Accountant, ModelPrice, PriceTable, TokenUsage, UsageReport};
///
/// let mut prices = PriceTable::new();
/// prices.insert("gpt-4o-mini", ModelPrice::new(0.15, 0.60).unwrap()).unwrap();
/// let accountant = Accountant::new(prices);
/// // At a stream's end, with the usage its last event carried:
/// let report = UsageReport::new("gpt-4o-mini", TokenUsage::new(1_000, 100));
/// let record = accountant.account(report, "primary".into());
/// assert_eq!(record.cost.unwrap().nano_usd(), 150_000 + 60_000);
/// ```
#[derive(Clone)]
pub struct Accountant {
    prices: Arc<PriceTable>,
    counters: Arc<RwLock<ByModel>>,
}

/// Registered counters, by model label then tier.
type ByModel = HashMap<Arc<str>, HashMap<Arc<str>, Counters>>;

/// The counters of one `(model, tier)` pair.
struct Counters {
    input: Counter,
    cached_input: Counter,
    output: Counter,
    answers: Counter,
    cost: Counter,
}

impl Counters {
    fn register(model: &str, tier: &str) -> Self {
        let labels = [("model", model.to_owned()), ("tier", tier.to_owned())];
        Self {
            input: metrics::counter!("llm_usage_input_tokens_total", &labels),
            cached_input: metrics::counter!("llm_usage_cached_input_tokens_total", &labels),
            output: metrics::counter!("llm_usage_output_tokens_total", &labels),
            answers: metrics::counter!("llm_usage_answers_total", &labels),
            cost: metrics::counter!("llm_usage_cost_nano_usd_total", &labels),
        }
    }

    fn count(&self, record: &UsageRecord) {
        let tokens = &record.report.tokens;
        self.input.increment(tokens.input_tokens);
        self.cached_input.increment(tokens.cached_input_tokens);
        self.output.increment(tokens.output_tokens);
        self.answers.increment(1);
        if let Some(cost) = record.cost {
            self.cost.increment(cost.nano_usd());
        }
    }
}

impl Accountant {
    /// Price with `prices`.
    pub fn new(prices: impl Into<Arc<PriceTable>>) -> Self {
        Self {
            prices: prices.into(),
            counters: Arc::default(),
        }
    }

    /// The price table.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// Price one report and count it in the `llm_usage_*` metrics.
    ///
    /// The `model` label is the price table's name for the model, or
    /// [`UNPRICED_MODEL`]: labels stay bounded by the table, whatever an
    /// upstream reports.
    pub fn account(&self, report: UsageReport, tier: Arc<str>) -> UsageRecord {
        let priced = self.prices.lookup(&report.model);
        let cost = priced.map(|(_, price)| price.cost(&report.tokens));
        let model_label: &str = priced.map_or(UNPRICED_MODEL, |(name, _)| name);
        let record = UsageRecord { report, tier, cost };
        self.count(model_label, &record);
        tracing::trace!(model = %record.report.model, tier = %record.tier,
            input = record.report.tokens.input_tokens,
            output = record.report.tokens.output_tokens, cost = ?cost, "usage counted");
        record
    }

    fn count(&self, model: &str, record: &UsageRecord) {
        {
            let counters = self.counters.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(counters) = counters
                .get(model)
                .and_then(|tiers| tiers.get(&*record.tier))
            {
                counters.count(record);
                return;
            }
        }
        let registered = Counters::register(model, &record.tier);
        registered.count(record);
        let mut counters = self
            .counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let pairs: usize = counters.values().map(HashMap::len).sum();
        if pairs < MAX_LABEL_PAIRS {
            counters
                .entry(Arc::from(model))
                .or_default()
                .insert(record.tier.clone(), registered);
        }
    }
}

impl fmt::Debug for Accountant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accountant")
            .field("prices", &self.prices)
            .finish_non_exhaustive()
    }
}
