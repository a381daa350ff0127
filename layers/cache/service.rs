//! The cache service: look up, coalesce concurrent misses, store what may be kept.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tower_service::Service;

use super::shared::Shared;
use super::{CacheStatus, CacheableResponse};

/// The service of a [`CacheLayer`](super::CacheLayer).
///
/// # Readiness
///
/// Ready when the inner service is. A call takes the ready inner service with it
/// (clone-and-swap) and uses it only on a miss; a hit drops it unused.
pub struct Cache<S, K, V> {
    inner: S,
    shared: Arc<Shared<K, V>>,
}

impl<S: Clone, K, V> Clone for Cache<S, K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K, V> fmt::Debug for Cache<S, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, K, V> Cache<S, K, V> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<K, V>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Give back the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The future of a [`Cache`] call. Boxed: a call may wait on a store and on
/// another call's answer, and a store round trip dwarfs the allocation.
pub struct CacheFuture<T, E> {
    inner: Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>,
}

impl<T, E> Future for CacheFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, E> fmt::Debug for CacheFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheFuture").finish_non_exhaustive()
    }
}

impl<S, K, V, Request> Service<Request> for Cache<S, K, V>
where
    S: Service<Request, Response = V> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: Fn(&Request) -> Option<String> + Send + Sync + 'static,
    V: CacheableResponse,
    Request: Send + 'static,
{
    type Response = V;
    type Error = S::Error;
    type Future = CacheFuture<V, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let key = (shared.key)(&request);
        CacheFuture {
            inner: Box::pin(async move {
                match key {
                    None => {
                        count(&shared.name, CacheStatus::Bypass);
                        answer(inner, request, CacheStatus::Bypass).await
                    }
                    Some(key) => lookup(shared, inner, request, key).await,
                }
            }),
        }
    }
}

async fn answer<S, Request, V>(
    mut inner: S,
    request: Request,
    status: CacheStatus,
) -> Result<V, S::Error>
where
    S: Service<Request, Response = V>,
    V: CacheableResponse,
{
    let mut response = inner.call(request).await?;
    response.set_cache_status(status);
    Ok(response)
}

/// What a call on a miss does: call the upstream, or wait for the call under way.
enum Role<V> {
    Leader(watch::Sender<Option<V>>),
    Follower(watch::Receiver<Option<V>>),
}

async fn lookup<S, K, V, Request>(
    shared: Arc<Shared<K, V>>,
    inner: S,
    request: Request,
    key: String,
) -> Result<V, S::Error>
where
    S: Service<Request, Response = V>,
    V: CacheableResponse,
{
    match shared.store.get(&key).await {
        Ok(Some(mut hit)) => {
            count(&shared.name, CacheStatus::Hit);
            hit.set_cache_status(CacheStatus::Hit);
            return Ok(hit);
        }
        Ok(None) => {}
        Err(error) => store_failed(&shared.name, "get", &error),
    }
    let role = {
        let mut in_flight = shared.lock_in_flight();
        match in_flight.get(&key) {
            Some(answer) => Role::Follower(answer.clone()),
            None => {
                let (sender, receiver) = watch::channel(None);
                in_flight.insert(key.clone(), receiver);
                Role::Leader(sender)
            }
        }
    };
    match role {
        Role::Follower(mut receiver) => {
            if let Ok(shared_answer) = receiver.wait_for(Option::is_some).await {
                if let Some(mut response) = shared_answer.clone() {
                    count(&shared.name, CacheStatus::Coalesced);
                    response.set_cache_status(CacheStatus::Coalesced);
                    return Ok(response);
                }
            }
            // The call we waited for failed or was dropped: its error is not
            // ours to share, so ask the upstream ourselves.
            count(&shared.name, CacheStatus::Miss);
            answer(inner, request, CacheStatus::Miss).await
        }
        Role::Leader(sender) => {
            let _leaving = LeaveOnDrop {
                shared: &*shared,
                key: &key,
            };
            count(&shared.name, CacheStatus::Miss);
            let response = answer(inner, request, CacheStatus::Miss).await?;
            if response.storable() {
                if let Err(error) = shared.store.put(&key, &response, shared.ttl).await {
                    store_failed(&shared.name, "put", &error);
                }
            } else {
                metrics::counter!("llm_cache_not_stored_total", "cache" => shared.name.to_string())
                    .increment(1);
            }
            // Waiters get this answer even when it may not be stored (a degraded
            // one): it is the answer to their request, fresh.
            sender.send_replace(Some(response.clone()));
            Ok(response)
        }
    }
}

/// Takes a key out of the in-flight map when its call ends, however it ends
/// (answer, error, the caller dropping the future).
struct LeaveOnDrop<'a, K, V> {
    shared: &'a Shared<K, V>,
    key: &'a str,
}

impl<K, V> Drop for LeaveOnDrop<'_, K, V> {
    fn drop(&mut self) {
        self.shared.lock_in_flight().remove(self.key);
    }
}

fn count(name: &str, status: CacheStatus) {
    metrics::counter!("llm_cache_requests_total", "cache" => name.to_owned(), "outcome" => status.as_str())
        .increment(1);
}

fn store_failed(name: &str, operation: &'static str, error: &super::CacheStoreError) {
    tracing::warn!(cache = %name, operation, %error, "cache store failed; calling the upstream");
    metrics::counter!("llm_cache_store_errors_total", "cache" => name.to_owned(), "operation" => operation)
        .increment(1);
}
