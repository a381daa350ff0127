//! `GET /readyz`: whether this proxy should get traffic. `/healthz` says the
//! process answers; `/readyz` also checks what answering needs:
//!
//! - the escalation store answers (SQLite, or with `[state]` Redis or
//!   PostgreSQL, which also hold the batch store), within 2 seconds;
//! - every model has at least one upstream tier whose circuit is not open (a
//!   template alone does not make a model ready: its answers are all degraded).
//!
//! 200 `{"status": "ready"}` or 503 `{"status": "not_ready", "failing": [...]}`
//! naming the failed checks (`store`, `model:NAME`). Open, like `/healthz`, for
//! load balancers and orchestrators; it shows no circuit details (see
//! `/v1/circuits`). The circuits are read at each probe (in memory); one store
//! check runs at a time and its result serves for a second, so a flood of
//! probes costs the store at most one query a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use tower_llm_resilience::circuit_breaker::CircuitState;
use tower_llm_resilience::escalation::{EscalationStore, Status};

use crate::config::Config;
use crate::state::{AppState, Shared};

/// How long one check's result is served.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// The longest the store may take to answer.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstreams of each model's tiers, and the last store check.
pub(crate) struct Readiness {
    models: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// When the store was last checked, and whether it answered.
    store: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Readiness {
    pub(crate) fn new(config: &Config) -> Self {
        let mut models: Vec<(Arc<str>, Vec<Arc<str>>)> = config
            .models
            .iter()
            .map(|m| {
                let upstreams = m.tiers.iter().map(|t| t.upstream.as_str().into());
                (m.name.as_str().into(), upstreams.collect())
            })
            .collect();
        models.sort();
        Self {
            models,
            store: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the store answers: checked at most once a second.
    async fn store_answers(&self, state: &AppState) -> bool {
        let mut last = self.store.lock().await;
        if let Some((at, answered)) = *last {
            if at.elapsed() < FRESH_FOR {
                return answered;
            }
        }
        let store = &state.pipeline.escalation_caps;
        let answered = matches!(
            tokio::time::timeout(STORE_TIMEOUT, store.count(Status::Pending)).await,
            Ok(Ok(_))
        );
        *last = Some((Instant::now(), answered));
        answered
    }

    /// The failed checks.
    async fn failing(&self, state: &AppState) -> Vec<String> {
        let mut failing = Vec::new();
        if !self.store_answers(state).await {
            failing.push("store".to_owned());
        }
        let open: HashMap<&str, bool> = (state.pipeline.circuits.iter())
            .map(|(name, handle)| (&**name, handle.circuit().state() == CircuitState::Open))
            .collect();
        for (model, upstreams) in &self.models {
            let all_open = upstreams
                .iter()
                .all(|u| open.get(&**u).copied().unwrap_or(false));
            if all_open {
                failing.push(format!("model:{model}"));
            }
        }
        failing
    }
}

pub(crate) async fn readyz(State(state): State<Shared>) -> Response {
    let failing = state.readiness.failing(&state).await;
    if failing.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        let body = serde_json::json!({"status": "not_ready", "failing": failing});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
