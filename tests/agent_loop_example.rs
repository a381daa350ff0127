//! `cargo run --example agent_loop` as a test: the agent against the example's
//! demo servers, a tool call from the OpenAI-compatible tier, then (that tier
//! down) the tool result answered by the Anthropic tier.
#![cfg(feature = "reqwest")]

#[path = "../examples/agent_loop.rs"]
#[allow(dead_code)] // the example's `main`
mod agent_loop;

use tower_llm_resilience::fallback::MarkDegraded;

#[tokio::test]
async fn the_agent_calls_the_tool_and_finishes_on_the_next_tier() {
    let endpoints = agent_loop::Endpoints::demo().await.unwrap();
    let transcript = agent_loop::run(endpoints, "What's the weather in Paris right now?")
        .await
        .unwrap();
    assert_eq!(transcript.steps.len(), 2, "{:#?}", transcript.steps);
    assert_eq!(
        transcript.steps[0],
        r#"openai: calls get_weather({"city":"Paris"}) -> {"city":"Paris","sky":"sunny","temperature":21,"unit":"C"}"#
    );
    assert!(
        transcript.steps[1].starts_with("anthropic (degraded: "),
        "{}",
        transcript.steps[1]
    );
    let answer = &transcript.answer;
    assert_eq!(answer.provider, "anthropic");
    assert_eq!(answer.content, "It is 21°C and sunny in Paris.");
    let degraded = answer.degraded().expect("the secondary answered");
    assert_eq!(degraded.failed()[0].name(), "openai");
}
