//! The layer's builder, its [`ConfigError`] and the settings every batch of one
//! layer shares (checked here, made into the layer in `layer.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use super::store::{BatchStore, NoStore, WithStore};
use crate::classify::{DefaultClassifier, FailurePolicy};

/// The longest deadline or backoff a batch accepts: ten years. Layer settings above
/// it are refused by [`build`](PartialBatchLayerBuilder::build); a longer
/// [`Batch::with_deadline`](super::Batch::with_deadline) is cut to it.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The settings shared by every batch of one layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) concurrency: usize,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Option<Duration>,
    pub(crate) policy: FailurePolicy,
}

/// Builds a [`PartialBatchLayer`](super::PartialBatchLayer); [`build`](Self::build)
/// checks the settings.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::classify::ErrorOnlyClassifier;
/// use tower_llm_resilience::partial_batch::{ConfigError, InMemoryBatchStore, PartialBatchLayer};
///
/// let layer = PartialBatchLayer::builder()
///     .concurrency(16)
///     .max_attempts(4)
///     .backoff(Duration::from_millis(200), Duration::from_secs(10))
///     .deadline(Duration::from_secs(300))
///     .classifier(ErrorOnlyClassifier)
///     .store(InMemoryBatchStore::new())
///     .build()?;
/// assert_eq!(layer.concurrency(), 16);
///
/// let bad = PartialBatchLayer::builder().concurrency(0).build();
/// assert_eq!(bad.unwrap_err(), ConfigError::ZeroConcurrency);
/// # Ok::<(), ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PartialBatchLayerBuilder<C = DefaultClassifier, St = NoStore> {
    concurrency: usize,
    max_attempts: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    deadline: Option<Duration>,
    seed: Option<u64>,
    policy: FailurePolicy,
    classifier: C,
    store: St,
}

impl<C, St> PartialBatchLayerBuilder<C, St> {
    /// At most this many items in flight at once (and never more than the inner
    /// service is ready for). Default 8.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Calls per item, at most, the first included (1 means no retries). Default 3.
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Exponential backoff with full jitter: before retry `n`, wait a random time
    /// in `[0, min(max, base * 2^(n-1))]` (at least the server's `Retry-After`).
    /// Default 500 ms and 30 s.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_backoff = base;
        self.max_backoff = max;
        self
    }

    /// Items not finished this long after the batch starts are reported as
    /// unfinished. Default: none. A batch can set its own. At most
    /// [`MAX_DURATION`] (ten years). The deadline bounds everything the batch
    /// waits for, the [`BatchStore`] included: a store that does not answer in
    /// time leaves the items not attempted (`load`) or unrecorded (`record`).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Seed the jitter, for reproducible runs (tests). Default: random.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Which failure kinds are retried. Default [`FailurePolicy::DEFAULT`].
    #[must_use]
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How calls are classified, for example
    /// [`ErrorOnlyClassifier`](crate::classify::ErrorOnlyClassifier) for services
    /// that answer plain values, or a closure.
    pub fn classifier<C2>(self, classifier: C2) -> PartialBatchLayerBuilder<C2, St> {
        PartialBatchLayerBuilder {
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            base_backoff: self.base_backoff,
            max_backoff: self.max_backoff,
            deadline: self.deadline,
            seed: self.seed,
            policy: self.policy,
            classifier,
            store: self.store,
        }
    }

    /// Record the successes of named batches in `store`, and skip them on a
    /// re-run. Responses must then be `Serialize + DeserializeOwned`.
    pub fn store(self, store: impl BatchStore) -> PartialBatchLayerBuilder<C, WithStore> {
        self.shared_store(Arc::new(store))
    }

    /// Like [`store`](Self::store), for a store already behind an `Arc`.
    pub fn shared_store(
        self,
        store: Arc<dyn BatchStore>,
    ) -> PartialBatchLayerBuilder<C, WithStore> {
        PartialBatchLayerBuilder {
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            base_backoff: self.base_backoff,
            max_backoff: self.max_backoff,
            deadline: self.deadline,
            seed: self.seed,
            policy: self.policy,
            classifier: self.classifier,
            store: WithStore(store),
        }
    }

    /// Check the settings: the layer's parts, or the first mistake.
    /// [`build`](Self::build) (in `layer.rs`) makes the layer from them.
    pub(crate) fn into_parts(self) -> Result<(Config, C, St, fastrand::Rng), ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::ZeroMaxAttempts);
        }
        if self.base_backoff.is_zero() || self.base_backoff > self.max_backoff {
            return Err(ConfigError::InvalidBackoff {
                base: self.base_backoff,
                max: self.max_backoff,
            });
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroDeadline);
        }
        let too_long = [
            ("deadline", self.deadline),
            ("max_backoff", Some(self.max_backoff)),
        ]
        .into_iter()
        .find_map(|(setting, value)| {
            value
                .filter(|v| *v > MAX_DURATION)
                .map(|value| ConfigError::TooLong { setting, value })
        });
        if let Some(error) = too_long {
            return Err(error);
        }
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let config = Config {
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            backoff: Backoff {
                base: self.base_backoff,
                max: self.max_backoff,
            },
            deadline: self.deadline,
            policy: self.policy,
        };
        Ok((config, self.classifier, self.store, rng))
    }
}

impl PartialBatchLayerBuilder {
    /// The defaults, documented at [`PartialBatchLayer::new`](super::PartialBatchLayer::new).
    pub(crate) fn new() -> Self {
        PartialBatchLayerBuilder {
            concurrency: 8,
            max_attempts: 3,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            deadline: None,
            seed: None,
            policy: FailurePolicy::DEFAULT,
            classifier: DefaultClassifier,
            store: NoStore,
        }
    }
}

/// A [`PartialBatchLayer`](super::PartialBatchLayer) configuration that makes no
/// sense, reported by [`build`](super::PartialBatchLayerBuilder::build).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `concurrency` must be at least 1.
    ZeroConcurrency,
    /// `max_attempts` must be at least 1 (1 means no retries).
    ZeroMaxAttempts,
    /// The base backoff must be positive and not above the maximum.
    InvalidBackoff {
        /// The base given.
        base: Duration,
        /// The maximum given.
        max: Duration,
    },
    /// A deadline must be positive.
    ZeroDeadline,
    /// A duration is longer than [`MAX_DURATION`] (ten years);
    /// longer values would overflow `Instant` arithmetic at call time.
    TooLong {
        /// The setting (`deadline`, `max_backoff`).
        setting: &'static str,
        /// The value given.
        value: Duration,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroConcurrency => {
                f.write_str("partial batch: concurrency must be at least 1")
            }
            ConfigError::ZeroMaxAttempts => f.write_str(
                "partial batch: max_attempts must be at least 1 (1 means no retries)",
            ),
            ConfigError::InvalidBackoff { base, max } => write!(
                f,
                "partial batch: backoff base ({base:?}) must be positive and not above the maximum ({max:?})"
            ),
            ConfigError::ZeroDeadline => f.write_str("partial batch: deadline must be positive"),
            ConfigError::TooLong { setting, value } => write!(
                f,
                "partial batch: {setting} of {value:?} is longer than the maximum of {:?} (ten years)",
                MAX_DURATION
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
