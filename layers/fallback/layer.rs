//! The layer, and the constructors that make it and its services.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::builder::Config;
use super::{
    Fallback, FallbackBuilder, FallbackConfigError, Immediate, MarkDegraded, SettleResponse,
};
use crate::classify::{Classify, DefaultClassifier};
use crate::BoxError;

/// Applies [`Fallback`] to a service: the wrapped service is the primary tier.
///
/// Built with [`FallbackLayer::builder`]. Every service this layer makes shares the
/// same tiers (behind an `Arc`); cloning the layer is cheap. See the
/// [module docs](super) for the whole picture.
pub struct FallbackLayer<Req, Res, Err, C = DefaultClassifier, Settle = Immediate> {
    pub(crate) config: Arc<Config<Req, Res, Err, C, Settle>>,
}

impl<Req, Res, Err> FallbackLayer<Req, Res, Err> {
    /// Start configuring the tiers.
    pub fn builder() -> FallbackBuilder<Req, Res, Err> {
        FallbackBuilder::new()
    }
}

impl<Req, Res, Err, C, Settle> Clone for FallbackLayer<Req, Res, Err, C, Settle> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
        }
    }
}

impl<Req, Res, Err, C, Settle> fmt::Debug for FallbackLayer<Req, Res, Err, C, Settle> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S, Req, Res, Err, C, Settle> Layer<S> for FallbackLayer<Req, Res, Err, C, Settle> {
    type Service = Fallback<S, Req, Res, Err, C, Settle>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.clone())
    }
}

impl<S, Req, Res, Err, C, Settle> Fallback<S, Req, Res, Err, C, Settle> {
    /// Wrap `inner` (the primary) with the tiers of `layer`.
    pub fn new(inner: S, layer: FallbackLayer<Req, Res, Err, C, Settle>) -> Self {
        Self::with_config(inner, layer.config)
    }
}

impl<Req, Res, Err, C, Settle> FallbackBuilder<Req, Res, Err, C, Settle> {
    /// Check the configuration and build the layer.
    ///
    /// The bounds are those the layer's services need, stated here so a tier, a
    /// classifier or a response type that does not fit is reported at this call
    /// rather than at the first `ready()` or `call()`: the request is `Clone`, the
    /// classifier classifies `Result<Res, Err>`, and the answer can carry the
    /// [`Degraded`](super::Degraded) marker ([`MarkDegraded`]).
    pub fn build(self) -> Result<FallbackLayer<Req, Res, Err, C, Settle>, FallbackConfigError>
    where
        Req: Clone + Send + 'static,
        Res: Send + 'static,
        Err: Into<BoxError> + Send + 'static,
        C: Classify<Res, Err> + Send + Sync + 'static,
        Settle: SettleResponse<Res> + Send + Sync + 'static,
        Settle::Future: Send + 'static,
        Settle::Output: MarkDegraded + Send + 'static,
    {
        Ok(FallbackLayer {
            config: Arc::new(self.into_config()?),
        })
    }
}
