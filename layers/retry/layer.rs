//! The layer, its handle, and the constructors.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tower_layer::Layer;

use super::builder::{BuildError, Builder};
use super::policy::{RetryPolicy, Shared};
use crate::classify::DefaultClassifier;

/// A service retried by a [`RetryLayer`]: tower's own
/// [`Retry`](tower::retry::Retry) with a [`RetryPolicy`].
///
/// # Readiness
///
/// `poll_ready` is the inner service's; the inner service must be `Clone` (each
/// request's future holds a clone to send the retries through), and so must the
/// request ([`clone_request`](tower::retry::Policy::clone_request) keeps a copy
/// for the next attempt). Errors and responses are the inner service's, unchanged:
/// when the retries run out, the caller gets the last attempt's result.
pub type Retry<S, C = DefaultClassifier> = tower::retry::Retry<RetryPolicy<C>, S>;

/// Wraps services in tower's [`Retry`](tower::retry::Retry) with a
/// [`RetryPolicy`]. Every service this layer makes, and every clone, shares the
/// layer's budget, jitter source and counters, created when the layer was built.
pub struct RetryLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    classifier: C,
}

impl RetryLayer {
    /// Start configuring a layer. See [`Builder`] for the defaults.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A layer with the default settings.
    pub fn new() -> Self {
        Builder::new()
            .build()
            .expect("the default retry settings are valid")
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> RetryLayer<C> {
    /// Counters of this layer's retries.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The policy this layer gives each service.
    pub fn policy(&self) -> RetryPolicy<C>
    where
        C: Clone,
    {
        RetryPolicy::new(self.shared.clone(), self.classifier.clone())
    }
}

impl<C: Clone> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::retry::Retry::new(self.policy(), inner)
    }
}

impl<C> Builder<C> {
    /// Validate the settings and build the layer.
    pub fn build(self) -> Result<RetryLayer<C>, BuildError> {
        let (config, classifier) = self.into_parts()?;
        Ok(RetryLayer {
            shared: Arc::new(Shared::new(config)),
            classifier,
        })
    }
}

/// Read-only access to the counters of one [`RetryLayer`].
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
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

    /// Requests whose first attempt completed.
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests.load(Ordering::Relaxed)
    }

    /// Retries started.
    pub fn retries(&self) -> u64 {
        self.shared.counters.retries.load(Ordering::Relaxed)
    }

    /// Retryable failures returned as they were because the budget was spent.
    pub fn budget_exhausted(&self) -> u64 {
        self.shared
            .counters
            .budget_exhausted
            .load(Ordering::Relaxed)
    }
}
