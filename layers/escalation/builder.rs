//! The layer's builder, how callers wait ([`Mode`], [`TimeoutDefault`]), and the
//! configuration every service of one layer shares (checked here, made into
//! the layer in `layer.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::clock::MAX_LIFETIME;
use super::engine::Shared;
use super::error::BuildError;
use super::notify::{Notifier, NotifyRetry};
use super::record::Decision;
use super::snapshot::HttpAdapter;
use super::store::{EscalationStore, MemoryStore};

/// How a caller waits for the human.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// The response future waits up to `timeout`, then applies `on_timeout` (and
    /// records it). The escalation expires at the timeout.
    Wait {
        /// How long to wait for a human.
        timeout: Duration,
        /// What happens when nobody answers in time.
        on_timeout: TimeoutDefault,
    },
    /// The call fails at once with [`Escalated`](super::Escalated) and a token, valid
    /// for `ttl`; the caller resends the request with the token later.
    Detach {
        /// How long the escalation (and its token) stays valid.
        ttl: Duration,
    },
}

/// What a wait-mode escalation resolves to when nobody answers in time.
#[derive(Clone, Debug, PartialEq)]
pub enum TimeoutDefault {
    /// Reject: the caller gets [`EscalationError::Rejected`](super::EscalationError).
    Reject,
    /// Approve: the call goes on as if a human approved it.
    Approve,
    /// Answer with this payload.
    Answer(Value),
}

impl TimeoutDefault {
    pub(crate) fn decision(&self) -> Decision {
        match self {
            TimeoutDefault::Reject => Decision::Reject {
                reason: "no human resolved the escalation in time".into(),
            },
            TimeoutDefault::Approve => Decision::Approve,
            TimeoutDefault::Answer(payload) => Decision::Answer {
                payload: payload.clone(),
            },
        }
    }
}

pub(crate) struct Config<P, A> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: P,
    pub(crate) adapter: A,
    pub(crate) mode: Mode,
    pub(crate) poll_interval: Duration,
}

impl<P> Builder<P, HttpAdapter> {
    /// The defaults, documented at [`EscalationLayer::builder`](super::EscalationLayer::builder).
    pub(crate) fn new(policy: P) -> Self {
        Builder {
            policy,
            adapter: HttpAdapter::new(),
            store: None,
            notifier: None,
            retry: NotifyRetry::default(),
            review_base: None,
            mode: Mode::Detach {
                ttl: Duration::from_secs(24 * 60 * 60),
            },
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// Configures an [`EscalationLayer`](super::EscalationLayer); [`build`](Builder::build)
/// validates.
pub struct Builder<P, A> {
    policy: P,
    adapter: A,
    store: Option<Arc<dyn EscalationStore>>,
    notifier: Option<Arc<dyn Notifier>>,
    retry: NotifyRetry,
    review_base: Option<String>,
    mode: Mode,
    poll_interval: Duration,
}

impl<P, A> fmt::Debug for Builder<P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("mode", &self.mode)
            .field("store", &self.store)
            .field("notifier", &self.notifier)
            .finish_non_exhaustive()
    }
}

impl<P, A> Builder<P, A> {
    /// How requests and responses are snapshotted, where tokens travel, and how
    /// answers become responses (default: [`HttpAdapter`]).
    pub fn adapter<A2>(self, adapter: A2) -> Builder<P, A2> {
        Builder {
            policy: self.policy,
            adapter,
            store: self.store,
            notifier: self.notifier,
            retry: self.retry,
            review_base: self.review_base,
            mode: self.mode,
            poll_interval: self.poll_interval,
        }
    }

    /// Where escalations are kept (default: a fresh [`MemoryStore`]).
    pub fn store(mut self, store: impl EscalationStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Who is told about new escalations (default: nobody).
    pub fn notifier(mut self, notifier: impl Notifier) -> Self {
        self.notifier = Some(Arc::new(notifier));
        self
    }

    /// How failed notifications are retried.
    pub fn notify_retry(mut self, retry: NotifyRetry) -> Self {
        self.retry = retry;
        self
    }

    /// Base URL of a review page; notifications link to `{base}/{id}`.
    pub fn review_url(mut self, base: impl Into<String>) -> Self {
        self.review_base = Some(base.into());
        self
    }

    /// Wait mode: the call waits up to `timeout` for a human.
    pub fn wait(mut self, timeout: Duration, on_timeout: TimeoutDefault) -> Self {
        self.mode = Mode::Wait {
            timeout,
            on_timeout,
        };
        self
    }

    /// Detach mode: the call returns a token at once, valid for `ttl`.
    pub fn detach(mut self, ttl: Duration) -> Self {
        self.mode = Mode::Detach { ttl };
        self
    }

    /// Wait mode: how often to re-read the store for resolutions made by other
    /// processes (default 2 s; resolutions through this layer's handle wake at once).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Check the settings: the layer's configuration, or the first mistake.
    /// [`build`](Self::build) (in `layer.rs`) wraps it into the layer.
    pub(crate) fn into_config(self) -> Result<Config<P, A>, BuildError> {
        match &self.mode {
            Mode::Wait { timeout, .. } => check_duration("wait timeout", *timeout)?,
            Mode::Detach { ttl } => check_duration("detach ttl", *ttl)?,
        }
        check_duration("poll interval", self.poll_interval)?;
        if let Some(base) = &self.review_base {
            let valid = base.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            });
            if !valid {
                return Err(BuildError(format!(
                    "review URL must be an absolute http(s) URL, got {base:?}"
                )));
            }
        }
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn EscalationStore>);
        let shared = Shared::new(store, self.notifier, self.retry, self.review_base);
        Ok(Config {
            shared: Arc::new(shared),
            policy: self.policy,
            adapter: self.adapter,
            mode: self.mode,
            poll_interval: self.poll_interval,
        })
    }
}

fn check_duration(name: &str, value: Duration) -> Result<(), BuildError> {
    if value.is_zero() {
        return Err(BuildError(format!("{name} must be positive")));
    }
    if value > MAX_LIFETIME {
        return Err(BuildError(format!(
            "{name} of {value:?} is longer than the maximum of {MAX_LIFETIME:?} (ten years)"
        )));
    }
    Ok(())
}
