//! The accept loop: client connections bounded in number and in time.
//!
//! nginx's client-side limits, on hyper's HTTP/1 server:
//!
//! - `[limits] max_connections` open client connections in all (nginx
//!   `worker_connections`). At the limit a new connection takes the place of
//!   the connection idle the longest among those with no request in flight
//!   (one that never sent a byte, or kept alive after its answer; silent ones
//!   before those that started a new head), whichever serving thread holds it:
//!   that one is closed at once (hyper's graceful shutdown), counted in `llm_proxy_connections_reclaimed_total` and logged
//!   once a minute at most, like Envoy's overload manager closing idle
//!   connections under pressure and nginx's `reset_timedout_connection`. So
//!   silent connections cannot lock normal clients out. Only when every open
//!   connection has a request in flight does each serving thread hold one more
//!   accepted connection unanswered and stop accepting: new connections then
//!   wait in the kernel's listen queue until one closes or goes idle (see
//!   [`super::reclaim`]);
//! - `client_header_timeout_secs` to send a request head, timed from the moment
//!   the connection went idle (opened, or its last answer ended), so it also
//!   bounds idleness; a connection past it with a head under way is closed
//!   (as hyper's `header_read_timeout` would, without its timer per request);
//! - `client_body_timeout_secs` between two reads of a request body: a body that
//!   stalls gets a 408;
//! - `keepalive_timeout_secs`: a connection whose last exchange was the end of
//!   an answer, silent that long, is closed;
//!
//!   both idle limits share one timer per connection, re-armed only when it
//!   fires (a request costs no timer operation), and the connection's task polls
//!   that timer, the stop signal and the reclaim signal only when one of them
//!   woke it, not at every read and write of its requests; a connection that
//!   has not sent a byte yet holds no HTTP state (2.3 KB instead of 12.5 KB);
//! - running out of file descriptors (`EMFILE`, `ENFILE`) never stops the
//!   listener: it logs (once a minute at most), backs off (up to a second) and
//!   keeps accepting.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::reclaim::{Activity, Answer, IdleDeadline, Registry};
use crate::config::LimitsConfig;
use crate::service::ProxyService;

/// The client connection limits of `[limits]`, shared by every serving thread.
#[derive(Clone, Debug)]
pub(crate) struct ClientLimits {
    /// Open client connections, in all.
    pub(crate) connections: Arc<Semaphore>,
    /// The open connections, to reclaim an idle one at the limit.
    pub(crate) open: Arc<Registry>,
    /// To send a request head.
    pub(crate) header_timeout: Duration,
    /// Between two reads of a request body.
    pub(crate) body_timeout: Duration,
    /// Silence after an answer before the connection is closed.
    pub(crate) keepalive_timeout: Duration,
}

impl ClientLimits {
    /// From `[limits]`.
    pub(crate) fn from_config(limits: &LimitsConfig) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            open: Arc::default(),
            header_timeout: limits.client_header_timeout_secs,
            body_timeout: limits.client_body_timeout_secs,
            keepalive_timeout: limits.keepalive_timeout_secs,
        }
    }
}

/// Serve `service` on `listener` until `stop` resolves, then stop accepting and
/// give open connections up to `grace` to finish their requests.
pub(crate) async fn serve(
    service: ProxyService,
    listener: TcpListener,
    limits: ClientLimits,
    stop: impl Future<Output = ()>,
    grace: Duration,
) {
    // No hyper timer: `connection` times the request heads (hyper's
    // `header_read_timeout` costs a timer per request).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    let builder = Arc::new(builder);
    // Every connection task holds a clone; all dropped = all connections closed.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    let mut out_of_fds = false;
    let mut at_limit = false;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_out_of_resources(&e) => {
                if !out_of_fds && log_out_of_fds_now() {
                    tracing::error!(
                        error = %e,
                        "cannot accept client connections: out of file descriptors; \
                         retrying while the open ones are served (logged once a minute)"
                    );
                }
                out_of_fds = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            // A connection that failed before it was accepted concerns no one else.
            Err(_) => continue,
        };
        // At the limit, the longest-idle connection is closed for this one; when
        // every open one has a request in flight, this one waits (and the next
        // ones wait in the listen queue) until one closes or goes idle.
        let permit = match limits.connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let Some(permit) = permit_at_limit(&limits, &mut at_limit, &mut stop).await else {
                    break;
                };
                permit
            }
        };
        if limits.connections.available_permits() > 0 {
            at_limit = false;
        }
        out_of_fds = false;
        backoff = Duration::from_millis(5);
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            peer,
            service.clone(),
            builder.clone(),
            limits.clone(),
            permit,
            (open_tx.clone(), stop_rx.clone()),
        ));
    }
    drop(listener);
    tracing::debug!("no new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
    drop(open_tx);
    if tokio::time::timeout(grace, open_rx.recv()).await.is_err() {
        tracing::warn!(
            ?grace,
            "requests still in flight after the grace period; stopping"
        );
    }
}

/// A permit at the limit: reclaim an idle connection and take its permit, or
/// wait for one; `None` when stopping.
async fn permit_at_limit(
    limits: &ClientLimits,
    at_limit: &mut bool,
    stop: &mut Pin<&mut impl Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        let reclaimed = limits.open.reclaim_one();
        if !reclaimed && !*at_limit {
            tracing::warn!(
                "limits.max_connections client connections are open, each with a \
                 request in flight; new ones wait until one closes or goes idle"
            );
            *at_limit = true;
        }
        // A reclaimed permit may go to another thread's accept loop, and a busy
        // connection may go idle: look again after a while.
        let again = if reclaimed {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            permit = limits.connections.clone().acquire_owned() => return permit.ok(),
            () = tokio::time::sleep(again) => {}
            () = stop.as_mut() => return None,
        }
    }
}

/// Whether to log running out of descriptors now: once a minute at most, for
/// the whole process (it comes and goes as connections close and open).
fn log_out_of_fds_now() -> bool {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    once_a_minute(&LAST)
}

/// Whether a minute has passed since `last` (then updated) or it never was.
pub(crate) fn once_a_minute(last: &std::sync::Mutex<Option<std::time::Instant>>) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    match *last {
        Some(at) if now.duration_since(at) < Duration::from_secs(60) => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

fn is_out_of_resources(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

async fn connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    service: ProxyService,
    builder: Arc<hyper::server::conn::http1::Builder>,
    limits: ClientLimits,
    permit: OwnedSemaphorePermit,
    (open, mut stopping): (
        tokio::sync::mpsc::Sender<()>,
        tokio::sync::watch::Receiver<bool>,
    ),
) {
    let activity = Arc::new(Activity::new());
    let _registered = limits.open.register(activity.clone());
    // A silent connection holds no HTTP state until its first byte (hyper's
    // write buffer alone is 8 KiB, its state and this task's another 4): the
    // idle limits, the stop and the reclaim apply meanwhile.
    // (`readable` would not do: a new socket counts as ready until a read fails.)
    let mut first = [0u8; 1];
    let talked = tokio::select! {
        // A reclaim first: its notification is not lost to a byte arriving with it.
        biased;
        () = activity.reclaim.notified() => false,
        _ = stopping.wait_for(|stop| *stop) => false,
        () = tokio::time::sleep(limits.header_timeout.min(limits.keepalive_timeout)) => false,
        peeked = tcp.peek(&mut first) => peeked.is_ok_and(|n| n > 0),
    };
    if talked {
        let http = Http {
            service,
            builder,
            limits,
            activity,
        };
        Box::pin(http.serve(tcp, peer, &mut stopping)).await;
    }
    drop(permit);
    drop(open);
}

/// A connection's HTTP side, set up at its first byte.
struct Http {
    service: ProxyService,
    builder: Arc<hyper::server::conn::http1::Builder>,
    limits: ClientLimits,
    activity: Arc<Activity>,
}

impl Http {
    async fn serve(
        self,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        stopping: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        let Http {
            service,
            builder,
            limits,
            activity,
        } = self;
        let io = TokioIo::new(Tracked {
            inner: tcp,
            activity: activity.clone(),
        });
        let body_timeout = limits.body_timeout;
        let requests = activity.clone();
        let hyper_service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let service = service.clone();
            let in_flight = requests.request();
            async move {
                let mut request =
                    request.map(|body| Body::new(TimeoutBody::new(body, body_timeout)));
                request.extensions_mut().insert(ConnectInfo(peer));
                let response = service
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|e| match e {});
                Ok::<_, Infallible>(response.map(|body| Answer::new(body, in_flight)))
            }
        });
        let conn = builder.serve_connection(io, hyper_service);
        let mut conn = std::pin::pin!(conn);
        let (header, keepalive) = (limits.header_timeout, limits.keepalive_timeout);
        // The idle timer, the stop signal and the reclaim signal are polled with
        // their own waker: only when one of them woke the task.
        let aux = Arc::new(AuxWake {
            task: futures_util::task::AtomicWaker::new(),
            // Polled once to start with.
            fired: AtomicBool::new(true),
        });
        let aux_waker = Waker::from(aux.clone());
        // Due when the connection's first head is (timed from its opening).
        let first_due = activity
            .idle_deadline(header, keepalive)
            .map_or_else(|| Instant::now() + header, |due| due.at);
        let mut timer = std::pin::pin!(tokio::time::sleep_until(first_due));
        let mut stop = std::pin::pin!(stopping.wait_for(|stop| *stop));
        let mut reclaim = std::pin::pin!(activity.reclaim.notified());
        let mut closing = false;
        std::future::poll_fn(|cx| {
            aux.task.register(cx.waker());
            loop {
                if conn.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                if !aux.fired.swap(false, Ordering::AcqRel) {
                    return Poll::Pending;
                }
                let mut aux_cx = Context::from_waker(&aux_waker);
                while timer.as_mut().poll(&mut aux_cx).is_ready() {
                    let now = Instant::now();
                    let next = match activity.idle_deadline(header, keepalive) {
                        // Still open after a graceful shutdown, idle: cut.
                        Some(_) if closing => return Poll::Ready(()),
                        // A request head under way for too long: cut.
                        Some(IdleDeadline { at, heard: true }) if at <= now => {
                            return Poll::Ready(())
                        }
                        Some(IdleDeadline { at, .. }) if at <= now => {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                            now + header
                        }
                        Some(IdleDeadline { at, .. }) => at,
                        None => now + header.min(keepalive),
                    };
                    // At least a tick ahead: the loop ends even for the tiniest timeouts.
                    timer
                        .as_mut()
                        .reset(next.max(now + Duration::from_millis(1)));
                }
                if !closing {
                    if stop.as_mut().poll(&mut aux_cx).is_ready() {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    } else if reclaim.as_mut().poll(&mut aux_cx).is_ready() {
                        if activity.is_idle() {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        } else {
                            activity.unchoose();
                            reclaim.set(activity.reclaim.notified());
                            aux.fired.store(true, Ordering::Release);
                        }
                    }
                }
            }
        })
        .await;
    }
}

/// Wakes a connection's task for its idle timer, stop or reclaim signal, and
/// records that one of them is to be polled.
struct AuxWake {
    task: futures_util::task::AtomicWaker,
    fired: AtomicBool,
}

impl Wake for AuxWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// A socket that records that it read a byte (see [`Activity::heard`]).
    struct Tracked {
        #[pin]
        inner: TcpStream,
        activity: Arc<Activity>,
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.heard();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// A request body that stalled longer than `client_body_timeout_secs` between
/// two reads.
#[derive(Debug)]
pub(crate) struct BodyTimeout(pub(crate) Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body stalled for more than {:?} (limits.client_body_timeout_secs)",
            self.0
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// Whether `error` (or one of its sources) is a [`BodyTimeout`].
pub(crate) fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTimeout>() {
            return true;
        }
        current = e.source();
    }
    false
}

pin_project_lite::pin_project! {
    /// The request body, failing with [`BodyTimeout`] when the client stops
    /// sending it.
    pub(crate) struct TimeoutBody {
        #[pin]
        inner: Incoming,
        timeout: Duration,
        // Armed while the reader waits; reset by every frame.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl TimeoutBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
        }
    }
}

impl http_body::Body for TimeoutBody {
    type Data = bytes::Bytes;
    type Error = tower_llm_resilience::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = *this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(timeout).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
