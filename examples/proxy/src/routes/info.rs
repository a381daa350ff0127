//! What the proxy tells about itself: `GET /v1/models`, `GET /v1/circuits`
//! (client key; each upstream's circuit, and its retry and rate-limit counters
//! when configured) and `GET /healthz` (open); `GET /metrics` is in
//! [`crate::metrics`].

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::Value;
use tower_llm_resilience::circuit_breaker::Handle;

use crate::pipeline::UpstreamExtras;
use crate::state::Shared;

pub(crate) async fn healthz() -> Json<Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub(crate) async fn list_models(State(state): State<Shared>) -> Json<Value> {
    let mut names: Vec<&Arc<str>> = state.models.keys().collect();
    names.sort();
    let data: Vec<Value> = names
        .into_iter()
        .map(|name| {
            serde_json::json!({
                "id": &**name,
                "object": "model",
                "created": 0,
                "owned_by": "llm-proxy",
                "tiers": state.models[name].tiers,
            })
        })
        .collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}

pub(crate) async fn circuits(State(state): State<Shared>) -> Json<Value> {
    let data: Vec<Value> = state
        .pipeline
        .circuits
        .iter()
        .zip(&state.pipeline.extras)
        .map(|((name, handle), (_, extras))| circuit_entry(name, handle, extras))
        .collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}

/// One upstream's entry of `GET /v1/circuits`: its circuit, and its retry and
/// rate-limit counters when configured.
pub(crate) fn circuit_entry(name: &str, handle: &Handle<()>, extras: &UpstreamExtras) -> Value {
    let snapshot = handle.circuit().snapshot();
    let retry = extras.retry.as_ref().map(|retry| {
        serde_json::json!({
            "requests": retry.requests(),
            "retries": retry.retries(),
            "budget_exhausted": retry.budget_exhausted(),
        })
    });
    let rate_limit = extras.rate_limit.as_ref().map(|limits| {
        let exhausted: Vec<Value> = limits
            .exhausted()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "limit": e.limit,
                    "resets_in_ms": e.resets_in.as_millis() as u64,
                })
            })
            .collect();
        serde_json::json!({
            "exhausted": exhausted,
            "waits": limits.waits(),
            "rejected": limits.rejected(),
        })
    });
    serde_json::json!({
        "upstream": name,
        "state": snapshot.state.name(),
        "forced": snapshot.forced,
        "retry_after_ms": snapshot.retry_after.map(|d| d.as_millis() as u64),
        "consecutive_failures": snapshot.consecutive_failures,
        "failures": snapshot.failures,
        "rejected": snapshot.rejected,
        "trips": snapshot.trips,
        "retry": retry,
        "rate_limit": rate_limit,
    })
}
