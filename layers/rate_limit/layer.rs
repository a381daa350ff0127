//! The layer, its handle, and the constructors.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tower_layer::Layer;

use super::builder::{BuildError, Builder, NoTokenCost};
use super::state::{Exhausted, Shared};
use super::RateLimit;
use crate::classify::DefaultClassifier;

/// Wraps services in a [`RateLimit`]. Every service this layer makes, and every
/// clone of them, shares what the layer learned of the upstream's limits: build
/// one layer per upstream (per API key), created when the layer was built.
pub struct RateLimitLayer<C = DefaultClassifier, T = NoTokenCost> {
    shared: Arc<Shared>,
    classifier: C,
    token_cost: T,
}

impl RateLimitLayer {
    /// Start configuring a layer. See [`Builder`] for the defaults.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A layer with the default settings: the upstream's announced limits, waits
    /// up to 30 s.
    pub fn new() -> Self {
        Builder::new()
            .build()
            .expect("the default rate limit settings are valid")
    }
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, T> RateLimitLayer<C, T> {
    /// The limits this layer knows.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Clone, T: Clone> Clone for RateLimitLayer<C, T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
            token_cost: self.token_cost.clone(),
        }
    }
}

impl<C, T> fmt::Debug for RateLimitLayer<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone, T: Clone> Layer<S> for RateLimitLayer<C, T> {
    type Service = RateLimit<S, C, T>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(
            inner,
            self.classifier.clone(),
            self.token_cost.clone(),
            self.shared.clone(),
        )
    }
}

impl<C, T> Builder<C, T> {
    /// Validate the settings and build the layer.
    pub fn build(self) -> Result<RateLimitLayer<C, T>, BuildError> {
        let (config, classifier, token_cost) = self.into_parts()?;
        Ok(RateLimitLayer {
            shared: Arc::new(Shared::new(config)),
            classifier,
            token_cost,
        })
    }
}

impl<S, C, T> RateLimit<S, C, T> {
    /// The limits this service shares with its layer.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

/// Read access to what one [`RateLimitLayer`] knows and did.
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The limits exhausted now, with the time until each resets.
    pub fn exhausted(&self) -> Vec<Exhausted> {
        self.shared.exhausted()
    }

    /// Calls that had to wait for a limit to reset.
    pub fn waits(&self) -> u64 {
        self.shared.waits.load(Ordering::Relaxed)
    }

    /// Calls failed at once because a limit reset too late.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }
}
