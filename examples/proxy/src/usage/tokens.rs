//! A provider's `usage` object read straight into counts, without building a
//! `serde_json::Value` (it is read on every answered request).
//!
//! The same reading as the library's `TokenUsage::from_usage_object`: a count
//! that is not a non-negative integer is absent, unknown members are skipped.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use tower_llm_resilience::usage::TokenUsage;

/// OpenAI's or Anthropic's `usage` members that count tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct UsageObject {
    prompt_tokens: Count,
    completion_tokens: Count,
    prompt_tokens_details: Details,
    input_tokens: Count,
    output_tokens: Count,
    cache_read_input_tokens: Count,
    cache_creation_input_tokens: Count,
}

impl UsageObject {
    /// The counts, in the library's terms; `None` when it is neither provider's.
    pub(super) fn tokens(&self) -> Option<TokenUsage> {
        if let Some(prompt) = self.prompt_tokens.0 {
            return Some(TokenUsage {
                input_tokens: prompt,
                cached_input_tokens: self
                    .prompt_tokens_details
                    .cached_tokens
                    .0
                    .unwrap_or(0)
                    .min(prompt),
                output_tokens: self.completion_tokens.0.unwrap_or(0),
            });
        }
        if self.input_tokens.0.is_none() && self.output_tokens.0.is_none() {
            return None;
        }
        let read = self.cache_read_input_tokens.0.unwrap_or(0);
        let written = self.cache_creation_input_tokens.0.unwrap_or(0);
        Some(TokenUsage {
            input_tokens: self
                .input_tokens
                .0
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(written),
            cached_input_tokens: read,
            output_tokens: self.output_tokens.0.unwrap_or(0),
        })
    }
}

/// `prompt_tokens_details`: its `cached_tokens`, or nothing when it is not an
/// object.
#[derive(Debug, Default)]
struct Details {
    cached_tokens: Count,
}

/// A count: `Some` for a non-negative integer, `None` for any other value.
#[derive(Debug, Default)]
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CountVisitor)
    }
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DetailsVisitor)
    }
}

/// Accepts any JSON value, skipping containers: a count when it is a
/// non-negative integer.
struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E>(self, n: u64) -> Result<Count, E> {
        Ok(Count(Some(n)))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Count, E> {
        Ok(Count(u64::try_from(n).ok()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_unit<E>(self) -> Result<Count, E> {
        Ok(Count(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }
}

struct DetailsVisitor;

impl<'de> Visitor<'de> for DetailsVisitor {
    type Value = Details;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Details, A::Error> {
        let mut details = Details::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "cached_tokens" {
                details.cached_tokens = map.next_value()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(details)
    }
    // Any other value: no details.
    fn visit_u64<E>(self, _: u64) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_unit<E>(self) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Details, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Details::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The same counts as the library's reading, for every shape tried.
    #[test]
    fn reads_as_the_library_does() {
        let cases = [
            json!({"prompt_tokens": 5, "completion_tokens": 7}),
            json!({"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 9, "audio_tokens": [1]}}),
            json!({"prompt_tokens": 3, "prompt_tokens_details": "x"}),
            json!({"prompt_tokens": 3, "prompt_tokens_details": null, "completion_tokens": -1}),
            json!({"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7}),
            json!({"input_tokens": 1.5, "output_tokens": {"a": [1, {"b": 2}]}}),
            json!({"output_tokens": 4, "server_tool_use": {"web_search_requests": 1}}),
            json!({"x": 1}),
            json!({"prompt_tokens": u64::MAX, "completion_tokens": "7"}),
        ];
        for case in cases {
            let text = case.to_string();
            let ours = serde_json::from_str::<UsageObject>(&text).unwrap().tokens();
            assert_eq!(ours, TokenUsage::from_usage_object(&case), "{text}");
        }
        assert!(serde_json::from_str::<UsageObject>("3").is_err());
    }
}
