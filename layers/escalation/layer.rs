use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tower_layer::Layer;

use super::engine::Shared;
use super::error::BuildError;
use super::handle::Handle;
use super::notify::{Notifier, NotifyRetry};
use super::record::Decision;
use super::service::Escalation;
use super::snapshot::HttpAdapter;
use super::store::{EscalationStore, MemoryStore};

/// The longest wait, detach lifetime or poll interval a builder accepts: ten years.
/// Longer values would overflow `Instant`/`SystemTime` arithmetic on some platforms
/// (`Duration::MAX` always does), so they are refused at build time instead of
/// panicking at call time.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

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

/// Pauses calls that need a human, notifies, and resumes them with the resolution.
///
/// Built with [`EscalationLayer::builder`]; every service it makes shares one store,
/// notifier and [`Handle`]. See the [module docs](super) for the whole picture.
pub struct EscalationLayer<P, A = HttpAdapter> {
    config: Arc<Config<P, A>>,
}

impl<P, A> Clone for EscalationLayer<P, A> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
        }
    }
}

impl<P, A> fmt::Debug for EscalationLayer<P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EscalationLayer")
            .field("mode", &self.config.mode)
            .field("shared", &self.config.shared)
            .finish_non_exhaustive()
    }
}

impl<P> EscalationLayer<P, HttpAdapter> {
    /// A builder with this policy, the [`HttpAdapter`], an in-memory store, detach
    /// mode with a 24 hour expiry, and no notifier.
    pub fn builder(policy: P) -> Builder<P, HttpAdapter> {
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

impl<P, A> EscalationLayer<P, A> {
    /// A handle on this layer's escalations, for humans and tools.
    pub fn handle(&self) -> Handle {
        Handle::from_shared(self.config.shared.clone())
    }
}

impl<S, P, A> Layer<S> for EscalationLayer<P, A> {
    type Service = Escalation<S, P, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Escalation::from_config(inner, self.config.clone())
    }
}

/// Configures an [`EscalationLayer`]; [`build`](Builder::build) validates.
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

    /// Checks the settings and builds the layer.
    ///
    /// Every duration (wait timeout, detach ttl, poll interval) must be positive and
    /// at most [`MAX_LIFETIME`] (ten years).
    pub fn build(self) -> Result<EscalationLayer<P, A>, BuildError> {
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
        Ok(EscalationLayer {
            config: Arc::new(Config {
                shared: Arc::new(shared),
                policy: self.policy,
                adapter: self.adapter,
                mode: self.mode,
                poll_interval: self.poll_interval,
            }),
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
