//! Idempotency stores: where a named batch records its successes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::BoxError;

/// The future a [`BatchStore`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One recorded success: the response serialised as JSON, and how many calls it
/// took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSuccess {
    /// The response, as JSON (serde).
    pub response_json: String,
    /// Calls it took in the run that recorded it.
    pub attempts: u32,
}

/// Where a named batch records its successes, so that a re-run of the same batch
/// id does not call the inner service for them again.
///
/// The trait is object-safe (the layer keeps an `Arc<dyn BatchStore>`), and every
/// method borrows its arguments for the returned future's lifetime, so an
/// implementation writes `Box::pin(async move { ... })` around its own async code.
/// Keys are opaque strings; responses arrive already serialised, so a store never
/// needs the response type: a SQLite table `(batch_id, item_key, response_json,
/// attempts)` or a Redis hash per batch (`HSET batch:{id} {key} {json}`) fits.
///
/// ```
/// use std::collections::HashMap;
/// use tower_llm_resilience::partial_batch::{BatchStore, StoreFuture, StoredSuccess};
///
/// /// A store that forgets everything (for illustration).
/// #[derive(Debug)]
/// struct Forgetful;
///
/// impl BatchStore for Forgetful {
///     fn load<'a>(&'a self, _batch_id: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>> {
///         Box::pin(async { Ok(HashMap::new()) })
///     }
///     fn record<'a>(&'a self, _batch_id: &'a str, _key: &'a str, _success: StoredSuccess) -> StoreFuture<'a, ()> {
///         Box::pin(async { Ok(()) })
///     }
///     fn forget<'a>(&'a self, _batch_id: &'a str) -> StoreFuture<'a, ()> {
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait BatchStore: fmt::Debug + Send + Sync + 'static {
    /// Every success recorded for `batch_id`, by item key (empty for an unknown
    /// batch). Called once per batch, before any item is sent.
    fn load<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>>;

    /// Record that item `key` of `batch_id` succeeded (replacing any earlier
    /// record). Called as each success happens.
    fn record<'a>(
        &'a self,
        batch_id: &'a str,
        key: &'a str,
        success: StoredSuccess,
    ) -> StoreFuture<'a, ()>;

    /// Drop everything recorded for `batch_id`, so that it runs in full again.
    fn forget<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, ()>;
}

impl<T: BatchStore + ?Sized> BatchStore for Arc<T> {
    fn load<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>> {
        (**self).load(batch_id)
    }

    fn record<'a>(
        &'a self,
        batch_id: &'a str,
        key: &'a str,
        success: StoredSuccess,
    ) -> StoreFuture<'a, ()> {
        (**self).record(batch_id, key, success)
    }

    fn forget<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, ()> {
        (**self).forget(batch_id)
    }
}

/// A [`BatchStore`] failed (unreachable, corrupt, ...).
#[derive(Debug)]
pub struct StoreError {
    source: BoxError,
}

impl StoreError {
    /// A store error caused by `source`.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }

    /// The underlying error.
    pub fn into_inner(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch store error: {}", self.source)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A [`BatchStore`] in process memory: for tests, and for single-process programs
/// that re-run batches while they live. Clones share the same records.
#[derive(Clone, Debug, Default)]
pub struct InMemoryBatchStore {
    batches: Arc<Mutex<HashMap<String, HashMap<String, StoredSuccess>>>>,
}

impl InMemoryBatchStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many successes are recorded for `batch_id`.
    pub fn recorded(&self, batch_id: &str) -> usize {
        self.lock().get(batch_id).map_or(0, HashMap::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, StoredSuccess>>> {
        // A panic while holding the lock cannot leave a map half-written.
        self.batches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BatchStore for InMemoryBatchStore {
    fn load<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>> {
        Box::pin(async move { Ok(self.lock().get(batch_id).cloned().unwrap_or_default()) })
    }

    fn record<'a>(
        &'a self,
        batch_id: &'a str,
        key: &'a str,
        success: StoredSuccess,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.lock()
                .entry(batch_id.to_owned())
                .or_default()
                .insert(key.to_owned(), success);
            Ok(())
        })
    }

    fn forget<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.lock().remove(batch_id);
            Ok(())
        })
    }
}

/// How a [`PartialBatch`](super::PartialBatch) service keeps responses: without a
/// store ([`NoStore`], any response type) or in a [`BatchStore`] through serde
/// ([`WithStore`], responses `Serialize + DeserializeOwned`).
///
/// Chosen by [`PartialBatchLayerBuilder::store`](super::PartialBatchLayerBuilder::store);
/// implement it yourself only for another encoding than JSON.
pub trait ResponseStore<Res>: Clone + Send + Sync + 'static {
    /// The store, if there is one.
    fn store(&self) -> Option<&Arc<dyn BatchStore>>;
    /// Serialise a response for the store.
    fn encode(&self, response: &Res) -> Result<String, BoxError>;
    /// Read a stored response back.
    fn decode(&self, json: &str) -> Result<Res, BoxError>;
}

/// No idempotency store: every item of every batch is sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStore;

impl<Res> ResponseStore<Res> for NoStore {
    fn store(&self) -> Option<&Arc<dyn BatchStore>> {
        None
    }

    fn encode(&self, _: &Res) -> Result<String, BoxError> {
        Err("no batch store configured".into())
    }

    fn decode(&self, _: &str) -> Result<Res, BoxError> {
        Err("no batch store configured".into())
    }
}

/// Successes of named batches go to this [`BatchStore`], as JSON.
#[derive(Clone, Debug)]
pub struct WithStore(pub(crate) Arc<dyn BatchStore>);

impl WithStore {
    /// The store.
    pub fn get_ref(&self) -> &Arc<dyn BatchStore> {
        &self.0
    }
}

impl<Res> ResponseStore<Res> for WithStore
where
    Res: Serialize + serde::de::DeserializeOwned,
{
    fn store(&self) -> Option<&Arc<dyn BatchStore>> {
        Some(&self.0)
    }

    fn encode(&self, response: &Res) -> Result<String, BoxError> {
        Ok(serde_json::to_string(response)?)
    }

    fn decode(&self, json: &str) -> Result<Res, BoxError> {
        Ok(serde_json::from_str(json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_store_records_loads_and_forgets() {
        let store = InMemoryBatchStore::new();
        let success = StoredSuccess {
            response_json: "\"hi\"".into(),
            attempts: 2,
        };
        store.record("b", "k1", success.clone()).await.unwrap();
        assert_eq!(store.recorded("b"), 1);
        let shared: Arc<dyn BatchStore> = Arc::new(store.clone());
        assert_eq!(shared.load("b").await.unwrap().get("k1"), Some(&success));
        assert!(shared.load("other").await.unwrap().is_empty());
        shared.forget("b").await.unwrap();
        assert_eq!(store.recorded("b"), 0);
    }
}
