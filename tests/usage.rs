//! Usage and cost: the LiteLLM price file, and `UsageLayer` over both clients
//! (non-stream and stream) at real loopback upstreams, with its metrics.
#![cfg(feature = "reqwest")]
#[path = "support/llm.rs"]
mod llm;
mod support;

use std::sync::{Arc, Mutex};

use llm::{anthropic, openai};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{fixture, Reply, Step, Upstream};
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_resilience::client::{ChatRequest, Message};
use tower_llm_resilience::fallback::FallbackLayer;
use tower_llm_resilience::usage::{
    Cost, ModelPrice, PriceError, PriceTable, TokenUsage, UsageLayer, UsageRecord, UsageReport,
};

fn prices() -> PriceTable {
    PriceTable::from_litellm_json(fixture("usage/litellm_prices.json").as_bytes()).unwrap()
}

fn request(stream: bool) -> ChatRequest {
    ChatRequest::new(vec![Message::user("Hello!")]).stream(stream)
}

/// A layer that keeps every record it is handed.
fn recording() -> (UsageLayer, Arc<Mutex<Vec<UsageRecord>>>) {
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = records.clone();
    let layer = UsageLayer::new(prices()).on_record(move |r| sink.lock().unwrap().push(r.clone()));
    (layer, records)
}

/// The counters of a snapshot (taking one resets them), keyed by name, model, tier.
type Counters = Vec<(String, Option<String>, Option<String>, u64)>;

fn counters(snapshotter: &Snapshotter) -> Counters {
    let mut out = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |n: &str| {
            key.labels()
                .find(|l| l.key() == n)
                .map(|l| l.value().to_owned())
        };
        if let DebugValue::Counter(n) = value {
            out.push((key.name().to_owned(), label("model"), label("tier"), n));
        }
    }
    out
}

fn counter(counters: &Counters, name: &str, model: &str, tier: &str) -> u64 {
    counters
        .iter()
        .filter(|(n, m, t, _)| {
            n == name && m.as_deref() == Some(model) && t.as_deref() == Some(tier)
        })
        .map(|(.., value)| value)
        .sum()
}

#[test]
fn litellm_price_file_loads_token_prices_and_skips_the_rest() {
    let table = prices();
    assert_eq!(table.len(), 4);
    // sample_spec (strings), dall-e-3 (per pixel), broken-negative.
    assert_eq!(table.skipped(), 3);
    let mini = table.get("gpt-4o-mini").unwrap();
    assert!((mini.input_per_million() - 0.15).abs() < 1e-12);
    assert!((mini.output_per_million() - 0.60).abs() < 1e-12);
    assert!((mini.cached_input_per_million().unwrap() - 0.075).abs() < 1e-12);
    // A provider prefix is tried without it; the file's own prefixed names match.
    assert!(table.get("openai/gpt-4o-mini").is_some());
    assert!(table.get("openai/gpt-4o").is_some());
    assert!(table.get("gpt-4o").is_none());
    assert!(table.get("dall-e-3").is_none());
}

#[test]
fn costs_are_exact_nano_dollars_with_cached_input_cheaper() {
    let table = prices();
    let tokens = TokenUsage {
        input_tokens: 1_000_000,
        cached_input_tokens: 400_000,
        output_tokens: 10_000,
    };
    // 600k × $0.15/M + 400k × $0.075/M + 10k × $0.60/M = 0.09 + 0.03 + 0.006
    assert_eq!(
        table.cost("gpt-4o-mini", &tokens),
        Some(Cost::from_nano_usd(126_000_000))
    );
    assert_eq!(table.cost("ollama/llama3", &tokens), Some(Cost::ZERO));
    assert_eq!(table.cost("unknown-model", &tokens), None);
    // Without a cached-input price, cached tokens cost the input price.
    let plain = ModelPrice::new(1.0, 2.0).unwrap();
    assert_eq!(plain.cost(&tokens), Cost::from_nano_usd(1_020_000_000));
}

#[test]
fn bad_prices_and_files_are_clear_errors() {
    let err = ModelPrice::new(f64::NAN, 1.0).unwrap_err();
    assert!(err.to_string().contains("input price"), "{err}");
    assert!(matches!(
        ModelPrice::new(1.0, 1.0).unwrap().with_cached_input(-0.5),
        Err(PriceError::InvalidPrice {
            which: "cached input",
            ..
        })
    ));
    assert!(matches!(
        PriceTable::from_litellm_json(b"[1, 2]"),
        Err(PriceError::Parse(_))
    ));
    let huge = vec![b' '; tower_llm_resilience::usage::MAX_PRICE_FILE_BYTES + 1];
    assert!(matches!(
        PriceTable::from_litellm_json(&huge),
        Err(PriceError::TooLarge { .. })
    ));
    let missing = PriceTable::load_litellm_file("/nonexistent/prices.json").unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/prices.json"),
        "{missing}"
    );
}

#[tokio::test]
async fn openai_usage_and_cost_non_stream_and_stream() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let upstream = Upstream::start(|request, _| {
        if request.json()["stream"] == true {
            Reply::sse(Step::events(&fixture("openai/chat_stream.sse")))
        } else {
            Reply::ok_json(&fixture("openai/chat_response.json"))
        }
    })
    .await;
    let (layer, records) = recording();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(openai(&upstream));
    service.clone().oneshot(request(false)).await.unwrap();
    service.oneshot(request(true)).await.unwrap();

    let records = records.lock().unwrap().clone();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0].report,
        UsageReport::new("gpt-4o-mini", TokenUsage::new(9, 12))
    );
    // 9 × 150 + 12 × 600 nano-dollars
    assert_eq!(records[0].cost, Some(Cost::from_nano_usd(8_550)));
    assert_eq!(records[1].report.tokens, TokenUsage::new(9, 3));
    assert_eq!(records[1].cost, Some(Cost::from_nano_usd(3_150)));
    assert_eq!(&*records[0].tier, "primary");

    let seen = counters(&snapshotter);
    let count = |name| counter(&seen, name, "gpt-4o-mini", "primary");
    assert_eq!(count("llm_usage_input_tokens_total"), 18);
    assert_eq!(count("llm_usage_output_tokens_total"), 15);
    assert_eq!(count("llm_usage_cost_nano_usd_total"), 11_700);
    assert_eq!(count("llm_usage_answers_total"), 2);
}

#[tokio::test]
async fn anthropic_usage_and_cost_non_stream_and_stream() {
    let upstream = Upstream::start(|request, _| {
        if request.json()["stream"] == true {
            Reply::sse(Step::events(&fixture("anthropic/messages_stream.sse")))
        } else {
            Reply::ok_json(&fixture("anthropic/messages_response.json"))
        }
    })
    .await;
    let (layer, records) = recording();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(anthropic(&upstream));
    service.clone().oneshot(request(false)).await.unwrap();
    service.oneshot(request(true)).await.unwrap();

    let records = records.lock().unwrap().clone();
    assert_eq!(
        records[0].report,
        UsageReport::new("claude-sonnet-4-20250514", TokenUsage::new(2095, 503))
    );
    // 2095 × 3000 + 503 × 15000
    assert_eq!(records[0].cost, Some(Cost::from_nano_usd(13_830_000)));
    // message_start's input, message_delta's output.
    assert_eq!(records[1].report.tokens, TokenUsage::new(25, 15));
    assert_eq!(records[1].cost, Some(Cost::from_nano_usd(300_000)));
}

#[tokio::test]
async fn degraded_answers_are_labelled_by_the_tier_and_failures_not_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let failing = Upstream::always(Reply::status(500, r#"{"error":{"message":"boom"}}"#)).await;
    let claude =
        Upstream::always(Reply::ok_json(&fixture("anthropic/messages_response.json"))).await;
    let fallback = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", anthropic(&claude))
        .build()
        .unwrap();
    let (layer, records) = recording();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(fallback)
        .service(openai(&failing));
    service.oneshot(request(false)).await.unwrap();
    let bare = ServiceBuilder::new().layer(layer).service(openai(&failing));
    bare.oneshot(request(false)).await.unwrap_err();

    let records = records.lock().unwrap().clone();
    assert_eq!(records.len(), 1, "the failure is not counted");
    assert_eq!(&*records[0].tier, "claude");
    let seen = counters(&snapshotter);
    let count = |name| counter(&seen, name, "claude-sonnet-4-20250514", "claude");
    assert_eq!(count("llm_usage_output_tokens_total"), 503);
    assert_eq!(
        counter(&seen, "llm_usage_answers_total", "gpt-4o-mini", "primary"),
        0
    );
}

#[tokio::test]
async fn unpriced_models_are_counted_under_one_label_without_cost() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let body = fixture("openai/chat_response.json").replace("gpt-4o-mini", "my-finetune-xyz");
    let upstream = Upstream::always(Reply::ok_json(&body)).await;
    let (layer, records) = recording();
    ServiceBuilder::new()
        .layer(layer)
        .service(openai(&upstream))
        .oneshot(request(false))
        .await
        .unwrap();
    assert_eq!(records.lock().unwrap()[0].cost, None);
    let seen = counters(&snapshotter);
    let count = |name| counter(&seen, name, "unpriced", "primary");
    assert_eq!(count("llm_usage_input_tokens_total"), 9);
    assert_eq!(count("llm_usage_cost_nano_usd_total"), 0);
}

#[test]
fn stream_events_of_both_providers_fold_into_one_usage() {
    let fold = |sse: &str| {
        let mut total = TokenUsage::default();
        for line in sse.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let Ok(event) = serde_json::from_str(data) else {
                continue;
            };
            if let Some(tokens) = TokenUsage::from_json(&event) {
                total.accumulate(tokens);
            }
        }
        total
    };
    assert_eq!(
        fold(&fixture("openai/chat_stream.sse")),
        TokenUsage::new(9, 3)
    );
    assert_eq!(
        fold(&fixture("anthropic/messages_stream.sse")),
        TokenUsage::new(25, 15)
    );
}

#[tokio::test]
async fn http_responses_carry_report_in_and_cost_out() {
    let body = fixture("anthropic/messages_response.json");
    let report = UsageReport::from_answer_body(body.as_bytes()).unwrap();
    assert_eq!(report.tokens, TokenUsage::new(2095, 503));
    let service = ServiceBuilder::new()
        .layer(UsageLayer::new(prices()))
        .service(tower::service_fn(move |_: ()| {
            let mut response = http::Response::new(());
            response.extensions_mut().insert(report.clone());
            async move { Ok::<_, std::convert::Infallible>(response) }
        }));
    let response = service.oneshot(()).await.unwrap();
    assert_eq!(
        response.extensions().get::<Cost>(),
        Some(&Cost::from_nano_usd(13_830_000))
    );
}
