use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::progress::{Progress, ProgressFn};

/// One item of a [`Batch`]: a key that names it (unique within the batch, and the
/// key under which its success is stored) and the request for the inner service.
#[derive(Clone)]
pub struct BatchItem<Req> {
    /// The item's name, unique within its batch.
    pub key: String,
    /// The request sent to the inner service (cloned for each attempt).
    pub request: Req,
}

impl<Req> BatchItem<Req> {
    /// An item named `key`.
    pub fn new(key: impl Into<String>, request: Req) -> Self {
        Self {
            key: key.into(),
            request,
        }
    }
}

impl<Req> fmt::Debug for BatchItem<Req> {
    // Requests may hold prompt text: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchItem")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The request of a [`PartialBatch`](super::PartialBatch) service: keyed items, an
/// optional batch id (which turns on idempotent re-runs when the layer has a store),
/// an optional deadline and an optional progress observer.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::partial_batch::{Batch, BatchItem};
///
/// let batch = Batch::new([BatchItem::new("doc-1", "first"), BatchItem::new("doc-2", "second")])
///     .with_id("nightly-2024-06-01")
///     .with_deadline(Duration::from_secs(600))
///     .on_progress(|p| println!("{}/{} done", p.finished, p.total));
/// assert_eq!(batch.len(), 2);
/// assert_eq!(batch.id(), Some("nightly-2024-06-01"));
/// ```
pub struct Batch<Req> {
    pub(crate) id: Option<String>,
    pub(crate) items: Vec<BatchItem<Req>>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) progress: Option<ProgressFn>,
}

impl<Req> Batch<Req> {
    /// A batch of these items, in this order (the report keeps it).
    pub fn new(items: impl IntoIterator<Item = BatchItem<Req>>) -> Self {
        Self {
            id: None,
            items: items.into_iter().collect(),
            deadline: None,
            progress: None,
        }
    }

    /// A batch from `(key, request)` pairs.
    pub fn from_pairs<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Req)>) -> Self {
        Self::new(pairs.into_iter().map(|(k, r)| BatchItem::new(k, r)))
    }

    /// Name the batch. With a store on the layer, successes are recorded under this
    /// id, and a later batch with the same id does not run them again.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// A deadline for this batch, counted from the call; overrides the layer's.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Call `observer` as items finish (and before each retry), from inside the
    /// batch's future: keep it quick (update a progress bar, send on a channel).
    #[must_use]
    pub fn on_progress(mut self, observer: impl Fn(&Progress<'_>) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(observer));
        self
    }

    /// Add one item at the end.
    pub fn push(&mut self, key: impl Into<String>, request: Req) {
        self.items.push(BatchItem::new(key, request));
    }

    /// The batch id, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The items, in order.
    pub fn items(&self) -> &[BatchItem<Req>] {
        &self.items
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// `true` when there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<Req> FromIterator<BatchItem<Req>> for Batch<Req> {
    fn from_iter<I: IntoIterator<Item = BatchItem<Req>>>(iter: I) -> Self {
        Self::new(iter)
    }
}

impl<Req> fmt::Debug for Batch<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("id", &self.id)
            .field("items", &self.items.len())
            .field("deadline", &self.deadline)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}
