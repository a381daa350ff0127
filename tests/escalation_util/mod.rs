//! Helpers shared by the escalation tests.
#![allow(dead_code)]

pub mod contract;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tower_llm_resilience::escalation::{
    Escalated, EscalationError, ResumeToken, RESUME_TOKEN_HEADER,
};
use tower_llm_resilience::BoxError;

pub type Llm = BoxCloneService<http::Request<Bytes>, http::Response<Bytes>, BoxError>;

/// The secret every test request carries; it must never be stored, logged or sent.
pub const API_KEY: &str = "sk-live-SECRET-4242";
/// Prompt text that must never be logged.
pub const PROMPT: &str = "PROMPT-TEXT parse this ambiguous form";

/// An LLM that always answers `content`, counting its calls.
pub fn llm(content: &str) -> (Llm, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let body = serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
    })
    .to_string();
    let service = tower::service_fn(move |_req: http::Request<Bytes>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let body = body.clone();
        async move { Ok::<_, BoxError>(http::Response::new(Bytes::from(body))) }
    });
    (BoxCloneService::new(service), calls)
}

/// A chat request with credentials in headers, query and body.
pub fn chat_request(path: &str) -> http::Request<Bytes> {
    let body = serde_json::json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": PROMPT}],
        "api_key": API_KEY,
    });
    http::Request::post(format!("http://llm.example{path}?key={API_KEY}&v=1"))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

pub fn with_header_token(
    mut request: http::Request<Bytes>,
    token: &ResumeToken,
) -> http::Request<Bytes> {
    request
        .headers_mut()
        .insert(RESUME_TOKEN_HEADER, token.expose().parse().unwrap());
    request
}

pub async fn send<S>(
    service: &mut S,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, BoxError>
where
    S: Service<http::Request<Bytes>, Response = http::Response<Bytes>, Error = BoxError>,
{
    service.ready().await?.call(request).await
}

/// Calls the service and runs the response future in its own task.
pub async fn spawn_call<S>(
    service: &mut S,
    request: http::Request<Bytes>,
) -> tokio::task::JoinHandle<Result<http::Response<Bytes>, BoxError>>
where
    S: Service<http::Request<Bytes>, Response = http::Response<Bytes>, Error = BoxError>,
    S::Future: Send + 'static,
{
    let future = service.ready().await.unwrap().call(request);
    tokio::spawn(future)
}

pub fn escalation_error(error: &BoxError) -> &EscalationError {
    error
        .downcast_ref::<EscalationError>()
        .unwrap_or_else(|| panic!("not an escalation error: {error}"))
}

pub fn escalated(error: BoxError) -> Escalated {
    match escalation_error(&error) {
        EscalationError::Escalated(e) => e.clone(),
        other => panic!("expected Escalated, got {other:?}"),
    }
}

/// Polls `check` (advancing paused time by 50 ms between tries) until it is true.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2_000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A tracing subscriber that writes every event and span field into one string,
/// so tests can check what would have been logged.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<String>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

struct Visitor<'a>(&'a mut String);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for CapturedLogs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut out = self.0.lock().unwrap();
        span.record(&mut Visitor(&mut out));
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Visitor(&mut self.0.lock().unwrap()));
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap();
        out.push('\n');
        event.record(&mut Visitor(&mut out));
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

use tower_llm_resilience::escalation::store::{StoreFuture, Update};
use tower_llm_resilience::escalation::{
    AuditEntry, EscalationId, EscalationRecord, EscalationStore, MemoryStore, Status,
};

/// A memory store whose reads yield after reading, so that concurrent tasks all read
/// the same version before any of them writes: the compare-and-swap must sort it out.
#[derive(Debug, Default)]
pub struct RacyStore(pub MemoryStore);

impl EscalationStore for RacyStore {
    fn insert(&self, record: EscalationRecord, audit: AuditEntry) -> StoreFuture<'_, ()> {
        self.0.insert(record, audit)
    }

    fn get<'a>(&'a self, id: &'a EscalationId) -> StoreFuture<'a, Option<EscalationRecord>> {
        Box::pin(async move {
            let record = self.0.get(id).await;
            tokio::task::yield_now().await;
            record
        })
    }

    fn update(
        &self,
        expected: u64,
        record: EscalationRecord,
        audit: AuditEntry,
    ) -> StoreFuture<'_, Update> {
        self.0.update(expected, record, audit)
    }

    fn list(&self, status: Option<Status>) -> StoreFuture<'_, Vec<EscalationRecord>> {
        self.0.list(status)
    }

    fn audit<'a>(&'a self, id: Option<&'a EscalationId>) -> StoreFuture<'a, Vec<AuditEntry>> {
        self.0.audit(id)
    }
}

/// An hour: the escalation lifetime of the detach-mode tests.
pub const HOUR: Duration = Duration::from_secs(3600);

/// The seed scenario's approval gate: requests to `/forms` need a human.
pub fn form_gate(
) -> tower_llm_resilience::escalation::RequestPredicate<fn(&http::Request<Bytes>) -> bool> {
    tower_llm_resilience::escalation::RequestPredicate::new(
        "ambiguous form needs a human",
        |req: &http::Request<Bytes>| req.uri().path() == "/forms",
    )
}
