//! Tokens and cost of every answer: a price table you supply, and a layer that
//! counts usage in `metrics` labelled by model and fallback tier.
//!
//! # Example
//!
//! ```
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::usage::{
//!     Cost, ModelPrice, PriceTable, TokenUsage, UsageLayer, UsageReport,
//! };
//! use tower_llm_resilience::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Your prices (or `PriceTable::load_litellm_file("model_prices.json")`).
//! let mut prices = PriceTable::new();
//! prices.insert("gpt-4o-mini", ModelPrice::new(0.15, 0.60)?.with_cached_input(0.075)?)?;
//!
//! // Whatever parses the provider's answer puts a `UsageReport` on the response.
//! let upstream = service_fn(|_: ()| async {
//!     let body = br#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":1000,"completion_tokens":100}}"#;
//!     let mut response = http::Response::new(body.to_vec());
//!     let report = UsageReport::from_answer_body(response.body()).expect("usage");
//!     response.extensions_mut().insert(report);
//!     Ok::<_, BoxError>(response)
//! });
//! let service = ServiceBuilder::new()
//!     .layer(UsageLayer::new(prices).on_record(|record| {
//!         assert_eq!(record.report.tokens, TokenUsage::new(1000, 100));
//!     }))
//!     .service(upstream);
//!
//! let response = service.oneshot(()).await?;
//! // 1000 × $0.15/M + 100 × $0.60/M
//! assert_eq!(response.extensions().get::<Cost>(), Some(&Cost::from_nano_usd(210_000)));
//! # Ok(())
//! # }
//! ```
//!
//! # What is counted
//!
//! Any response type implementing [`ReportUsage`]: `ChatResponse` (feature
//! `reqwest`; its `usage` field, filled by both clients, streamed or not),
//! `http::Response<B>` (a [`UsageReport`] in its extensions, put there by
//! whatever parsed the body: [`UsageReport::from_answer_body`] for a whole
//! answer, [`TokenUsage::from_json`] with [`TokenUsage::accumulate`] over the
//! events of a stream), and [`Marked<T>`](crate::Marked). Answers without usage
//! pass through uncounted; failures are never counted.
//!
//! A streaming service (`Streaming<C>`) answers before the usage exists: read
//! the [`ChatDelta::Usage`](crate::client::ChatDelta) at the stream's end, and
//! count it with an [`Accountant`].
//!
//! # Prices
//!
//! No prices are built in: they change too often. Build a [`PriceTable`] or load
//! the one you keep for LiteLLM. Costs are whole nano-dollars ([`Cost`]), so sums
//! are exact. Cached input (prompt-cache reads) is charged at the cached-input
//! price when the model has one; Anthropic's cache writes at the input price.
//!
//! # Observability
//!
//! Counters, labelled `model` (the price table's name for the model, or
//! `unpriced`: the label set stays bounded whatever an upstream reports) and
//! `tier` (`primary`, or the name of the fallback tier that answered):
//!
//! - `llm_usage_answers_total`
//! - `llm_usage_input_tokens_total`, `llm_usage_cached_input_tokens_total`,
//!   `llm_usage_output_tokens_total`
//! - `llm_usage_cost_nano_usd_total` (priced models only)
//!
//! # Cost
//!
//! Per counted answer: the report's clone (an `Arc` and three integers for
//! `http::Response`; the model name's allocation for `ChatResponse`), one table
//! lookup, a read lock and five atomic adds. The counters of a `(model, tier)`
//! pair are registered with the recorder the first time it is counted (see
//! [`Accountant`]).

mod accountant;
mod price;
mod service;
mod tokens;

pub use self::accountant::{Accountant, UsageRecord, PRIMARY_TIER, UNPRICED_MODEL};
pub use self::price::{ModelPrice, PriceError, PriceTable, MAX_MODELS, MAX_PRICE_FILE_BYTES};
pub use self::service::{Usage, UsageFuture, UsageLayer};
pub use self::tokens::{Cost, TokenUsage, UsageReport};

use crate::fallback::{MarkDegraded, Marked};

/// A response that can say what it used.
pub trait ReportUsage {
    /// The model and tokens of this answer, if known.
    fn usage_report(&self) -> Option<UsageReport>;

    /// The fallback tier that answered, if not the primary.
    fn usage_tier(&self) -> Option<&str>;

    /// Keep the answer's computed cost, where the type has room (an
    /// `http::Response` takes it in its extensions). Does nothing by default.
    fn attach_cost(&mut self, cost: Cost) {
        let _ = cost;
    }
}

impl<B> ReportUsage for http::Response<B> {
    fn usage_report(&self) -> Option<UsageReport> {
        self.extensions().get::<UsageReport>().cloned()
    }

    fn usage_tier(&self) -> Option<&str> {
        self.degraded().map(|marker| marker.name())
    }

    fn attach_cost(&mut self, cost: Cost) {
        self.extensions_mut().insert(cost);
    }
}

impl<T: ReportUsage> ReportUsage for Marked<T> {
    fn usage_report(&self) -> Option<UsageReport> {
        self.value.usage_report()
    }

    fn usage_tier(&self) -> Option<&str> {
        self.degraded
            .as_ref()
            .map(|marker| marker.name())
            .or_else(|| self.value.usage_tier())
    }

    fn attach_cost(&mut self, cost: Cost) {
        self.value.attach_cost(cost);
    }
}

#[cfg(feature = "reqwest")]
impl ReportUsage for crate::client::ChatResponse {
    fn usage_report(&self) -> Option<UsageReport> {
        let usage = self.usage?;
        Some(UsageReport::new(self.model.as_str(), usage.into()))
    }

    fn usage_tier(&self) -> Option<&str> {
        self.degraded().map(|marker| marker.name())
    }
}
