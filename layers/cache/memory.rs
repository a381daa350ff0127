//! The in-process store: bounded in entries (and bytes, with a weigher), expiring
//! on `tokio::time`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::store::{CacheStore, CacheStoreError, StoreFuture};

/// The default [`MemoryStore::new`] bound on entries.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

type Weigher<V> = Arc<dyn Fn(&V) -> usize + Send + Sync>;

/// An in-process [`CacheStore`], shared by clones.
///
/// Bounded: at most `max_entries` values, and with
/// [`max_bytes`](Self::max_bytes) at most that many bytes as a weigher counts
/// them. When full, expired entries go first, then those closest to expiry (with
/// one TTL for all, the oldest). Expiry runs on `tokio::time`, so tests with paused
/// time control it. Each operation takes a short lock; values are cloned out, so
/// make them cheap to clone (`Bytes`, `Arc`).
pub struct MemoryStore<V> {
    shared: Arc<Mutex<Entries<V>>>,
    max_entries: usize,
    max_bytes: Option<(usize, Weigher<V>)>,
}

struct Entries<V> {
    by_key: HashMap<Arc<str>, Entry<V>>,
    /// `(expires_at, insertion number, key)`: the eviction order.
    by_expiry: BTreeSet<(Instant, u64, Arc<str>)>,
    inserted: u64,
    bytes: usize,
}

struct Entry<V> {
    value: V,
    expires_at: Instant,
    number: u64,
    weight: usize,
}

impl<V> Clone for MemoryStore<V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            max_entries: self.max_entries,
            max_bytes: self.max_bytes.clone(),
        }
    }
}

impl<V> fmt::Debug for MemoryStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.len())
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes.as_ref().map(|(max, _)| max))
            .finish()
    }
}

impl<V> Default for MemoryStore<V> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl<V> MemoryStore<V> {
    /// A store of at most `max_entries` values (at least 1).
    pub fn new(max_entries: usize) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Entries {
                by_key: HashMap::new(),
                by_expiry: BTreeSet::new(),
                inserted: 0,
                bytes: 0,
            })),
            max_entries: max_entries.max(1),
            max_bytes: None,
        }
    }

    /// Also keep at most `max_bytes` in all, each value weighing what `weigher`
    /// says (its key's length is added). A value heavier than that alone is
    /// refused with [`CacheStoreError::TooLarge`].
    #[must_use]
    pub fn max_bytes(
        mut self,
        max_bytes: usize,
        weigher: impl Fn(&V) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.max_bytes = Some((max_bytes, Arc::new(weigher)));
        self
    }

    /// How many values are kept (expired ones included until they are seen).
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// `true` when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes kept, as the weigher counts them (0 without one).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Entries<V>> {
        // A panic while holding the lock leaves the maps consistent (every
        // change is one insert or remove pair), so a poisoned lock is still usable.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<V> Entries<V> {
    fn remove(&mut self, key: &str) -> Option<Entry<V>> {
        let (key, entry) = self.by_key.remove_entry(key)?;
        self.by_expiry
            .remove(&(entry.expires_at, entry.number, key));
        self.bytes -= entry.weight;
        Some(entry)
    }

    /// Remove the entry first in eviction order; `false` when empty.
    fn evict_first(&mut self) -> bool {
        match self.by_expiry.pop_first() {
            Some((_, _, key)) => {
                if let Some(entry) = self.by_key.remove(&key) {
                    self.bytes -= entry.weight;
                }
                true
            }
            None => false,
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        while self
            .by_expiry
            .first()
            .is_some_and(|(expires_at, _, _)| *expires_at <= now)
        {
            self.evict_first();
        }
    }
}

impl<V: Clone + Send + Sync + 'static> MemoryStore<V> {
    fn get_now(&self, key: &str) -> Option<V> {
        let mut entries = self.lock();
        let now = Instant::now();
        match entries.by_key.get(key) {
            Some(entry) if entry.expires_at > now => Some(entry.value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put_now(&self, key: &str, value: &V, ttl: Duration) -> Result<(), CacheStoreError> {
        let weight = match &self.max_bytes {
            Some((limit, weigher)) => {
                let weight = weigher(value).saturating_add(key.len());
                if weight > *limit {
                    return Err(CacheStoreError::TooLarge {
                        size: weight,
                        limit: *limit,
                    });
                }
                weight
            }
            None => 0,
        };
        let max_bytes = self.max_bytes.as_ref().map_or(usize::MAX, |(max, _)| *max);
        let now = Instant::now();
        let expires_at = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        let mut entries = self.lock();
        entries.remove(key);
        entries.purge_expired(now);
        while entries.by_key.len() >= self.max_entries
            || entries.bytes.saturating_add(weight) > max_bytes
        {
            if !entries.evict_first() {
                break;
            }
        }
        entries.inserted += 1;
        let number = entries.inserted;
        let key: Arc<str> = Arc::from(key);
        entries.by_expiry.insert((expires_at, number, key.clone()));
        entries.bytes += weight;
        entries.by_key.insert(
            key,
            Entry {
                value: value.clone(),
                expires_at,
                number,
                weight,
            },
        );
        Ok(())
    }
}

impl<V: Clone + Send + Sync + 'static> CacheStore<V> for MemoryStore<V> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<V>> {
        let found = self.get_now(key);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put<'a>(&'a self, key: &'a str, value: &'a V, ttl: Duration) -> StoreFuture<'a, ()> {
        let result = self.put_now(key, value, ttl);
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let store = MemoryStore::new(10);
        store.put_now("a", &1, TTL).unwrap();
        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        assert_eq!(store.get_now("a"), Some(1));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(store.get_now("a"), None);
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn full_store_evicts_the_oldest() {
        let store = MemoryStore::new(2);
        store.put_now("a", &1, TTL).unwrap();
        store.put_now("b", &2, TTL).unwrap();
        store.put_now("c", &3, TTL).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.get_now("a"), None);
        assert_eq!(store.get_now("c"), Some(3));
        // Replacing a key does not evict another.
        store.put_now("c", &4, TTL).unwrap();
        assert_eq!((store.get_now("b"), store.get_now("c")), (Some(2), Some(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn byte_bound_evicts_and_refuses_giants() {
        let store = MemoryStore::new(100).max_bytes(10, |v: &String| v.len());
        store.put_now("a", &"xxxx".to_owned(), TTL).unwrap(); // 5 bytes
        store.put_now("b", &"yyyy".to_owned(), TTL).unwrap(); // 10
        store.put_now("c", &"zz".to_owned(), TTL).unwrap(); // evicts a
        assert_eq!(store.bytes(), 8);
        assert_eq!(store.get_now("a"), None);
        let err = store.put_now("d", &"w".repeat(10), TTL).unwrap_err();
        assert!(matches!(
            err,
            CacheStoreError::TooLarge {
                size: 11,
                limit: 10
            }
        ));
        assert_eq!(store.len(), 2);
    }
}
