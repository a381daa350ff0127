use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{Fallback, FallbackBuilder, Immediate, Tier};
use crate::classify::{DefaultClassifier, FailureCategory, FailureKind, FailurePolicy};

/// Applies [`Fallback`] to a service: the wrapped service is the primary tier.
///
/// Built with [`FallbackLayer::builder`]. Every service this layer makes shares the
/// same tiers (behind an `Arc`); cloning the layer is cheap. See the
/// [module docs](super) for the whole picture.
pub struct FallbackLayer<Req, Res, Err, C = DefaultClassifier, P = Immediate> {
    pub(crate) config: Arc<Config<Req, Res, Err, C, P>>,
}

impl<Req, Res, Err> FallbackLayer<Req, Res, Err> {
    /// Start configuring the tiers.
    pub fn builder() -> FallbackBuilder<Req, Res, Err> {
        FallbackBuilder::new()
    }
}

impl<Req, Res, Err, C, P> Clone for FallbackLayer<Req, Res, Err, C, P> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
        }
    }
}

impl<Req, Res, Err, C, P> fmt::Debug for FallbackLayer<Req, Res, Err, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S, Req, Res, Err, C, P> Layer<S> for FallbackLayer<Req, Res, Err, C, P> {
    type Service = Fallback<S, Req, Res, Err, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.clone())
    }
}

/// The final responder: a closure that always answers.
pub(crate) struct FinalResponder<Req, Res> {
    pub(crate) name: Arc<str>,
    pub(crate) respond: Arc<dyn Fn(Req) -> Res + Send + Sync>,
}

/// Everything a layer's services share.
pub(crate) struct Config<Req, Res, Err, C, P> {
    pub(crate) primary: Arc<str>,
    pub(crate) alternates: Vec<Tier<Req, Res, Err>>,
    pub(crate) final_responder: Option<FinalResponder<Req, Res>>,
    pub(crate) classifier: C,
    pub(crate) policy: FailurePolicy,
    pub(crate) hedge_after: Option<Duration>,
    pub(crate) settle: P,
}

impl<Req, Res, Err, C, P> Config<Req, Res, Err, C, P> {
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

impl<Req, Res, Err, C, P> fmt::Debug for Config<Req, Res, Err, C, P> {
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
            .field("settle", &std::any::type_name::<P>())
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
