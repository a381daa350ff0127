//! The price table: what each model charges per million tokens.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::tokens::{Cost, TokenUsage};

/// The largest price file [`PriceTable::from_litellm_json`] reads (LiteLLM's own
/// is about 1.5 MB).
pub const MAX_PRICE_FILE_BYTES: usize = 32 * 1024 * 1024;

/// The most models one table holds.
pub const MAX_MODELS: usize = 100_000;

/// What one model charges, in US dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelPrice {
    input_per_million: f64,
    output_per_million: f64,
    cached_input_per_million: Option<f64>,
}

impl ModelPrice {
    /// Input and output prices in dollars per million tokens. Each must be finite
    /// and not negative.
    pub fn new(input_per_million: f64, output_per_million: f64) -> Result<Self, PriceError> {
        Ok(Self {
            input_per_million: check_price("input", input_per_million)?,
            output_per_million: check_price("output", output_per_million)?,
            cached_input_per_million: None,
        })
    }

    /// The price of cached input tokens (prompt-cache reads), dollars per million;
    /// without it they are charged at the input price.
    pub fn with_cached_input(mut self, per_million: f64) -> Result<Self, PriceError> {
        self.cached_input_per_million = Some(check_price("cached input", per_million)?);
        Ok(self)
    }

    /// Input price, dollars per million tokens.
    pub fn input_per_million(&self) -> f64 {
        self.input_per_million
    }

    /// Output price, dollars per million tokens.
    pub fn output_per_million(&self) -> f64 {
        self.output_per_million
    }

    /// Cached-input price, dollars per million tokens, if set.
    pub fn cached_input_per_million(&self) -> Option<f64> {
        self.cached_input_per_million
    }

    /// What `tokens` cost at these prices, rounded to the nearest nano-dollar.
    pub fn cost(&self, tokens: &TokenUsage) -> Cost {
        let cached = tokens.cached_input_tokens.min(tokens.input_tokens);
        let uncached = tokens.input_tokens - cached;
        let cached_price = self
            .cached_input_per_million
            .unwrap_or(self.input_per_million);
        // $ per million tokens × 1000 = nano-dollars per token.
        let nano = uncached as f64 * self.input_per_million * 1000.0
            + cached as f64 * cached_price * 1000.0
            + tokens.output_tokens as f64 * self.output_per_million * 1000.0;
        // `as` saturates at the bounds; prices are checked finite and not negative.
        Cost::from_nano_usd(nano.round() as u64)
    }
}

fn check_price(which: &'static str, value: f64) -> Result<f64, PriceError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(PriceError::InvalidPrice { which, value })
    }
}

/// Prices per model, supplied by you: this crate ships none (they go stale).
///
/// Build it by hand with [`insert`](Self::insert), or load the table you already
/// keep for LiteLLM ([`from_litellm_json`](Self::from_litellm_json)). Lookups
/// try the model name as given, then without a `provider/` prefix.
///
/// ```
/// use tower_llm_resilience::usage::{ModelPrice, PriceTable, TokenUsage};
///
/// let mut prices = PriceTable::new();
/// prices.insert("gpt-4o-mini", ModelPrice::new(0.15, 0.60).unwrap()).unwrap();
/// let cost = prices.cost("openai/gpt-4o-mini", &TokenUsage::new(1_000, 200)).unwrap();
/// assert_eq!(cost.nano_usd(), 150_000 + 120_000);
/// ```
#[derive(Clone, Default)]
pub struct PriceTable {
    models: HashMap<Arc<str>, ModelPrice>,
    skipped: usize,
}

impl PriceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `model`'s price (replacing any). Fails past [`MAX_MODELS`] models.
    pub fn insert(&mut self, model: &str, price: ModelPrice) -> Result<(), PriceError> {
        if self.models.len() >= MAX_MODELS && !self.models.contains_key(model) {
            return Err(PriceError::TooManyModels { limit: MAX_MODELS });
        }
        self.models.insert(Arc::from(model), price);
        Ok(())
    }

    /// The price of `model` and the table's name for it: an exact match, else
    /// the name without its `provider/` prefix.
    pub fn lookup(&self, model: &str) -> Option<(&Arc<str>, &ModelPrice)> {
        self.models.get_key_value(model).or_else(|| {
            let (_, bare) = model.split_once('/')?;
            self.models.get_key_value(bare)
        })
    }

    /// The price of `model` (see [`lookup`](Self::lookup)).
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.lookup(model).map(|(_, price)| price)
    }

    /// What `tokens` of `model` cost; `None` when the table has no price for it.
    pub fn cost(&self, model: &str, tokens: &TokenUsage) -> Option<Cost> {
        self.get(model).map(|price| price.cost(tokens))
    }

    /// How many models have a price.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// `true` when no model has a price.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Entries of the loaded file that were left out: without a numeric
    /// `input_cost_per_token` and `output_cost_per_token` (image, audio and
    /// embedding models priced otherwise, LiteLLM's `sample_spec`), or with a
    /// negative or non-finite price.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Load a price file in LiteLLM's `model_prices_and_context_window.json`
    /// format: an object from model name to an entry whose
    /// `input_cost_per_token`, `output_cost_per_token` and (optional)
    /// `cache_read_input_token_cost` are dollars per token. Other fields are
    /// ignored; entries without usable token prices are counted in
    /// [`skipped`](Self::skipped). Fails on a document that is not such an
    /// object, or larger than [`MAX_PRICE_FILE_BYTES`].
    pub fn from_litellm_json(json: &[u8]) -> Result<Self, PriceError> {
        if json.len() > MAX_PRICE_FILE_BYTES {
            return Err(PriceError::TooLarge {
                limit: MAX_PRICE_FILE_BYTES,
            });
        }
        let document: serde_json::Map<String, Value> =
            serde_json::from_slice(json).map_err(|e| PriceError::Parse(e.to_string()))?;
        let mut table = Self::new();
        for (model, entry) in &document {
            match litellm_price(entry) {
                Some(price) => table.insert(model, price)?,
                None => table.skipped += 1,
            }
        }
        Ok(table)
    }

    /// [`from_litellm_json`](Self::from_litellm_json) on a file, read up to
    /// [`MAX_PRICE_FILE_BYTES`].
    pub fn load_litellm_file(path: impl AsRef<Path>) -> Result<Self, PriceError> {
        let path = path.as_ref();
        let io = |e: std::io::Error| PriceError::Io(format!("{}: {e}", path.display()));
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_PRICE_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Self::from_litellm_json(&bytes)
    }
}

/// Dollars per token (LiteLLM) to dollars per million tokens.
fn litellm_price(entry: &Value) -> Option<ModelPrice> {
    let per_million = |key: &str| entry.get(key)?.as_f64().map(|per_token| per_token * 1e6);
    let price = ModelPrice::new(
        per_million("input_cost_per_token")?,
        per_million("output_cost_per_token")?,
    )
    .ok()?;
    match per_million("cache_read_input_token_cost") {
        Some(cached) => price.with_cached_input(cached).ok(),
        None => Some(price),
    }
}

impl fmt::Debug for PriceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriceTable")
            .field("models", &self.models.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// Why a price or a price table was refused.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PriceError {
    /// A price was negative, infinite or NaN.
    InvalidPrice {
        /// Which price.
        which: &'static str,
        /// The value given.
        value: f64,
    },
    /// The price file is larger than the limit.
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// More models than the limit.
    TooManyModels {
        /// The limit.
        limit: usize,
    },
    /// The price file is not a JSON object of model entries.
    Parse(String),
    /// The price file could not be read.
    Io(String),
}

impl fmt::Display for PriceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PriceError::InvalidPrice { which, value } => write!(
                f,
                "the {which} price must be a finite number of dollars, not negative; got {value}"
            ),
            PriceError::TooLarge { limit } => {
                write!(f, "the price file is larger than {limit} bytes")
            }
            PriceError::TooManyModels { limit } => {
                write!(f, "a price table holds at most {limit} models")
            }
            PriceError::Parse(message) => write!(
                f,
                "the price file is not a LiteLLM model price object: {message}"
            ),
            PriceError::Io(message) => write!(f, "reading the price file: {message}"),
        }
    }
}

impl std::error::Error for PriceError {}
