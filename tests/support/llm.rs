//! The chat clients pointed at a test upstream (gpt-4o-mini and Claude Sonnet 4,
//! the models of the fixtures). Include with
//! `#[path = "support/llm.rs"] mod llm;` next to `mod support;`.
#![allow(dead_code)]

use tower_llm_resilience::client::{AnthropicClient, OpenAiClient};

use crate::support::Upstream;

/// An OpenAI-compatible client for `upstream`, model `gpt-4o-mini`.
pub fn openai(upstream: &Upstream) -> OpenAiClient {
    OpenAiClient::builder()
        .base_url(format!("{}/v1", upstream.url()))
        .api_key("sk-test")
        .model("gpt-4o-mini")
        .build()
        .expect("a valid client")
}

/// An Anthropic client for `upstream`, model `claude-sonnet-4-20250514`.
pub fn anthropic(upstream: &Upstream) -> AnthropicClient {
    AnthropicClient::builder()
        .base_url(upstream.url())
        .api_key("sk-ant-test")
        .model("claude-sonnet-4-20250514")
        .build()
        .expect("a valid client")
}
