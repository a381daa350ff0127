//! `POST /v1/batch`: many chat requests through a `PartialBatchLayer`.
//!
//! ```json
//! {"batch_id": "nightly-42", "requests": [{"key": "a", "body": {"model": "smart", "messages": [...]}}]}
//! ```
//!
//! Each item goes through its model's tiers (fallback and circuits, no
//! escalation), is retried when its failure is retryable, and is reported on its
//! own. With a `batch_id`, successes are remembered (in memory, or in Redis with
//! `[state] redis_url`): the same id again returns them as cached and sends only
//! the items that failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{
    ClassifiedError, Classify, ErrorOnlyClassifier, FailureKind, Outcome,
};
use tower_llm_resilience::partial_batch::{
    Batch, BatchError, BatchItem, ItemOutcome, PartialBatch, PartialBatchLayer, WithStore,
};
use tower_llm_resilience::BoxError;

use crate::app::{self, Shared};
use crate::batch_store::BoundedBatchStore;
use crate::config::{BatchConfig, ConfigError};
use crate::errors;
use crate::pipeline::{answered_by, Core, ProxyClassifier, Req, RequestMeta};
use crate::state::RedisState;

/// One item, ready or already known to be invalid.
#[derive(Clone, Debug)]
pub enum ItemRequest {
    /// A request for a model's tiers.
    Ready(Box<Req>),
    /// Why it cannot be sent (reported as a fatal `bad_request`).
    Invalid(Arc<str>),
}

/// A successful item, as stored for re-runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemAnswer {
    /// The tier that answered.
    pub tier: String,
    /// Not from the first tier.
    pub degraded: bool,
    /// The `chat.completion`.
    pub response: Value,
}

/// Routes each item to its model's tiers.
#[derive(Clone)]
pub struct ItemService {
    cores: Arc<HashMap<Arc<str>, Core>>,
}

impl Service<ItemRequest> for ItemService {
    type Response = ItemAnswer;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<ItemAnswer, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, item: ItemRequest) -> Self::Future {
        let request = match item {
            ItemRequest::Ready(request) => *request,
            ItemRequest::Invalid(why) => {
                return Box::pin(async move {
                    Err(ClassifiedError::new(FailureKind::BadRequest, why.to_string()).into())
                })
            }
        };
        let core = request
            .extensions()
            .get::<RequestMeta>()
            .and_then(|meta| self.cores.get(&meta.model))
            .cloned();
        Box::pin(async move {
            let Some(core) = core else {
                return Err(ClassifiedError::new(FailureKind::BadRequest, "unknown model").into());
            };
            let primary = core.primary().clone();
            let result = core.oneshot(request).await;
            if let Outcome::Failure(kind) = ProxyClassifier.classify(&result) {
                let message = match &result {
                    Ok(answer) => failure_message(answer.status(), answer.body().bytes()),
                    Err(e) => e.to_string(),
                };
                return Err(ClassifiedError::new(kind, message).into());
            }
            let answer = result?;
            let tier = answered_by(&answer, &primary).to_owned();
            let degraded = tier != *primary;
            let response = serde_json::from_slice(answer.body().bytes()).map_err(|e| {
                ClassifiedError::new(
                    FailureKind::InvalidResponse,
                    format!("the answer is not JSON: {e}"),
                )
            })?;
            Ok(ItemAnswer {
                tier,
                degraded,
                response,
            })
        })
    }
}

/// The provider's error message, or the status.
fn failure_message(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("the upstream answered {status}"))
}

type Runner = PartialBatch<ItemService, ErrorOnlyClassifier, WithStore>;

/// The batch service, shared by requests.
pub struct BatchRunner {
    service: Mutex<Runner>,
    max_items: usize,
    max_id_bytes: usize,
}

impl BatchRunner {
    /// Build the layer from `[batch]`; successes of named batches are kept in
    /// `redis` when given (shared by every proxy on it), else in memory.
    pub fn new(
        config: &BatchConfig,
        cores: HashMap<Arc<str>, Core>,
        redis: Option<&RedisState>,
    ) -> Result<Self, ConfigError> {
        let builder = PartialBatchLayer::builder()
            .concurrency(config.concurrency)
            .max_attempts(config.max_attempts)
            .classifier(ErrorOnlyClassifier);
        let ttl = crate::config::secs("batch.ttl_secs", config.ttl_secs)?;
        let mut builder = match redis {
            Some(redis) => builder.store(
                redis
                    .batch_store()?
                    .ttl(ttl)
                    .max_records(config.max_records)
                    .max_bytes(config.max_bytes),
            ),
            None => builder.store(BoundedBatchStore::new(
                ttl,
                config.max_records,
                config.max_bytes,
            )),
        };
        if let Some(seed) = config.seed {
            builder = builder.seed(seed);
        }
        let layer = builder
            .build()
            .map_err(|e| ConfigError(format!("batch: {e}")))?;
        let service = layer.layer(ItemService {
            cores: Arc::new(cores),
        });
        Ok(Self {
            service: Mutex::new(service),
            max_items: config.max_items,
            max_id_bytes: config.max_id_bytes,
        })
    }
}

#[derive(Deserialize)]
struct BatchBody {
    #[serde(default)]
    batch_id: Option<String>,
    requests: Vec<BatchEntry>,
}

#[derive(Deserialize)]
struct BatchEntry {
    key: String,
    body: Box<serde_json::value::RawValue>,
}

/// `POST /v1/batch`.
pub async fn handler(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    if let Err(response) = app::check_client(&state, &headers) {
        return response;
    }
    let bytes: Bytes = match app::read_body(&headers, body, state.max_body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let parsed: BatchBody = match serde_json::from_slice(&bytes) {
        Ok(parsed) => parsed,
        Err(e) => return errors::bad_request(format!("malformed batch request: {e}")),
    };
    if parsed.requests.len() > state.batch.max_items {
        return errors::bad_request(format!(
            "a batch may have at most {} requests",
            state.batch.max_items
        ));
    }
    let max_id = state.batch.max_id_bytes;
    if let Some(id) = &parsed.batch_id {
        if let Err(why) = check_name(id, max_id) {
            return errors::bad_request(format!("batch_id {why}"));
        }
    }
    // Each item is stored under its key and the digest of its request: a
    // changed request is a different item and runs again.
    let mut keys = HashMap::with_capacity(parsed.requests.len());
    let mut seen = std::collections::HashSet::with_capacity(parsed.requests.len());
    let mut items = Vec::with_capacity(parsed.requests.len());
    for entry in parsed.requests {
        if let Err(why) = check_name(&entry.key, max_id) {
            return errors::bad_request(format!("the key of an item {why}"));
        }
        let body = entry.body.get().as_bytes();
        if !seen.insert(entry.key.clone()) {
            return errors::bad_request(format!(
                "the key {:?} is used twice in this batch",
                entry.key
            ));
        }
        let stored_key = format!("{}#{}", entry.key, digest(body));
        keys.insert(stored_key.clone(), entry.key);
        let request = match app::prepare(&state.models, body, true) {
            Ok((_, prepared)) => ItemRequest::Ready(Box::new(prepared.request)),
            Err(response) => ItemRequest::Invalid(invalid_reason(response.status()).into()),
        };
        items.push(BatchItem::new(stored_key, request));
    }
    let mut batch = Batch::new(items);
    if let Some(id) = &parsed.batch_id {
        // Scoped to the client key: another client's same batch_id is another
        // batch, and never sees these results.
        let owner = crate::client_id::from_headers(&headers);
        let owner = owner.as_deref().unwrap_or("anonymous");
        batch = batch.with_id(format!("{owner}/{id}"));
    }
    let running = {
        let mut service = state
            .batch
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        service.call(batch)
    };
    let report = match running.await {
        Ok(report) => report,
        Err(BatchError::DuplicateKey { key }) => {
            let key = keys.get(&key).unwrap_or(&key);
            return errors::bad_request(format!("the key {key:?} is used twice in this batch"));
        }
        Err(e) => {
            return errors::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "batch_failed",
                e.to_string(),
            )
        }
    };
    let items: Vec<Value> = report
        .items
        .iter()
        .map(|item| {
            let mut out = serde_json::json!({
                "key": keys.get(&item.key).unwrap_or(&item.key),
                "attempts": item.attempts,
                "cached": item.from_store,
            });
            match &item.outcome {
                ItemOutcome::Success(answer) => {
                    out["status"] = "ok".into();
                    out["tier"] = answer.tier.clone().into();
                    out["degraded"] = answer.degraded.into();
                    out["response"] = answer.response.clone();
                }
                ItemOutcome::Failed(failure) => {
                    out["status"] = "failed".into();
                    out["error"] = serde_json::json!({
                        "type": failure.kind.name(),
                        "message": failure.message,
                        "fatal": failure.fatal,
                    });
                }
                other => {
                    out["status"] = if matches!(other, ItemOutcome::NotAttempted) {
                        "not_attempted"
                    } else {
                        "timed_out"
                    }
                    .into();
                }
            }
            out
        })
        .collect();
    crate::metrics::record_batch(report.ok, report.failed, report.cached);
    errors::json_response(
        StatusCode::OK,
        &serde_json::json!({
            "object": "batch.report",
            "batch_id": parsed.batch_id,
            "ok": report.ok,
            "failed": report.failed,
            "cached": report.cached,
            "unfinished": report.unfinished,
            "duration_ms": report.duration.as_millis() as u64,
            "items": items,
        }),
    )
}

/// Why a `batch_id` or item key is refused, if it is.
fn check_name(name: &str, max_bytes: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max_bytes {
        return Err(format!(
            "must be 1 to {max_bytes} bytes long (batch.max_id_bytes), not {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err("may hold only letters, digits and - _ . :".into());
    }
    Ok(())
}

/// The first 16 hex characters of the SHA-256 of an item's request bytes.
fn digest(body: &[u8]) -> String {
    crate::client_id::hex16(&sha2::Sha256::digest(body))
}

fn invalid_reason(status: StatusCode) -> &'static str {
    if status == StatusCode::NOT_FOUND {
        "unknown model"
    } else {
        "malformed chat request (a JSON object with `model` and `messages` is needed)"
    }
}
