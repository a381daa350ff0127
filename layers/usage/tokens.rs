//! Token counts read from provider answers, and what they cost.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// The tokens one call used, in the terms a price table charges.
///
/// `input_tokens` counts every prompt token, including the `cached_input_tokens`
/// the provider served from its prompt cache (charged at the cached-input price
/// when the table has one). This is OpenAI's convention; Anthropic's `usage`
/// reports cache reads and writes beside `input_tokens`, and
/// [`from_json`](Self::from_json) adds them in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenUsage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// The part of `input_tokens` read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Tokens of the answer.
    pub output_tokens: u64,
}

impl TokenUsage {
    /// Counts with no cached input.
    pub const fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            input_tokens,
            cached_input_tokens: 0,
            output_tokens,
        }
    }

    /// Input and output tokens together.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Read a provider's `usage` object: OpenAI's (`prompt_tokens`,
    /// `completion_tokens`, `prompt_tokens_details.cached_tokens`) or Anthropic's
    /// (`input_tokens`, `output_tokens`, `cache_read_input_tokens`,
    /// `cache_creation_input_tokens`). `None` when it is neither.
    pub fn from_usage_object(usage: &Value) -> Option<Self> {
        let count = |value: &Value, key: &str| value.get(key).and_then(Value::as_u64);
        if let Some(prompt) = count(usage, "prompt_tokens") {
            let cached = usage
                .get("prompt_tokens_details")
                .and_then(|details| count(details, "cached_tokens"))
                .unwrap_or(0);
            return Some(Self {
                input_tokens: prompt,
                cached_input_tokens: cached.min(prompt),
                output_tokens: count(usage, "completion_tokens").unwrap_or(0),
            });
        }
        let input = count(usage, "input_tokens");
        let output = count(usage, "output_tokens");
        if input.is_none() && output.is_none() {
            return None;
        }
        let read = count(usage, "cache_read_input_tokens").unwrap_or(0);
        let written = count(usage, "cache_creation_input_tokens").unwrap_or(0);
        Some(Self {
            input_tokens: input
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(written),
            cached_input_tokens: read,
            output_tokens: output.unwrap_or(0),
        })
    }

    /// The usage in one provider JSON document: a whole answer (OpenAI chat
    /// completion, Anthropic message), an OpenAI stream chunk carrying `usage`
    /// (sent last when `stream_options.include_usage` is set), or an Anthropic
    /// `message_start` / `message_delta` event. `None` when it has none.
    ///
    /// Stream counts are running totals: fold each event's usage into one with
    /// [`accumulate`](Self::accumulate).
    pub fn from_json(document: &Value) -> Option<Self> {
        let usage = document
            .get("usage")
            .filter(|usage| usage.is_object())
            .or_else(|| document.get("message").and_then(|m| m.get("usage")))?;
        Self::from_usage_object(usage)
    }

    /// Fold a later stream event's counts into these. Providers send running
    /// totals (Anthropic's `message_start` has the input, its `message_delta`s the
    /// output so far), so each count keeps its largest value.
    pub fn accumulate(&mut self, later: TokenUsage) {
        self.input_tokens = self.input_tokens.max(later.input_tokens);
        self.cached_input_tokens = self.cached_input_tokens.max(later.cached_input_tokens);
        self.output_tokens = self.output_tokens.max(later.output_tokens);
    }
}

#[cfg(feature = "reqwest")]
impl From<crate::client::Usage> for TokenUsage {
    fn from(usage: crate::client::Usage) -> Self {
        Self::new(
            u64::from(usage.input_tokens),
            u64::from(usage.output_tokens),
        )
    }
}

/// What a provider reported for one answer: the model that answered and the
/// tokens it used. An `http::Response` carries it in its extensions (see
/// [`ReportUsage`](super::ReportUsage)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageReport {
    /// The model, as the provider named it.
    pub model: Arc<str>,
    /// The tokens.
    pub tokens: TokenUsage,
}

impl UsageReport {
    /// A report for `model`.
    pub fn new(model: impl Into<Arc<str>>, tokens: TokenUsage) -> Self {
        Self {
            model: model.into(),
            tokens,
        }
    }

    /// The model and usage of a whole answer's JSON body (OpenAI or Anthropic).
    /// `None` when the body is not JSON or has no `model` or no `usage`.
    pub fn from_answer_body(body: &[u8]) -> Option<Self> {
        let document: Value = serde_json::from_slice(body).ok()?;
        let model = document.get("model")?.as_str()?;
        Some(Self::new(model, TokenUsage::from_json(&document)?))
    }
}

/// An amount of money, in US dollars, counted in whole nano-dollars (10⁻⁹ USD) so
/// sums are exact: a price of $0.15 per million tokens is 150 nano-dollars a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cost {
    nano_usd: u64,
}

impl Cost {
    /// Nothing.
    pub const ZERO: Cost = Cost { nano_usd: 0 };

    /// This many nano-dollars.
    pub const fn from_nano_usd(nano_usd: u64) -> Self {
        Self { nano_usd }
    }

    /// The amount in nano-dollars.
    pub const fn nano_usd(self) -> u64 {
        self.nano_usd
    }

    /// The amount in dollars (for display; sum with [`nano_usd`](Self::nano_usd)).
    pub fn usd(self) -> f64 {
        self.nano_usd as f64 / 1e9
    }

    /// The sum, saturating.
    #[must_use]
    pub const fn saturating_add(self, other: Cost) -> Self {
        Self {
            nano_usd: self.nano_usd.saturating_add(other.nano_usd),
        }
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.9}", self.usd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anthropic_cache_reads_and_writes_count_as_input() {
        let usage = json!({"input_tokens": 10, "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5, "output_tokens": 7});
        assert_eq!(
            TokenUsage::from_usage_object(&usage),
            Some(TokenUsage {
                input_tokens: 115,
                cached_input_tokens: 100,
                output_tokens: 7
            })
        );
    }

    #[test]
    fn openai_cached_tokens_never_exceed_the_prompt() {
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 9}});
        let tokens = TokenUsage::from_usage_object(&usage).unwrap();
        assert_eq!(tokens.cached_input_tokens, 3);
    }

    #[test]
    fn documents_without_usage_report_none() {
        assert_eq!(TokenUsage::from_json(&json!({"usage": null})), None);
        assert_eq!(TokenUsage::from_json(&json!({"choices": []})), None);
        assert_eq!(TokenUsage::from_json(&json!({"usage": {"x": 1}})), None);
        assert_eq!(UsageReport::from_answer_body(b"not json"), None);
    }

    #[test]
    fn cost_displays_dollars() {
        assert_eq!(Cost::from_nano_usd(1_500).to_string(), "$0.000001500");
        assert_eq!(
            Cost::from_nano_usd(u64::MAX).saturating_add(Cost::from_nano_usd(1)),
            Cost::from_nano_usd(u64::MAX)
        );
    }
}
