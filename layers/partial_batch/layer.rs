//! The layer, and the constructors that make it and its services.

use std::fmt;
use std::sync::{Arc, Mutex};

use tower_layer::Layer;

use super::builder::{Config, ConfigError, PartialBatchLayerBuilder};
use super::service::PartialBatch;
use super::store::NoStore;
use crate::classify::DefaultClassifier;

/// Turns a `Service<Req>` into a service over [`Batch<Req>`](super::Batch) that
/// answers a [`BatchReport`](super::BatchReport). See the [module docs](super).
///
/// `C` classifies each call ([`DefaultClassifier`] by default); `St` is
/// [`NoStore`] or, after [`PartialBatchLayerBuilder::store`], [`WithStore`](super::WithStore).
#[derive(Clone)]
pub struct PartialBatchLayer<C = DefaultClassifier, St = NoStore> {
    pub(crate) config: Config,
    pub(crate) classifier: C,
    pub(crate) store: St,
    // One generator per layer, so batches draw different jitter even when seeded;
    // each batch forks its own, so the lock is taken once per batch.
    pub(crate) rng: Arc<Mutex<fastrand::Rng>>,
}

impl PartialBatchLayer {
    /// The defaults: 8 items in flight, 3 attempts per item, backoff from 500 ms
    /// up to 30 s, no deadline, the default [`FailurePolicy`](crate::classify::FailurePolicy), no store.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid")
    }

    /// Start from the defaults of [`new`](Self::new).
    pub fn builder() -> PartialBatchLayerBuilder {
        PartialBatchLayerBuilder::new()
    }
}

impl Default for PartialBatchLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, St> PartialBatchLayer<C, St> {
    /// At most this many items in flight.
    pub fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    /// Calls per item, at most.
    pub fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }
}

impl<S, C: Clone, St: Clone> Layer<S> for PartialBatchLayer<C, St> {
    type Service = PartialBatch<S, C, St>;

    fn layer(&self, inner: S) -> Self::Service {
        PartialBatch::from_layer(inner, self.clone())
    }
}

impl<C: fmt::Debug, St: fmt::Debug> fmt::Debug for PartialBatchLayer<C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialBatchLayer")
            .field("config", &self.config)
            .field("classifier", &self.classifier)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<C, St> PartialBatchLayerBuilder<C, St> {
    /// Check the settings and build the layer.
    pub fn build(self) -> Result<PartialBatchLayer<C, St>, ConfigError> {
        let (config, classifier, store, rng) = self.into_parts()?;
        Ok(PartialBatchLayer {
            config,
            classifier,
            store,
            rng: Arc::new(Mutex::new(rng)),
        })
    }
}

impl<S> PartialBatch<S> {
    /// Wrap `inner` with the defaults of [`PartialBatchLayer::new`].
    pub fn new(inner: S) -> Self {
        Self::from_layer(inner, PartialBatchLayer::new())
    }
}

impl<S, C, St> PartialBatch<S, C, St> {
    pub(crate) fn from_layer(inner: S, layer: PartialBatchLayer<C, St>) -> Self {
        Self {
            inner,
            config: layer.config,
            classifier: layer.classifier,
            store: layer.store,
            rng: layer.rng,
        }
    }
}
