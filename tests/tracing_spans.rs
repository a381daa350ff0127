//! The crate's `tracing` spans (the "Tracing" table of the crate docs), seen by
//! a subscriber layer that captures every span, its fields and its parent:
//! the OpenTelemetry GenAI client span of each chat call, the circuit breaker's
//! and the fallback tier's spans around it, batch items, escalations; and no
//! prompt or answer text unless the client opted in.
//!
//! One test, in its own binary: it installs a thread-local subscriber, and
//! `tracing` caches per-callsite interest process-wide (see
//! `circuit_breaker_logs.rs`).
#![cfg(feature = "reqwest")]
mod escalation_util;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use support::{fixture, Reply, Step, Upstream};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::client::{ChatRequest, Message, OpenAiClient};
use tower_llm_resilience::escalation::EscalationLayer;
use tower_llm_resilience::fallback::FallbackLayer;
use tower_llm_resilience::partial_batch::{Batch, PartialBatchLayer};
use tower_llm_resilience::BoxError;
use tracing::Instrument;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const PROMPT: &str = "PROMPT-SECRET-42 summarise my medical record";

/// One span or event, as captured.
#[derive(Clone, Debug)]
struct Rec {
    /// The span's name, or the event's message.
    name: String,
    fields: BTreeMap<String, String>,
    /// The index of the parent span's record.
    parent: Option<usize>,
    is_event: bool,
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<Rec>>>);

/// Where a span's record is, kept in the span's extensions.
struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Captured {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("a new span is registered");
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<Index>().map(|i| i.0));
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut records = self.0.lock().unwrap();
        records.push(Rec {
            name: attrs.metadata().name().to_owned(),
            fields,
            parent,
            is_event: false,
        });
        span.extensions_mut().insert(Index(records.len() - 1));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("a recorded span exists");
        let Some(index) = span.extensions().get::<Index>().map(|i| i.0) else {
            return;
        };
        values.record(&mut Fields(&mut self.0.lock().unwrap()[index].fields));
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let parent = ctx
            .event_span(event)
            .and_then(|span| span.extensions().get::<Index>().map(|i| i.0));
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let name = fields.get("message").cloned().unwrap_or_default();
        self.0.lock().unwrap().push(Rec {
            name,
            fields,
            parent,
            is_event: true,
        });
    }
}

impl Captured {
    fn take(&self) -> Vec<Rec> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn spans<'a>(records: &'a [Rec], name: &str) -> Vec<(usize, &'a Rec)> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_event && r.name == name)
        .collect()
}

fn field<'a>(record: &'a Rec, name: &str) -> Option<&'a str> {
    record.fields.get(name).map(String::as_str)
}

fn parent_name(records: &[Rec], record: &Rec) -> Option<String> {
    record.parent.map(|i| records[i].name.clone())
}

/// Nothing captured holds the prompt (or, unless asked, the answer).
fn assert_no_text(records: &[Rec], text: &str) {
    for record in records {
        for (name, value) in &record.fields {
            assert!(
                !value.contains(text),
                "{} field {name} holds {text:?}: {value}",
                record.name
            );
        }
    }
}

fn client(upstream: &Upstream, content: bool) -> OpenAiClient {
    OpenAiClient::builder()
        .base_url(format!("{}/v1", upstream.url()))
        .api_key("sk-test")
        .model("gpt-4o-mini")
        .trace_content(content)
        .build()
        .unwrap()
}

fn ask() -> ChatRequest {
    ChatRequest::new(vec![Message::user(PROMPT)])
}

fn breaker(name: &str) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .consecutive_failures(5)
        .build()
        .unwrap()
}

#[test]
fn spans_follow_the_table() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(fallback_chain(&captured));
    runtime.block_on(streams_and_content(&captured));
    runtime.block_on(escalation(&captured));
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    paused.block_on(batch_items(&captured));
}

/// A request span around a fallback from a failing upstream to a working one,
/// each behind its own circuit breaker.
async fn fallback_chain(captured: &Captured) {
    let down = Upstream::always(Reply::status(500, r#"{"error":{"message":"boom"}}"#)).await;
    let up = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    let secondary = ServiceBuilder::new()
        .layer(breaker("openai-b"))
        .service(client(&up, false));
    let mut chain = ServiceBuilder::new()
        .layer(
            FallbackLayer::builder()
                .primary_name("gpt")
                .alternate("backup", secondary)
                .build()
                .unwrap(),
        )
        .layer(breaker("openai-a"))
        .service(client(&down, false));
    // As a server's request span would (tower-http's `TraceLayer` does): the
    // call is made, and its future polled, in the span.
    let request = tracing::info_span!("request");
    let ready = chain.ready().await.unwrap();
    let answer = request
        .in_scope(|| ready.call(ask()))
        .instrument(request.clone())
        .await
        .unwrap();
    assert_eq!(answer.model, "gpt-4o-mini");

    let records = captured.take();
    assert_no_text(&records, PROMPT);
    assert_no_text(&records, "how may I assist");
    let chats = spans(&records, "gen_ai.chat");
    assert_eq!(chats.len(), 2, "{records:#?}");
    let (_, failed) = chats[0];
    assert_eq!(field(failed, "otel.name"), Some("chat gpt-4o-mini"));
    assert_eq!(field(failed, "otel.kind"), Some("client"));
    assert_eq!(field(failed, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(field(failed, "gen_ai.system"), Some("openai"));
    assert_eq!(field(failed, "gen_ai.request.model"), Some("gpt-4o-mini"));
    assert_eq!(field(failed, "error.type"), Some("server_error"));
    assert_eq!(field(failed, "otel.status_code"), Some("ERROR"));
    assert_eq!(field(failed, "gen_ai.response.model"), None);
    let (_, answered) = chats[1];
    assert_eq!(
        field(answered, "gen_ai.response.model"),
        Some("gpt-4o-mini")
    );
    assert_eq!(field(answered, "gen_ai.usage.input_tokens"), Some("9"));
    assert_eq!(field(answered, "gen_ai.usage.output_tokens"), Some("12"));
    assert_eq!(field(answered, "error.type"), None);

    // request > circuit_breaker(openai-a) > gen_ai.chat (failed)
    let failed_breaker = &records[failed.parent.expect("in the breaker's span")];
    assert_eq!(failed_breaker.name, "circuit_breaker");
    assert_eq!(field(failed_breaker, "llm.circuit"), Some("openai-a"));
    assert_eq!(field(failed_breaker, "llm.circuit.state"), Some("closed"));
    assert_eq!(field(failed_breaker, "error.type"), Some("server_error"));
    assert_eq!(
        parent_name(&records, failed_breaker).as_deref(),
        Some("request")
    );
    // request > fallback_tier(backup) > circuit_breaker(openai-b) > gen_ai.chat
    let breaker_b = &records[answered.parent.expect("in the breaker's span")];
    assert_eq!(field(breaker_b, "llm.circuit"), Some("openai-b"));
    assert_eq!(field(breaker_b, "error.type"), None);
    let tier = &records[breaker_b.parent.expect("in the tier's span")];
    assert_eq!(tier.name, "fallback_tier");
    assert_eq!(field(tier, "llm.tier"), Some("backup"));
    assert_eq!(field(tier, "llm.tier.index"), Some("1"));
    assert_eq!(parent_name(&records, tier).as_deref(), Some("request"));
    // The fallback's decision is an event of the request's span.
    let degraded = records
        .iter()
        .find(|r| r.is_event && r.name == "degraded answer")
        .expect("a degraded answer event");
    assert_eq!(parent_name(&records, degraded).as_deref(), Some("request"));
}

/// A stream's span records the usage of its last event when it ends; content
/// goes into spans only for a client that opted in.
async fn streams_and_content(captured: &Captured) {
    let upstream =
        Upstream::always(Reply::sse(Step::events(&fixture("openai/chat_stream.sse")))).await;
    let mut stream = client(&upstream, false)
        .streaming()
        .oneshot(ask())
        .await
        .unwrap();
    while let Some(delta) = stream.next().await {
        delta.unwrap();
    }
    drop(stream);
    let records = captured.take();
    assert_no_text(&records, PROMPT);
    let chats = spans(&records, "gen_ai.chat");
    assert_eq!(chats.len(), 1);
    let (_, chat) = chats[0];
    assert_eq!(field(chat, "llm.streaming"), Some("true"));
    assert_eq!(field(chat, "gen_ai.response.model"), Some("gpt-4o-mini"));
    assert_eq!(field(chat, "gen_ai.usage.input_tokens"), Some("9"));
    assert_eq!(field(chat, "gen_ai.usage.output_tokens"), Some("3"));

    // Opted in: the prompt and the answer, as events of the chat span.
    let upstream = Upstream::always(Reply::ok_json(&fixture("openai/chat_response.json"))).await;
    client(&upstream, true).oneshot(ask()).await.unwrap();
    let records = captured.take();
    let prompt = records
        .iter()
        .find(|r| r.is_event && r.name == "gen_ai.content.prompt")
        .expect("the prompt event");
    assert!(field(prompt, "gen_ai.prompt").unwrap().contains(PROMPT));
    assert_eq!(
        parent_name(&records, prompt).as_deref(),
        Some("gen_ai.chat")
    );
    let completion = records
        .iter()
        .find(|r| r.is_event && r.name == "gen_ai.content.completion")
        .expect("the completion event");
    assert!(field(completion, "gen_ai.completion")
        .unwrap()
        .contains("how may I assist"));
}

/// An escalated request's span carries its id and outcome.
async fn escalation(captured: &Captured) {
    use escalation_util::{chat_request, escalated, form_gate, llm, send, HOUR};
    let layer = EscalationLayer::builder(form_gate())
        .detach(HOUR)
        .build()
        .unwrap();
    let (inner, _) = llm("{}");
    let mut service = layer.layer(inner);
    let escalated = escalated(
        send(&mut service, chat_request("/forms"))
            .await
            .unwrap_err(),
    );
    let records = captured.take();
    let spans = spans(&records, "escalation");
    assert_eq!(spans.len(), 1, "{records:#?}");
    let (_, span) = spans[0];
    assert_eq!(field(span, "llm.escalation.stage"), Some("request"));
    assert_eq!(
        field(span, "llm.escalation.id"),
        Some(&*escalated.id.to_string())
    );
    assert_eq!(field(span, "llm.escalation.outcome"), Some("detached"));
    assert_no_text(&records, escalation_util::PROMPT);
}

/// Each attempt of a batch item is a span under the batch's, with its key and
/// attempt number, and the failure kind of a failed attempt.
async fn batch_items(captured: &Captured) {
    let calls = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let seen = calls.clone();
    let inner = service_fn(move |key: String| {
        let attempt = {
            let mut calls = seen.lock().unwrap();
            let n = calls.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        async move {
            if key == "b" && attempt == 1 {
                return Err::<String, BoxError>(
                    ClassifiedError::new(
                        FailureKind::RateLimited {
                            retry_after: Some(Duration::from_secs(1)),
                        },
                        "slow down",
                    )
                    .into(),
                );
            }
            Ok(format!("done:{key}"))
        }
    });
    let mut service = PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .max_attempts(3)
        .seed(7)
        .build()
        .unwrap()
        .layer(inner);
    let batch =
        Batch::from_pairs([("a", "a".to_owned()), ("b", "b".to_owned())]).with_id("nightly-42");
    let report = service.ready().await.unwrap().call(batch).await.unwrap();
    assert_eq!(report.ok, 2);

    let records = captured.take();
    let items = spans(&records, "batch_item");
    let b: Vec<&Rec> = items
        .iter()
        .map(|(_, r)| *r)
        .filter(|r| field(r, "llm.batch.item_key") == Some("b"))
        .collect();
    assert_eq!(b.len(), 2, "{records:#?}");
    assert_eq!(field(b[0], "llm.attempt"), Some("1"));
    assert_eq!(field(b[0], "error.type"), Some("rate_limited"));
    assert_eq!(field(b[1], "llm.attempt"), Some("2"));
    assert_eq!(field(b[1], "error.type"), None);
    for item in &b {
        assert_eq!(field(item, "llm.batch.id"), Some("nightly-42"));
        let batch = &records[item.parent.expect("in the batch's span")];
        assert_eq!(batch.name, "partial_batch");
        assert_eq!(field(batch, "llm.batch.id"), Some("nightly-42"));
        assert_eq!(field(batch, "llm.batch.items"), Some("2"));
    }
}
