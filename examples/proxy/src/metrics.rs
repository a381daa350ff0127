//! `GET /metrics`: Prometheus text.
//!
//! The layers report through the `metrics` facade (`llm_fallback_*`,
//! `llm_circuit_*`, `escalation_*`, `partial_batch_*`, and with `[retry]` or an
//! upstream's `rate_limit`: `llm_retry_*{retry=upstream}`, `llm_rate_limit_*{limiter=upstream}`);
//! the proxy adds
//! `llm_proxy_requests_total{status}`, `llm_proxy_request_duration_seconds`,
//! `llm_proxy_answers_total{tier,degraded}`, `llm_proxy_batch_items_total{result}`,
//! `llm_proxy_escalations_refused_total{cap}`, and, at each scrape,
//! `llm_proxy_circuit_state{upstream}` (0 closed, 1 half-open, 2 open),
//! `llm_proxy_rate_limits_exhausted{upstream}` (limits exhausted now, for
//! upstreams with a `rate_limit` table),
//! `llm_proxy_escalations_pending` and
//! `llm_proxy_escalation_oldest_pending_seconds` (how long the oldest pending
//! escalation has waited; 0 when none) (from in-memory counts, see the
//! escalation caps: a scrape reads no record).
//!
//! The recorder's upkeep (draining histogram samples into buckets) runs every
//! `[limits] metrics_upkeep_secs`, scraped or not, so memory stays flat when
//! nobody scrapes.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_llm_resilience::circuit_breaker::CircuitState;

use crate::state::Shared;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder (installed on first use; one per process, shared
/// by every proxy it runs).
pub(crate) fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (an embedding program):
            // then this one only renders what the proxy sets at scrape time.
            let _ = metrics::set_global_recorder(recorder);
            let _ = HOT.set(Hot {
                ok: metrics::counter!("llm_proxy_requests_total", "status" => "200"),
                duration: metrics::histogram!("llm_proxy_request_duration_seconds"),
            });
            handle
        })
        .clone()
}

/// The handles every request touches, registered once (a registry lookup per
/// request otherwise).
struct Hot {
    ok: Counter,
    duration: Histogram,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// One chat completion request, by status.
pub fn record_request(status: StatusCode, took: Duration) {
    let hot = HOT.get();
    match hot {
        Some(hot) if status == StatusCode::OK => hot.ok.increment(1),
        _ => metrics::counter!("llm_proxy_requests_total", "status" => status_label(status))
            .increment(1),
    }
    match hot {
        Some(hot) => hot.duration.record(took.as_secs_f64()),
        None => {
            metrics::histogram!("llm_proxy_request_duration_seconds").record(took.as_secs_f64())
        }
    }
}

/// The counter of answers from a model's first tier (registered once per model).
pub(crate) fn primary_answers(tier: &str) -> Counter {
    metrics::counter!(
        "llm_proxy_answers_total",
        "tier" => tier.to_owned(),
        "degraded" => "false"
    )
}

fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        429 => "429",
        502 => "502",
        503 => "503",
        504 => "504",
        100..=299 => "2xx",
        300..=499 => "4xx",
        _ => "5xx",
    }
}

/// Which tier answered.
pub(crate) fn record_answer(tier: &str, degraded: bool) {
    metrics::counter!(
        "llm_proxy_answers_total",
        "tier" => tier.to_owned(),
        "degraded" => if degraded { "true" } else { "false" }
    )
    .increment(1);
}

/// The items of one batch.
pub(crate) fn record_batch(ok: usize, failed: usize, cached: usize) {
    let fresh = ok.saturating_sub(cached);
    metrics::counter!("llm_proxy_batch_items_total", "result" => "ok").increment(fresh as u64);
    metrics::counter!("llm_proxy_batch_items_total", "result" => "cached").increment(cached as u64);
    metrics::counter!("llm_proxy_batch_items_total", "result" => "failed").increment(failed as u64);
}

/// `GET /metrics`.
pub(crate) async fn render(State(state): State<Shared>) -> Response {
    for (name, handle) in &state.pipeline.circuits {
        let value = match handle.circuit().state() {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        metrics::gauge!("llm_proxy_circuit_state", "upstream" => name.to_string()).set(value);
    }
    for (name, extras) in &state.pipeline.extras {
        if let Some(limits) = &extras.rate_limit {
            metrics::gauge!("llm_proxy_rate_limits_exhausted", "upstream" => name.to_string())
                .set(limits.exhausted().len() as f64);
        }
    }
    // From the counts the caps keep: a scrape reads no escalation record.
    metrics::gauge!("llm_proxy_escalations_pending")
        .set(state.pipeline.escalation_caps.pending() as f64);
    metrics::gauge!("llm_proxy_escalation_oldest_pending_seconds").set(
        state
            .pipeline
            .escalation_caps
            .oldest_pending_age()
            .as_secs_f64(),
    );
    state.metrics.run_upkeep();
    let mut response = Response::new(state.metrics.render().into());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
