//! The escalation layer of every model: the config's rules ([`ProxyPolicy`]),
//! how a request and its answer are kept for a reviewer ([`ProxyAdapter`]), and
//! the store they are kept in (capped, sealed when configured, on SQLite, in
//! memory or on Redis).

use super::*;
use tower_llm_resilience::escalation::notify::{NotifyRetry, WebhookNotifier};

/// The escalation rules of the config.
#[derive(Clone, Debug)]
pub(crate) struct ProxyPolicy {
    enabled: bool,
    approval_header: Option<http::HeaderName>,
    invalid_json_answer: bool,
}

impl EscalationPolicy<Req, Res> for ProxyPolicy {
    fn check_request(&self, request: &Req) -> Verdict {
        let asked = self.enabled
            && self.approval_header.as_ref().is_some_and(|name| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            });
        if asked {
            Verdict::escalate("the client asked for human approval")
        } else {
            Verdict::Proceed
        }
    }

    fn check_response(&self, response: &Res) -> Verdict {
        let review = self.enabled
            && self.invalid_json_answer
            && response.status().is_success()
            && response.extensions().get::<WantsJson>().is_some()
            && response.body().is_full()
            && !answer_is_json(response.body().bytes());
        if review {
            Verdict::escalate("JSON was asked for, but the model's answer is not valid JSON")
        } else {
            Verdict::Proceed
        }
    }

    fn reviews_responses(&self) -> bool {
        self.enabled && self.invalid_json_answer
    }

    fn reviews_response_to(&self, request: &Req) -> bool {
        // Only answers to requests that asked for JSON are reviewed: the others
        // are not snapshotted up front.
        self.reviews_responses()
            && request
                .extensions()
                .get::<RequestMeta>()
                .is_some_and(|meta| meta.wants_json)
    }
}

/// Snapshots like [`HttpAdapter`]; a human's answer becomes a `chat.completion`
/// (a JSON string is the assistant's message; an object with `choices` is sent
/// as it is).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProxyAdapter;

impl Adapter<Req, Res> for ProxyAdapter {
    fn snapshot_request(&self, request: &Req) -> serde_json::Value {
        Adapter::<Req, Res>::snapshot_request(&HttpAdapter::new(), request)
    }

    fn snapshot_response(&self, response: &Res) -> serde_json::Value {
        Adapter::<Req, Res>::snapshot_response(&HttpAdapter::new(), response)
    }

    fn take_resume_token(&self, request: &mut Req) -> Option<ResumeToken> {
        Adapter::<Req, Res>::take_resume_token(&HttpAdapter::new(), request)
    }

    fn fingerprint_request(&self, request: &Req) -> Option<String> {
        // Method, path and the body as rewritten for the first tier, and the
        // model the client asked for (two models may share a first tier): a
        // resume must send the request that was escalated.
        use sha2::{Digest, Sha256};
        let http = Adapter::<Req, Res>::fingerprint_request(&HttpAdapter::new(), request)?;
        let model = request
            .extensions()
            .get::<RequestMeta>()
            .map_or("", |meta| &*meta.model);
        let digest = Sha256::new()
            .chain_update(http.as_bytes())
            .chain_update([0])
            .chain_update(model.as_bytes())
            .finalize();
        Some(format!("proxy-sha256:{}", crate::auth::hex(&digest)))
    }

    fn answer(&self, payload: serde_json::Value) -> Result<Res, BoxError> {
        let body = match payload {
            serde_json::Value::Object(ref object) if object.contains_key("choices") => payload,
            serde_json::Value::String(text) => completion_json("chatcmpl-human", "human", &text),
            other => completion_json("chatcmpl-human", "human", &other.to_string()),
        };
        let mut response = http::Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(ProxyBody::from(serde_json::to_vec(&body)?))?;
        response.extensions_mut().insert(AnsweredBy("human"));
        Ok(response)
    }
}

pub(super) fn escalation_layer(
    config: &Config,
    redis: Option<&RedisState>,
    postgres: Option<&crate::postgres_state::PostgresState>,
) -> Result<
    (
        EscalationLayer<ProxyPolicy, ProxyAdapter>,
        Arc<crate::escalation_caps::CappedStore>,
    ),
    ConfigError,
> {
    let settings = &config.escalation;
    let approval_header = if settings.approval_header.is_empty() {
        None
    } else {
        Some(
            http::HeaderName::try_from(settings.approval_header.as_str()).map_err(|_| {
                ConfigError("escalation.approval_header is not a header name".into())
            })?,
        )
    };
    let policy = ProxyPolicy {
        enabled: settings.enabled,
        approval_header,
        invalid_json_answer: settings.invalid_json_answer,
    };
    let timeout = settings.timeout_secs;
    let mut builder = EscalationLayer::builder(policy)
        .adapter(ProxyAdapter)
        .poll_interval(settings.poll_interval_secs);
    if let Some(webhook) = &settings.webhook {
        let (notifier, retry) = webhook_notifier(webhook)?;
        builder = builder.notifier(notifier).notify_retry(retry);
        if let Some(base) = &webhook.public_base_url {
            builder = builder.review_url(format!("{}/escalations", base.trim_end_matches('/')));
        }
    }
    builder = match settings.mode {
        EscalationMode::Wait => builder.wait(
            timeout,
            match settings.on_timeout {
                OnTimeout::Reject => TimeoutDefault::Reject,
                OnTimeout::Approve => TimeoutDefault::Approve,
            },
        ),
        EscalationMode::Detach => builder.detach(timeout),
    };
    let keep_for = timeout + settings.retention_secs;
    let capped = |store: Arc<dyn tower_llm_resilience::escalation::EscalationStore>| {
        Arc::new(crate::escalation_caps::CappedStore::new(
            store,
            settings.max_pending,
            settings.max_pending_per_client,
            keep_for,
        ))
    };
    let store: Arc<crate::escalation_caps::CappedStore> = match (postgres, redis, settings.store) {
        // `[state] postgres_url` (else `redis_url`) replaces `store` and
        // `sqlite_path`.
        (Some(pg), _, _) => capped(crate::sealed::seal_if_configured(
            pg.escalation_store()?,
            settings,
        )?),
        (None, Some(redis), _) => capped(crate::sealed::seal_if_configured(
            redis.escalation_store()?,
            settings,
        )?),
        (None, None, crate::config::StoreKind::Memory) => capped(Arc::new(
            tower_llm_resilience::escalation::MemoryStore::new(),
        )),
        (None, None, crate::config::StoreKind::Sqlite) => {
            if let Some(dir) = settings.sqlite_path.parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        ConfigError(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
            }
            let store = tower_llm_resilience::escalation::SqliteStore::open(&settings.sqlite_path)
                .map_err(|e| {
                    ConfigError(format!(
                        "cannot open escalation store {}: {e}",
                        settings.sqlite_path.display()
                    ))
                })?;
            capped(crate::sealed::seal_if_configured(store, settings)?)
        }
    };
    let layer = builder
        .store(store.clone())
        .build()
        .map_err(|e| ConfigError(e.to_string()))?;
    Ok((layer, store))
}

/// The notifier of `[escalation.webhook]`, with its URL and secret read from
/// the environment. Errors name the variable, never its value (a Slack webhook
/// URL is a secret).
fn webhook_notifier(
    webhook: &crate::config::WebhookConfig,
) -> Result<(WebhookNotifier, NotifyRetry), ConfigError> {
    let read = |var: &str| match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(ConfigError(format!(
            "escalation.webhook: environment variable {var} is not set"
        ))),
    };
    let url = read(&webhook.url_env)?;
    let secret = read(&webhook.secret_env)?;
    let client = reqwest::Client::builder()
        .timeout(webhook.attempt_timeout_secs)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ConfigError(format!("escalation.webhook: HTTP client: {e}")))?;
    let notifier = WebhookNotifier::with_client(&url, secret, client).map_err(|e| {
        ConfigError(format!(
            "escalation.webhook: the URL in {}: {e}",
            webhook.url_env
        ))
    })?;
    let retry = NotifyRetry::new(
        webhook.attempts,
        Duration::from_secs(1),
        Duration::from_secs(60),
        webhook.attempt_timeout_secs,
    )
    .map_err(|e| ConfigError(format!("escalation.webhook: {e}")))?;
    Ok((notifier, retry))
}
