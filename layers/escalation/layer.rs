//! The layer, and the constructor that makes it.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::builder::{Builder, Config};
use super::error::BuildError;
use super::handle::Handle;
use super::service::Escalation;
use super::snapshot::HttpAdapter;

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
        Builder::new(policy)
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

impl<P, A> Builder<P, A> {
    /// Checks the settings and builds the layer.
    ///
    /// Every duration (wait timeout, detach ttl, poll interval) must be positive and
    /// at most [`MAX_LIFETIME`](super::MAX_LIFETIME) (ten years).
    pub fn build(self) -> Result<EscalationLayer<P, A>, BuildError> {
        Ok(EscalationLayer {
            config: Arc::new(self.into_config()?),
        })
    }
}
