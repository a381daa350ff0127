//! [`BoundedBatchStore`]: the in-memory batch records, bounded in time and size.
//!
//! A named batch's successes are kept `[batch] ttl_secs` after its last run, and
//! all batches together hold at most `max_records` item successes and
//! `max_bytes` of answers: over either, the batches run longest ago are dropped
//! whole (their items simply run again if the batch comes back).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tower_llm_resilience::partial_batch::{BatchStore, StoreFuture, StoredSuccess};

#[derive(Debug)]
struct Entry {
    items: HashMap<String, StoredSuccess>,
    bytes: usize,
    touched: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    batches: HashMap<String, Entry>,
    records: usize,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, batch_id: &str) {
        if let Some(entry) = self.batches.remove(batch_id) {
            self.records -= entry.items.len();
            self.bytes -= entry.bytes;
        }
    }

    fn drop_expired(&mut self, now: Instant, ttl: Duration) {
        let expired: Vec<String> = self
            .batches
            .iter()
            .filter(|(_, e)| now.duration_since(e.touched) >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }

    /// Drop the least recently run batches (never `keep`) until under the bounds.
    fn evict(&mut self, max_records: usize, max_bytes: usize, keep: &str) {
        while self.records > max_records || self.bytes > max_bytes {
            let oldest = self
                .batches
                .iter()
                .filter(|(id, _)| id.as_str() != keep)
                .min_by_key(|(_, e)| e.touched)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    tracing::debug!("batch records full: the least recently run batch dropped");
                    metrics::counter!("llm_proxy_batch_records_evicted_total").increment(1);
                    self.remove(&id);
                }
                None => break,
            }
        }
    }
}

/// Batch successes in memory, with a TTL and a total size (see the module docs).
#[derive(Debug)]
pub(crate) struct BoundedBatchStore {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_records: usize,
    max_bytes: usize,
}

impl BoundedBatchStore {
    /// An empty store.
    pub(crate) fn new(ttl: Duration, max_records: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ttl,
            max_records,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change keeps the totals consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Item successes held, all batches together.
    #[cfg(test)]
    fn records(&self) -> usize {
        self.lock().records
    }

    /// Bytes of answers held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

fn size(key: &str, success: &StoredSuccess) -> usize {
    key.len() + success.response_json.len()
}

impl BatchStore for BoundedBatchStore {
    fn load<'a>(&'a self, batch_id: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut inner = self.lock();
            inner.drop_expired(now, self.ttl);
            Ok(match inner.batches.get_mut(batch_id) {
                Some(entry) => {
                    entry.touched = now;
                    entry.items.clone()
                }
                None => HashMap::new(),
            })
        })
    }

    fn record<'a>(
        &'a self,
        batch_id: &'a str,
        key: &'a str,
        success: StoredSuccess,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let added = size(key, &success);
            if added > self.max_bytes {
                // Kept nowhere: the item runs again next time.
                return Ok(());
            }
            let now = Instant::now();
            let mut inner = self.lock();
            inner.drop_expired(now, self.ttl);
            let entry = inner
                .batches
                .entry(batch_id.to_owned())
                .or_insert_with(|| Entry {
                    items: HashMap::new(),
                    bytes: 0,
                    touched: now,
                });
            entry.touched = now;
            let (old_records, old_bytes) = match entry.items.insert(key.to_owned(), success) {
                Some(old) => (1, size(key, &old)),
                None => (0, 0),
            };
            entry.bytes = entry.bytes + added - old_bytes;
            inner.records = inner.records + 1 - old_records;
            inner.bytes = inner.bytes + added - old_bytes;
            inner.evict(self.max_records, self.max_bytes, batch_id);
            // The batch being recorded is never evicted above: if it alone is
            // over the bounds, it stops growing instead.
            if inner.records > self.max_records || inner.bytes > self.max_bytes {
                if let Some(entry) = inner.batches.get_mut(batch_id) {
                    if let Some(old) = entry.items.remove(key) {
                        entry.bytes -= size(key, &old);
                        inner.records -= 1;
                        inner.bytes -= size(key, &old);
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn success(bytes: usize) -> StoredSuccess {
        StoredSuccess {
            response_json: "x".repeat(bytes),
            attempts: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_after_the_ttl() {
        let store = BoundedBatchStore::new(Duration::from_secs(60), 100, 1 << 20);
        store.record("b", "k", success(10)).await.unwrap();
        assert_eq!(store.load("b").await.unwrap().len(), 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            store.load("b").await.unwrap().len(),
            1,
            "a load refreshes it"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(store.load("b").await.unwrap().is_empty());
        assert_eq!((store.records(), store.bytes()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_run_batches_go_first_when_full() {
        let store = BoundedBatchStore::new(Duration::from_secs(3600), 3, 1 << 20);
        for batch in ["a", "b", "c"] {
            store.record(batch, "k", success(10)).await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        store.load("a").await.unwrap();
        store.record("d", "k", success(10)).await.unwrap();
        assert_eq!(store.records(), 3);
        assert!(
            store.load("b").await.unwrap().is_empty(),
            "b ran longest ago"
        );
        assert_eq!(store.load("a").await.unwrap().len(), 1);
        // By bytes too; one batch alone over the bound stops growing.
        let small = BoundedBatchStore::new(Duration::from_secs(3600), 100, 50);
        for key in ["k1", "k2", "k3"] {
            small.record("big", key, success(20)).await.unwrap();
        }
        assert!(small.bytes() <= 50, "{}", small.bytes());
        assert_eq!(small.records(), 2);
        small.record("other", "k", success(100)).await.unwrap();
        assert!(small.load("other").await.unwrap().is_empty());
    }
}
