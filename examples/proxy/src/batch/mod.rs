//! The batch runner behind `POST /v1/batch` ([`crate::routes::batch`]): many
//! chat requests through a `PartialBatchLayer`.
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

mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{
    ClassifiedError, Classify, ErrorOnlyClassifier, FailureKind, Outcome,
};
use tower_llm_resilience::partial_batch::{PartialBatch, PartialBatchLayer, WithStore};
use tower_llm_resilience::BoxError;

use crate::config::{BatchConfig, ConfigError};
use crate::pipeline::{answered_by, Core, ProxyClassifier, Req, RequestMeta};
use crate::postgres_state::PostgresState;
use crate::redis_state::RedisState;
use store::BoundedBatchStore;

/// One item, ready or already known to be invalid.
#[derive(Clone, Debug)]
pub(crate) enum ItemRequest {
    /// A request for a model's tiers.
    Ready(Box<Req>),
    /// Why it cannot be sent (reported as a fatal `bad_request`).
    Invalid(Arc<str>),
}

/// A successful item, as stored for re-runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ItemAnswer {
    /// The tier that answered.
    pub(crate) tier: String,
    /// Not from the first tier.
    pub(crate) degraded: bool,
    /// The `chat.completion`.
    pub(crate) response: Value,
}

/// Routes each item to its model's tiers.
#[derive(Clone)]
pub(crate) struct ItemService {
    cores: Arc<HashMap<Arc<str>, Core>>,
}

impl ItemService {
    /// Items routed to `cores`, each model's tiers without escalation.
    pub(crate) fn new(cores: Arc<HashMap<Arc<str>, Core>>) -> Self {
        Self { cores }
    }
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
pub(crate) struct BatchRunner {
    pub(crate) service: Mutex<Runner>,
    pub(crate) max_items: usize,
    pub(crate) max_id_bytes: usize,
}

impl BatchRunner {
    /// Build the layer from `[batch]`; successes of named batches are kept in
    /// `redis` when given (shared by every proxy on it), else in memory.
    pub(crate) fn new(
        config: &BatchConfig,
        cores: HashMap<Arc<str>, Core>,
        redis: Option<&RedisState>,
        postgres: Option<&PostgresState>,
    ) -> Result<Self, ConfigError> {
        let builder = PartialBatchLayer::builder()
            .concurrency(config.concurrency)
            .max_attempts(config.max_attempts)
            .classifier(ErrorOnlyClassifier);
        let ttl = config.ttl_secs;
        let mut builder = match (postgres, redis) {
            (Some(pg), _) => builder.store(
                pg.batch_store()
                    .ttl(ttl)
                    .max_records(config.max_records)
                    .max_bytes(config.max_bytes),
            ),
            (None, Some(redis)) => builder.store(
                redis
                    .batch_store()?
                    .ttl(ttl)
                    .max_records(config.max_records)
                    .max_bytes(config.max_bytes),
            ),
            (None, None) => builder.store(BoundedBatchStore::new(
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
        let service = layer.layer(ItemService::new(Arc::new(cores)));
        Ok(Self {
            service: Mutex::new(service),
            max_items: config.max_items,
            max_id_bytes: config.max_id_bytes,
        })
    }
}
