//! The layers, stacked: for each model,
//!
//! ```text
//! Escalation (rules from [escalation])
//!   └ Core: FallbackLayer (first-event settling for streams, template last)
//!       ├ CircuitBreaker(upstream of tier 1)
//!       ├ CircuitBreaker(upstream of tier 2)   (model rewritten per tier)
//!       └ template
//! ```
//!
//! Around each upstream, optional retries (inside its breaker) and rate limits
//! (outside it): see [`guard`].
//!
//! Each upstream has one `CircuitBreakerLayer`, shared by every model that uses
//! it. Batches go through the same `Core` (no escalation) under a
//! `PartialBatchLayer`, see [`crate::batch`]. With `[state] redis_url`, the
//! circuits, the escalation store and the batch store are shared through Redis,
//! see [`crate::redis_state`].

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::CONTENT_TYPE;
use http_body_util::BodyExt;
use tower::{Layer, Service};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, Handle};
use tower_llm_resilience::classify::{
    classify_buffered, classify_status, Classify, ClassifyError, Outcome,
};
use tower_llm_resilience::escalation::{
    answer_is_json, Adapter, Escalation, EscalationLayer, EscalationPolicy, HttpAdapter,
    ResumeToken, TimeoutDefault, Verdict,
};
use tower_llm_resilience::fallback::{
    Fallback, FallbackLayer, FirstEvent, MarkDegraded, Tier, DEFAULT_MAX_EVENT_BYTES,
};
use tower_llm_resilience::BoxError;

use crate::body::{completion_json, completion_sse, Closing, ProxyBody};
use crate::circuit_sync::CircuitSync;
use crate::config::{CircuitConfig, Config, ConfigError, EscalationMode, ModelConfig, OnTimeout};
use crate::postgres_state::PostgresState;
use crate::redis_state::RedisState;
use crate::request::TierBody;
use crate::upstream::{HttpClients, Upstream};

mod balanced;
mod escalation;
mod guard;

use escalation::escalation_layer;
pub(crate) use escalation::{ProxyAdapter, ProxyPolicy};

/// A request inside the proxy: an OpenAI chat completion body.
pub(crate) type Req = http::Request<Bytes>;
/// A response inside the proxy.
pub(crate) type Res = http::Response<ProxyBody>;

/// What the proxy learned from a client request, carried in its extensions.
#[derive(Clone, Debug)]
pub(crate) struct RequestMeta {
    /// The client asked for an event stream.
    pub(crate) stream: bool,
    /// The client asked for JSON output (`response_format`).
    pub(crate) wants_json: bool,
    /// The model name the client asked for.
    pub(crate) model: Arc<str>,
}

/// On a response whose request asked for JSON (read by the escalation rule).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WantsJson;

/// On a response that did not come from a model tier.
#[derive(Clone, Debug)]
pub(crate) struct AnsweredBy(pub(crate) &'static str);

/// The name of the template tier, in markers and `x-llm-proxy-tier`.
pub(crate) const TEMPLATE_TIER: &str = "template";

/// Classifies upstream results: buffered bodies by status, headers and provider
/// error body; streams by status and headers; errors by their kind.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProxyClassifier;

impl Classify<Res, BoxError> for ProxyClassifier {
    fn classify(&self, result: &Result<Res, BoxError>) -> Outcome {
        match result {
            Ok(response) => match response.body() {
                ProxyBody::Full(bytes) => {
                    classify_buffered(response.status(), response.headers(), bytes)
                }
                ProxyBody::Stream(_) => classify_status(response.status(), response.headers()),
            },
            Err(e) => Outcome::Failure(e.classify_error()),
        }
    }
}

/// One upstream behind its circuit breaker (and its retries and limits, see [`guard`]).
pub(crate) type Guarded = guard::Limited;
pub(crate) use guard::{Extras, UpstreamExtras};

/// A tier: one upstream, or several balanced (`balance_with`).
pub(crate) type TierService = tower::util::Either<Guarded, balanced::BalancedTier>;

type ModelFallback = Fallback<TierService, Req, Res, BoxError, ProxyClassifier, FirstEvent>;

/// A model's tiers: the fallback chain, with buffered answers collected again so
/// the escalation rules can read them.
#[derive(Clone)]
pub(crate) struct Core {
    fallback: ModelFallback,
    primary: Arc<str>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("primary", &self.primary)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// The first tier's upstream name.
    pub(crate) fn primary(&self) -> &Arc<str> {
        &self.primary
    }
}

impl Service<Req> for Core {
    type Response = Res;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Res, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.fallback.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let wants_json = request
            .extensions()
            .get::<RequestMeta>()
            .is_some_and(|meta| meta.wants_json);
        let answer = self.fallback.call(request);
        Box::pin(async move {
            let (mut parts, body) = answer.await?.into_parts();
            let event_stream = parts
                .headers
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let body = if event_stream {
                ProxyBody::Stream(body.boxed_unsync())
            } else {
                match body.try_into_inner() {
                    Ok(ProxyBody::Full(bytes)) => ProxyBody::Full(bytes),
                    Ok(other) => ProxyBody::Full(other.collect().await?.to_bytes()),
                    Err(body) => ProxyBody::Full(body.collect().await?.to_bytes()),
                }
            };
            let from_template = parts.extensions.get::<AnsweredBy>().is_some();
            if wants_json && !from_template {
                parts.extensions.insert(WantsJson);
            }
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A model, as clients call it.
pub(crate) type ModelService = Escalation<Core, ProxyPolicy, ProxyAdapter>;

/// Everything built from the config.
pub(crate) struct Pipeline {
    /// Each model's service, by name.
    pub(crate) models: HashMap<Arc<str>, ModelService>,
    /// Each model's tiers without escalation (for batches), by name.
    pub(crate) cores: HashMap<Arc<str>, Core>,
    /// Each upstream's circuits, in config order.
    pub(crate) circuits: Vec<(Arc<str>, Handle<()>)>,
    /// Each upstream's retry and rate-limit handles, in config order.
    pub(crate) extras: Extras,
    /// The escalations.
    pub(crate) escalations: tower_llm_resilience::escalation::Handle,
    /// The escalation store's caps and pending counts.
    pub(crate) escalation_caps: Arc<crate::escalation_caps::CappedStore>,
    /// `[state] redis_url`: the shared Redis (`None`: not on Redis).
    pub(crate) redis: Option<RedisState>,
    /// `[state] postgres_url`: the shared PostgreSQL (`None`: not on Postgres).
    pub(crate) postgres: Option<PostgresState>,
    /// With Redis or Postgres: each upstream's circuit sync, kept running as
    /// long as the pipeline lives.
    pub(crate) circuit_syncs: Vec<(Arc<str>, CircuitSync)>,
    /// Closed at the end of a shutdown: upstream streams still open end with an
    /// error event.
    pub(crate) closing: Closing,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn circuit_layer(
    name: &str,
    config: &CircuitConfig,
) -> Result<CircuitBreakerLayer<ProxyClassifier>, ConfigError> {
    let mut builder = CircuitBreakerLayer::builder()
        .name(name)
        .consecutive_failures(config.consecutive_failures)
        .cooldown(config.cooldown_secs)
        .max_cooldown(config.max_cooldown_secs)
        .classifier(ProxyClassifier);
    if let Some(rate) = config.failure_rate {
        builder = builder.failure_rate(rate);
    }
    builder
        .build()
        .map_err(|e| ConfigError(format!("circuit of upstream {name:?}: {e}")))
}

fn template_answer(text: Arc<str>) -> impl Fn(Req) -> Res + Send + Sync + 'static {
    move |request: Req| {
        let meta = request.extensions().get::<RequestMeta>();
        let stream = meta.is_some_and(|m| m.stream);
        let model = meta.map_or("template", |m| &m.model);
        let (content_type, body) = if stream {
            (
                "text/event-stream",
                completion_sse("chatcmpl-template", model, &text),
            )
        } else {
            let json = completion_json("chatcmpl-template", model, &text);
            ("application/json", Bytes::from(json.to_string()))
        };
        let mut response = http::Response::new(ProxyBody::Full(body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        response.extensions_mut().insert(AnsweredBy(TEMPLATE_TIER));
        response
    }
}

fn build_core(
    model: &ModelConfig,
    guarded: &HashMap<&str, Guarded>,
    circuits: &[(Arc<str>, Handle<()>)],
    first_event: Duration,
    max_answer: usize,
) -> Result<Core, ConfigError> {
    let upstream = |name: &str| {
        guarded
            .get(name)
            .cloned()
            .ok_or_else(|| ConfigError(format!("unknown upstream {name:?}")))
    };
    let service = |name: &str| -> Result<TierService, ConfigError> {
        let tier = model.tiers.iter().find(|t| t.upstream == name);
        let Some(others) = tier.map(|t| &t.balance_with).filter(|o| !o.is_empty()) else {
            return Ok(tower::util::Either::Left(upstream(name)?));
        };
        let mut deployments = Vec::new();
        for member in std::iter::once(name).chain(others.iter().map(String::as_str)) {
            let circuit = circuits
                .iter()
                .find(|(n, _)| &**n == member)
                .map(|(_, h)| h.clone())
                .ok_or_else(|| ConfigError(format!("unknown upstream {member:?}")))?;
            deployments.push((member.into(), upstream(member)?, circuit));
        }
        let tier = balanced::BalancedTier::new(deployments)
            .map_err(|e| ConfigError(format!("model {:?}: {}", model.name, e.0)))?;
        Ok(tower::util::Either::Right(tier))
    };
    let first = &model.tiers[0];
    let mut builder = FallbackLayer::<Req, Res, BoxError>::builder()
        .primary_name(first.upstream.as_str())
        .classifier(ProxyClassifier);
    for tier in &model.tiers[1..] {
        builder = builder.tier(
            Tier::new(tier.upstream.as_str(), service(&tier.upstream)?)
                .map_request(tier_request(tier.model.as_str())),
        );
    }
    if let Some(text) = &model.template {
        builder = builder.final_responder(TEMPLATE_TIER, template_answer(text.as_str().into()));
    } else if model.tiers.len() == 1 {
        // A fallback layer needs somewhere to fall back to: a single tier without
        // a template gets a placeholder that fails at once, so the client sees
        // the real tier's failure (see `errors`).
        builder = builder.tier(Tier::new(NO_TIER, tower::service_fn(no_tier)));
    }
    // The upstream services read non-stream answers whole (bounded, cut answers
    // failed, see `upstream`), so the fallback does not read them again; it
    // bounds streams: each event, and the terminal event that makes one whole.
    let settle = FirstEvent::new(first_event)
        .max_answer_bytes(max_answer as u64)
        .max_event_bytes(max_answer.min(DEFAULT_MAX_EVENT_BYTES))
        .buffer_answers(false);
    let layer = builder
        .first_event_timeout(first_event)
        .settle_with(settle)
        .build()
        .map_err(|e| ConfigError(format!("model {:?}: {e}", model.name)))?;
    Ok(Core {
        fallback: layer.layer(service(&first.upstream)?),
        primary: first.upstream.as_str().into(),
    })
}

/// A later tier's request: the client's body with this tier's `model`, made by
/// the same [`TierBody`] as the first tier's (see [`crate::request`]).
fn tier_request(model: &str) -> impl Fn(Req) -> Req + Clone + Send + Sync + 'static {
    let model: Arc<str> = model.into();
    move |mut request: Req| {
        if let Some(body) = request.extensions().get::<TierBody>() {
            *request.body_mut() = body.for_model(&model);
        } else {
            // Every request the proxy makes carries its `TierBody`. One that does
            // not is never sent with another tier's model: its empty body makes
            // the tier refuse it.
            tracing::warn!("a request without its tier body reached a later tier");
            *request.body_mut() = Bytes::new();
        }
        request
    }
}

/// The name of the placeholder tier of single-tier models without a template.
pub(crate) const NO_TIER: &str = "(none)";

async fn no_tier(_: Req) -> Result<Res, BoxError> {
    Err("no further tier".into())
}

/// Build every layer from the config.
pub(crate) fn build(config: &Config) -> Result<Pipeline, ConfigError> {
    let http = HttpClients::new(1024, Duration::from_secs(10))?;
    let redis = RedisState::from_config(&config.state)?;
    let postgres = PostgresState::from_config(&config.state)?;
    let closing = Closing::new();
    let mut guarded = HashMap::new();
    let mut circuits = Vec::new();
    let mut circuit_syncs = Vec::new();
    let mut extras = Vec::new();
    for upstream in &config.upstreams {
        let circuit = upstream.circuit.as_ref().unwrap_or(&config.circuit);
        let layer = circuit_layer(&upstream.name, circuit)?;
        let name: Arc<str> = upstream.name.as_str().into();
        if let Some(sync) = CircuitSync::attach(
            &upstream.name,
            &layer.handle(),
            redis.as_ref(),
            postgres.as_ref(),
        )? {
            circuit_syncs.push((name.clone(), sync));
        }
        circuits.push((name, layer.handle()));
        let upstream_service = Upstream::new(
            upstream,
            &http,
            config.limits.max_upstream_body_bytes,
            &closing,
        )?;
        let retry = upstream.retry.as_ref().unwrap_or(&config.retry);
        let (service, upstream_extras) = guard::stack(
            &upstream.name,
            upstream_service,
            &layer,
            retry,
            upstream.rate_limit.as_ref(),
        )?;
        extras.push((upstream.name.as_str().into(), upstream_extras));
        guarded.insert(upstream.name.as_str(), service);
    }
    let first_event = config.limits.first_event_timeout_secs;
    let (escalation, escalation_caps) =
        escalation_layer(config, redis.as_ref(), postgres.as_ref())?;
    let mut models = HashMap::new();
    let mut cores = HashMap::new();
    for model in &config.models {
        let core = build_core(
            model,
            &guarded,
            &circuits,
            first_event,
            config.limits.max_upstream_body_bytes,
        )?;
        let name: Arc<str> = model.name.as_str().into();
        models.insert(name.clone(), escalation.layer(core.clone()));
        cores.insert(name, core);
    }
    Ok(Pipeline {
        models,
        cores,
        circuits,
        extras,
        escalations: escalation.handle(),
        escalation_caps,
        redis,
        postgres,
        circuit_syncs,
        closing,
    })
}

/// The name of the tier that answered.
pub(crate) fn answered_by<'a>(response: &'a Res, primary: &'a str) -> &'a str {
    if let Some(by) = response.extensions().get::<AnsweredBy>() {
        return by.0;
    }
    match response.degraded() {
        Some(marker) => marker.name(),
        None => primary,
    }
}
