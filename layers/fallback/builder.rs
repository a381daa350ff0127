//! The fallback's builder, its tiers, and the configuration every service of
//! one layer shares (built here, wrapped into the layer in `layer.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

use super::{FallbackConfigError, FirstEvent, Immediate};
use crate::classify::{DefaultClassifier, FailureCategory, FailureKind, FailurePolicy};

/// One alternate tier: a named service with the primary's request, response and
/// error types, an optional request mapping, and the extra failure kinds it takes
/// over from.
///
/// ```
/// use bytes::Bytes;
/// use tower::service_fn;
/// use tower_llm_resilience::classify::FailureCategory;
/// use tower_llm_resilience::fallback::{rewrite_model, Tier};
/// use tower_llm_resilience::BoxError;
///
/// let long_context = service_fn(|req: http::Request<Bytes>| async move {
///     Ok::<_, BoxError>(http::Response::new(req.into_body()))
/// });
/// // The chain's error type (the primary's) is named when the tier stands alone.
/// let tier: Tier<_, _, BoxError> = Tier::new("gpt-4.1", long_context)
///     .map_request(rewrite_model("gpt-4.1"))
///     .accepts(FailureCategory::ContextLengthExceeded);
/// ```
pub struct Tier<Req, Res, Err> {
    pub(crate) name: Arc<str>,
    pub(crate) service: BoxCloneSyncService<Req, Res, Err>,
    pub(crate) map_request: Option<Arc<dyn Fn(Req) -> Req + Send + Sync>>,
    pub(crate) accepts: Categories,
}

impl<Req, Res, Err> Tier<Req, Res, Err> {
    /// A tier named `name` that calls `service`. The service is cloned for each
    /// call that reaches this tier and driven to readiness inside the response
    /// future.
    ///
    /// The service's error only has to convert into the chain's error type `Err`
    /// (the primary's): a plain client (`ClientError`) can back up a primary
    /// behind a circuit breaker (`BoxError`) as it is.
    pub fn new<S>(name: impl Into<Arc<str>>, service: S) -> Self
    where
        S: Service<Req, Response = Res> + Clone + Send + Sync + 'static,
        S::Error: Into<Err> + 'static,
        S::Future: Send + 'static,
        Req: 'static,
        Res: 'static,
        Err: 'static,
    {
        Self {
            name: name.into(),
            service: BoxCloneSyncService::new(service.map_err(Into::into)),
            map_request: None,
            accepts: Categories::default(),
        }
    }

    /// Rewrite the request before this tier gets it (another model name, another
    /// URL, ...). See [`rewrite_model`](super::rewrite_model) for JSON bodies.
    #[must_use]
    pub fn map_request(mut self, map: impl Fn(Req) -> Req + Send + Sync + 'static) -> Self {
        self.map_request = Some(Arc::new(map));
        self
    }

    /// Also take over after failures of this category, which the policy does not
    /// fall back from by default: for example `ContextLengthExceeded` for a tier
    /// with a larger context window, or `ContentFiltered` for a provider with
    /// other content rules. Such a failure skips straight to the first tier that
    /// accepts it.
    #[must_use]
    pub fn accepts(mut self, category: FailureCategory) -> Self {
        self.accepts.insert(category);
        self
    }

    /// The tier's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn accepts_category(&self, category: FailureCategory) -> bool {
        self.accepts.contains(category)
    }
}

impl<Req, Res, Err> fmt::Debug for Tier<Req, Res, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("name", &self.name)
            .field("map_request", &self.map_request.is_some())
            .field("accepts", &self.accepts)
            .finish()
    }
}

/// Configures a [`FallbackLayer`](super::FallbackLayer); [`build`](Self::build)
/// checks the configuration.
pub struct FallbackBuilder<Req, Res, Err, C = DefaultClassifier, Settle = Immediate> {
    primary: Arc<str>,
    alternates: Vec<Tier<Req, Res, Err>>,
    final_responder: Option<FinalResponder<Req, Res>>,
    classifier: C,
    policy: FailurePolicy,
    hedge_after: Option<Duration>,
    settle: Settle,
    error: Option<FallbackConfigError>,
}

impl<Req, Res, Err> FallbackBuilder<Req, Res, Err> {
    pub(crate) fn new() -> Self {
        Self {
            primary: Arc::from("primary"),
            alternates: Vec::new(),
            final_responder: None,
            classifier: DefaultClassifier,
            policy: FailurePolicy::DEFAULT,
            hedge_after: None,
            settle: Immediate,
            error: None,
        }
    }
}

impl<Req, Res, Err, C, Settle> FallbackBuilder<Req, Res, Err, C, Settle> {
    /// Name the primary (the wrapped service) in markers, errors and metrics.
    /// Defaults to `"primary"`.
    #[must_use]
    pub fn primary_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.primary = name.into();
        self
    }

    /// Add an alternate, tried after the primary and the alternates added before.
    /// Its error only has to convert into the primary's (see [`Tier::new`]).
    #[must_use]
    pub fn alternate<S>(self, name: impl Into<Arc<str>>, service: S) -> Self
    where
        S: Service<Req, Response = Res> + Clone + Send + Sync + 'static,
        S::Error: Into<Err> + 'static,
        S::Future: Send + 'static,
        Req: 'static,
        Res: 'static,
        Err: 'static,
    {
        self.tier(Tier::new(name, service))
    }

    /// Add a configured alternate.
    #[must_use]
    pub fn tier(mut self, tier: Tier<Req, Res, Err>) -> Self {
        self.alternates.push(tier);
        self
    }

    /// The last resort, which cannot fail: a closure from the request to an answer
    /// (a template, a cached answer, an apology). It answers when every tier
    /// failed with a failure the policy falls back from. It gets the request as
    /// the caller sent it (no tier's mapping).
    #[must_use]
    pub fn final_responder(
        mut self,
        name: impl Into<Arc<str>>,
        respond: impl Fn(Req) -> Res + Send + Sync + 'static,
    ) -> Self {
        self.final_responder = Some(FinalResponder {
            name: name.into(),
            respond: Arc::new(respond),
        });
        self
    }

    /// Decide which failures fall back from this policy instead of the defaults
    /// of [`FailurePolicy`] (its `worth_fallback` column).
    #[must_use]
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Classify results with `classifier` instead of [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> FallbackBuilder<Req, Res, Err, C2, Settle> {
        FallbackBuilder {
            primary: self.primary,
            alternates: self.alternates,
            final_responder: self.final_responder,
            classifier,
            policy: self.policy,
            hedge_after: self.hedge_after,
            settle: self.settle,
            error: self.error,
        }
    }

    /// Hedge: when a tier has not answered after `delay`, also start the next
    /// alternate. The first answer wins, the other call is dropped (cancelled),
    /// and a degraded answer is marked [`hedged`](super::Degraded::hedged).
    ///
    /// A hedge only adds chances. When the hedged tier fails with a failure that is
    /// not fallen back from (a smaller model's context length, a caller error), the
    /// call waits for the tier still running, and that tier's outcome decides; the
    /// hedged tier's error is returned only if that tier fails too. When the hedged
    /// tier fails with a failure that is fallen back from and no alternate is
    /// left, the delay starts once more, and then the final responder (if any, and
    /// if the policy falls back from timeouts) answers in place of the tier that
    /// still has not: a hung tier never keeps the call pending for ever.
    #[must_use]
    pub fn hedge_after(mut self, delay: Duration) -> Self {
        if delay.is_zero() {
            self.error
                .get_or_insert(FallbackConfigError::ZeroDuration("hedge_after"));
        }
        self.hedge_after = Some(delay);
        self
    }

    /// For `http::Response` event streams: a tier answers only once its first
    /// `data:` event arrived, at most `timeout` after the response head. See
    /// [`FirstEvent`].
    pub fn first_event_timeout(
        self,
        timeout: Duration,
    ) -> FallbackBuilder<Req, Res, Err, C, FirstEvent> {
        let mut next = self.settle_with(FirstEvent::new(timeout));
        if timeout.is_zero() {
            next.error
                .get_or_insert(FallbackConfigError::ZeroDuration("first_event_timeout"));
        }
        next
    }

    /// Decide when a successful response counts as an answer with `settle`, a
    /// [`SettleResponse`](super::SettleResponse) for the response type.
    pub fn settle_with<Settle2>(
        self,
        settle: Settle2,
    ) -> FallbackBuilder<Req, Res, Err, C, Settle2> {
        FallbackBuilder {
            primary: self.primary,
            alternates: self.alternates,
            final_responder: self.final_responder,
            classifier: self.classifier,
            policy: self.policy,
            hedge_after: self.hedge_after,
            settle,
            error: self.error,
        }
    }

    /// Check the configuration: the layer's configuration, or the first mistake.
    /// [`build`](Self::build) (in `layer.rs`) wraps it into the layer.
    pub(crate) fn into_config(
        self,
    ) -> Result<Config<Req, Res, Err, C, Settle>, FallbackConfigError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.alternates.is_empty() && self.final_responder.is_none() {
            return Err(FallbackConfigError::NoTiers);
        }
        if self.hedge_after.is_some() && self.alternates.is_empty() {
            return Err(FallbackConfigError::HedgeWithoutAlternate);
        }
        let names = std::iter::once(&self.primary)
            .chain(self.alternates.iter().map(|tier| &tier.name))
            .chain(self.final_responder.iter().map(|last| &last.name));
        let mut seen: Vec<&str> = Vec::new();
        for name in names {
            if name.is_empty() {
                return Err(FallbackConfigError::EmptyName);
            }
            if seen.contains(&&**name) {
                return Err(FallbackConfigError::DuplicateName(name.to_string()));
            }
            seen.push(name);
        }
        Ok(Config {
            primary: self.primary,
            alternates: self.alternates,
            final_responder: self.final_responder,
            classifier: self.classifier,
            policy: self.policy,
            hedge_after: self.hedge_after,
            settle: self.settle,
        })
    }
}

impl<Req, Res, Err, C, Settle> fmt::Debug for FallbackBuilder<Req, Res, Err, C, Settle> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackBuilder")
            .field("primary", &self.primary)
            .field("alternates", &self.alternates)
            .field("hedge_after", &self.hedge_after)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// The final responder: a closure that always answers.
pub(crate) struct FinalResponder<Req, Res> {
    pub(crate) name: Arc<str>,
    pub(crate) respond: Arc<dyn Fn(Req) -> Res + Send + Sync>,
}

/// Everything a layer's services share.
pub(crate) struct Config<Req, Res, Err, C, Settle> {
    pub(crate) primary: Arc<str>,
    pub(crate) alternates: Vec<Tier<Req, Res, Err>>,
    pub(crate) final_responder: Option<FinalResponder<Req, Res>>,
    pub(crate) classifier: C,
    pub(crate) policy: FailurePolicy,
    pub(crate) hedge_after: Option<Duration>,
    pub(crate) settle: Settle,
}

impl<Req, Res, Err, C, Settle> Config<Req, Res, Err, C, Settle> {
    /// The name of the tier at `index` (0 = primary, then alternates, then final).
    pub(crate) fn name(&self, index: usize) -> &Arc<str> {
        match index {
            0 => &self.primary,
            i if i <= self.alternates.len() => &self.alternates[i - 1].name,
            _ => match &self.final_responder {
                Some(last) => &last.name,
                None => &self.primary,
            },
        }
    }

    /// The index the final responder has in markers.
    pub(crate) fn final_index(&self) -> usize {
        self.alternates.len() + 1
    }

    /// The first alternate at or after position `from` (1-based) that takes over
    /// after a failure of `kind`.
    pub(crate) fn next_accepting(&self, from: usize, kind: &FailureKind) -> Option<usize> {
        let default = self.policy.is_worth_fallback(kind);
        let category = kind.category();
        (from.max(1)..=self.alternates.len())
            .find(|&i| default || self.alternates[i - 1].accepts_category(category))
    }

    /// Is this failure one the configuration falls back from at all (by policy,
    /// or because a later alternate declared it takes it)?
    pub(crate) fn falls_back(&self, from: usize, kind: &FailureKind) -> bool {
        self.policy.is_worth_fallback(kind) || self.next_accepting(from, kind).is_some()
    }

    pub(crate) fn worth_final(&self, kind: &FailureKind) -> bool {
        self.final_responder.is_some() && self.policy.is_worth_fallback(kind)
    }
}

impl<Req, Res, Err, C, Settle> fmt::Debug for Config<Req, Res, Err, C, Settle> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("primary", &self.primary)
            .field("alternates", &self.alternates)
            .field(
                "final_responder",
                &self.final_responder.as_ref().map(|last| &last.name),
            )
            .field("policy", &self.policy)
            .field("hedge_after", &self.hedge_after)
            .field("classifier", &std::any::type_name::<C>())
            .field("settle", &std::any::type_name::<Settle>())
            .finish()
    }
}

/// Bit set of failure categories.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Categories(u32);

impl Categories {
    pub(crate) fn insert(&mut self, category: FailureCategory) {
        self.0 |= 1 << category.index();
    }

    pub(crate) fn contains(self, category: FailureCategory) -> bool {
        self.0 & (1 << category.index()) != 0
    }
}
