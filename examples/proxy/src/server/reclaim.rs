//! Reclaiming idle client connections at `limits.max_connections`.
//!
//! Every open client connection is registered here with its `Activity` (when
//! it last went idle, whether it has read a byte since, and how many requests
//! it has in flight). At the limit an accept loop asks `Registry::reclaim_one`
//! to close the connection idle the longest among those with no request in
//! flight, wherever its serving thread is; the chosen connection's task shuts it
//! down (hyper's graceful shutdown closes an idle connection at once), which
//! releases its permit.
//!
//! The hot path stays cheap: a request costs two atomic operations and one clock
//! reading (when it ends) on its own connection, a read one relaxed load; the
//! registry's lock is taken when a connection opens or closes, and scanned only
//! at the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// When a connection last went idle, whether it read since, its requests in
/// flight, and its reclaim signal.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    /// Milliseconds since `started` when the connection last went idle (opened,
    /// or its last answer ended), times two, plus one once it read a byte since.
    idle: AtomicU64,
    in_flight: AtomicU32,
    /// Chosen by a reclaim and not yet closed (so it is not chosen twice).
    chosen: AtomicBool,
    /// Signalled when this connection is chosen.
    pub(crate) reclaim: Notify,
}

/// When an idle connection is due to close (see [`Activity::idle_deadline`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdleDeadline {
    pub(crate) at: Instant,
    /// It read a byte since it went idle: a request head is under way.
    pub(crate) heard: bool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            // A fresh connection is idle: the header and keep-alive timeouts bound it.
            idle: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            chosen: AtomicBool::new(false),
            reclaim: Notify::new(),
        }
    }

    /// A byte was read: no clock reading, one relaxed load (a store the first
    /// time after the connection went idle).
    pub(crate) fn heard(&self) {
        if self.idle.load(Ordering::Relaxed) & 1 == 0 {
            self.idle.fetch_or(1, Ordering::Relaxed);
        }
    }

    fn went_idle(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX >> 1);
        self.idle.store(ms << 1, Ordering::Relaxed);
    }

    /// When the connection, idle, is due to close: `None` while a request is in
    /// flight. A connection silent since it went idle may stay so for the
    /// shorter of `header` and `keepalive`; one that started a request head has
    /// `header` from the moment it went idle to finish it (nginx's
    /// `keepalive_timeout` and `client_header_timeout`).
    pub(crate) fn idle_deadline(
        &self,
        header: Duration,
        keepalive: Duration,
    ) -> Option<IdleDeadline> {
        if !self.is_idle() {
            return None;
        }
        let idle = self.idle.load(Ordering::Relaxed);
        let heard = idle & 1 == 1;
        let limit = if heard { header } else { header.min(keepalive) };
        Some(IdleDeadline {
            at: self.started + Duration::from_millis(idle >> 1) + limit,
            heard,
        })
    }

    /// The reclaim order: silent ones first, then idle the longest. The moment
    /// is absolute: `idle` counts from this connection's own `started`, so two
    /// connections' counts cannot be compared (each new one starts at 0).
    fn idle_key(&self) -> (u64, Instant) {
        let idle = self.idle.load(Ordering::Relaxed);
        (idle & 1, self.started + Duration::from_millis(idle >> 1))
    }

    /// A request starts: held until its answer is written (or dropped).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether no request is in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// A reclaim found a request in flight after all: choosable again.
    pub(crate) fn unchoose(&self) {
        self.chosen.store(false, Ordering::Release);
    }
}

/// A request in flight on its connection (see [`Activity::request`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.went_idle();
        }
    }
}

/// The open client connections of every serving thread.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Registry {
    /// Register an open connection until the returned guard drops.
    pub(crate) fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity);
        Registered {
            id,
            registry: self.clone(),
        }
    }

    /// Signal the connection idle the longest among those with no request in
    /// flight (silent ones first) to close; `false` when every open connection
    /// has one.
    pub(crate) fn reclaim_one(&self) -> bool {
        let open = self.lock();
        let chosen = open
            .values()
            .filter(|a| a.is_idle() && !a.chosen.load(Ordering::Acquire))
            .min_by_key(|a| a.idle_key())
            .filter(|a| !a.chosen.swap(true, Ordering::AcqRel))
            .cloned();
        drop(open);
        let Some(chosen) = chosen else {
            return false;
        };
        chosen.reclaim.notify_one();
        metrics::counter!("llm_proxy_connections_reclaimed_total").increment(1);
        if log_reclaim_now() {
            tracing::warn!(
                "limits.max_connections client connections are open; closing the \
                 longest-idle ones to serve new ones (logged once a minute; see \
                 llm_proxy_connections_reclaimed_total)"
            );
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An open connection's registration (see [`Registry::register`]).
#[derive(Debug)]
pub(crate) struct Registered {
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Whether to log a reclaim now: once a minute at most, for the whole process.
fn log_reclaim_now() -> bool {
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    super::once_a_minute(&LAST)
}

pin_project_lite::pin_project! {
    /// An answer's body, holding its request [`InFlight`] until hyper has
    /// read it all (or dropped it).
    pub(crate) struct Answer<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> Answer<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<B: http_body::Body> http_body::Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            *this.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection idle the longest is reclaimed, not one opened later (a
    /// fresh connection whose request is on its way must not be the victim of a
    /// flood of silent ones).
    #[tokio::test(start_paused = true)]
    async fn the_connection_silent_the_longest_is_reclaimed() {
        let registry = Arc::new(Registry::default());
        let mut open = Vec::new();
        for _ in 0..50 {
            let activity = Arc::new(Activity::new());
            open.push((registry.register(activity.clone()), activity));
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        for (_, activity) in &open {
            assert!(registry.reclaim_one());
            assert!(
                activity.chosen.load(Ordering::Acquire),
                "the oldest silent connection still open must be chosen first"
            );
        }
        assert!(!registry.reclaim_one(), "every connection was chosen once");
    }
}
