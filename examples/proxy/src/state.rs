//! The state every handler shares: the models, the layers' handles, the keys,
//! the review page's sessions; built once from the config.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::auth::Keys;
use crate::batch::BatchRunner;
use crate::config::{Config, ConfigError};
use crate::pipeline::{self, ModelService, Pipeline};

/// One model, as the routes see it.
pub(crate) struct Model {
    /// Its service.
    pub(crate) service: ModelService,
    /// The upstream of its first tier.
    pub(crate) primary: Arc<str>,
    /// The model name sent to the first tier.
    pub(crate) primary_model: String,
    /// `upstream/model` of each tier, and `template` if it has one.
    pub(crate) tiers: Vec<String>,
    /// The model's name, as the header the pipeline reads (`None`: not
    /// expressible in a header).
    pub(crate) name_header: Option<HeaderValue>,
    /// `primary`, as the `x-llm-proxy-tier` header (`None`: not expressible).
    pub(crate) primary_header: Option<HeaderValue>,
    /// Answers from the first tier.
    pub(crate) primary_answers: metrics::Counter,
    /// Its answers and failures over recent windows (the dashboard's).
    pub(crate) stats: crate::dashboard::stats::ModelStats,
}

/// What every handler shares.
pub(crate) struct AppState {
    /// Models by the name clients use.
    pub(crate) models: HashMap<Arc<str>, Model>,
    /// The layers' handles.
    pub(crate) pipeline: Pipeline,
    /// Client keys (empty: open).
    pub(crate) client_keys: Keys,
    /// Admin keys (empty: the admin endpoints are closed).
    pub(crate) admin_keys: Keys,
    /// The body size limit.
    pub(crate) max_body: usize,
    /// Rules: the approval header, forwarded into the pipeline.
    pub(crate) approval_header: Option<HeaderName>,
    /// The batch endpoint.
    pub(crate) batch: BatchRunner,
    /// Asynchronous batches: the queue and the job store (`None`: no `[state]
    /// redis_url`).
    pub(crate) jobs: Option<crate::jobs::Jobs>,
    /// `[batch]` bounds of asynchronous batches: items, body bytes.
    pub(crate) async_batch: (usize, usize),
    /// Prometheus rendering.
    pub(crate) metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Review-page sessions.
    pub(crate) sessions: crate::auth::Sessions,
    /// Sign-in attempts per client address.
    pub(crate) login_throttle: crate::auth::LoginThrottle,
    /// Failed client authentications (rate-limited log).
    pub(crate) client_failures: crate::auth::FailureLog,
    /// Failed admin authentications (rate-limited log).
    pub(crate) admin_failures: crate::auth::FailureLog,
    /// `auth.secure_cookies`.
    pub(crate) secure_cookies: bool,
    /// `GET /readyz`'s checks.
    pub(crate) readiness: crate::routes::ready::Readiness,
    /// Usage records (`None`: `[usage] enabled = false`).
    pub(crate) usage: Option<Arc<crate::usage::UsageLog>>,
    /// Limits per client key (`None`: no `[budgets]`).
    pub(crate) budgets: Option<Arc<crate::usage::Budgets>>,
    /// The response cache (`None`: `[cache] mode = "off"`).
    pub(crate) cache: Option<Arc<crate::cache::ResponseCache>>,
    /// The last batches' summaries (the dashboard's).
    pub(crate) recent_batches: crate::dashboard::batches::RecentBatches,
    /// Operators' actions, kept on PostgreSQL when there is one.
    pub(crate) audit: crate::audit::AuditTrail,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// A graceful stop's last step, once no request runs: waits, at most
    /// `bound`, until the usage records, budget charges and audit events
    /// queued so far are written to their stores. What is still queued after
    /// `bound` (a store down or too slow) is logged and counted as dropped.
    pub(crate) async fn flush_writers(&self, bound: std::time::Duration) {
        let usage = async {
            match &self.usage {
                Some(usage) => usage.flush().await,
                None => Ok(()),
            }
        };
        let budgets = async {
            match &self.budgets {
                Some(budgets) => budgets.flush().await,
                None => Ok(()),
            }
        };
        let flushed = async {
            let (usage, budgets, audit) = tokio::join!(usage, budgets, self.audit.flush());
            usage.and(budgets).and(audit)
        };
        let failed = match tokio::time::timeout(bound, flushed).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => format!("not done within {bound:?}"),
        };
        let usage = self.usage.as_ref().map_or(0, |usage| usage.queued());
        let audit = self.audit.queued();
        metrics::counter!("llm_proxy_usage_dropped_total").increment(usage as u64);
        metrics::counter!("llm_proxy_audit_dropped_total").increment(audit as u64);
        tracing::warn!(
            error = %failed,
            usage_records = usage,
            audit_events = audit,
            "stopping with records not written to their stores"
        );
    }
}

/// Shared state.
pub(crate) type Shared = Arc<AppState>;

/// Build the shared state from a config.
///
/// With `[state] redis_url` this must run inside the tokio runtime that serves
/// the router: the Redis backends spawn their tasks on it (they run as long as
/// the returned state lives). `config` has been validated ([`Proxy::start`]
/// does it once); the secrets it names are read here.
///
/// [`Proxy::start`]: crate::Proxy::start
pub(crate) fn build(config: &Config) -> Result<Shared, ConfigError> {
    config.check_secrets()?;
    // The recorder first: the models register their counters with it.
    let metrics = crate::metrics::handle();
    let pipeline = pipeline::build(config)?;
    let mut models = HashMap::new();
    for model in &config.models {
        let name: Arc<str> = model.name.as_str().into();
        let mut tiers: Vec<String> = model
            .tiers
            .iter()
            .map(|t| format!("{}/{}", t.upstream, t.model))
            .collect();
        if model.template.is_some() {
            tiers.push(pipeline::TEMPLATE_TIER.into());
        }
        let service = pipeline.models[&name].clone();
        let stats = crate::dashboard::stats::ModelStats::new(tiers.len(), model.template.is_some());
        let primary = model.tiers[0].upstream.as_str();
        models.insert(
            name,
            Model {
                service,
                primary: primary.into(),
                primary_model: model.tiers[0].model.clone(),
                tiers,
                name_header: HeaderValue::try_from(model.name.as_str()).ok(),
                primary_header: HeaderValue::try_from(primary).ok(),
                primary_answers: crate::metrics::primary_answers(primary),
                stats,
            },
        );
    }
    let approval_header = match config.escalation.approval_header.as_str() {
        "" => None,
        name => HeaderName::try_from(name).ok(),
    };
    let batch = BatchRunner::new(
        &config.batch,
        pipeline.cores.clone(),
        pipeline.redis.as_ref(),
        pipeline.postgres.as_ref(),
    )?;
    let jobs =
        crate::jobs::Jobs::build(config, pipeline.redis.as_ref(), pipeline.postgres.as_ref())?;
    let budgets = crate::usage::Budgets::build(
        &config.budgets,
        pipeline.redis.as_ref().map(|r| r.client_and_prefix()),
        pipeline
            .postgres
            .as_ref()
            .map(|p| (p.pg().clone(), p.prefix().to_owned())),
    )?;
    let usage = crate::usage::UsageLog::build(
        &config.usage,
        budgets.clone(),
        pipeline.redis.as_ref().map(|r| r.client_and_prefix()),
        pipeline.postgres.as_ref().map(|p| p.pg().clone()),
    )?;
    let cache = crate::cache::ResponseCache::build(
        &config.cache,
        pipeline.redis.as_ref().map(|r| r.client_and_prefix()),
    )?;
    let pipeline_postgres = pipeline.postgres.clone();
    let state = Arc::new(AppState {
        models,
        client_keys: Keys::new(&config.client_keys()?),
        admin_keys: Keys::new(&config.admin_keys()?),
        max_body: config.limits.max_body_bytes,
        approval_header,
        batch,
        jobs,
        async_batch: (
            config.batch.max_async_items,
            config.batch.max_async_body_bytes,
        ),
        metrics,
        pipeline,
        sessions: crate::auth::Sessions::new(
            config.auth.admin_session_secs,
            config.auth.max_admin_sessions,
        ),
        login_throttle: crate::auth::LoginThrottle::new(config.auth.login_attempts_per_minute),
        client_failures: crate::auth::FailureLog::new("client"),
        admin_failures: crate::auth::FailureLog::new("admin"),
        secure_cookies: config.auth.secure_cookies,
        readiness: crate::routes::ready::Readiness::new(config),
        usage,
        budgets,
        cache,
        recent_batches: Default::default(),
        audit: crate::audit::AuditTrail::new(pipeline_postgres.as_ref()),
    });
    Ok(state)
}
