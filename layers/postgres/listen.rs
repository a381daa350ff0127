//! A `LISTEN` connection that survives Postgres going away: its own connection
//! outside the pool, reconnecting with backoff, telling its listener each time it
//! listens again so that it can resync.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::connect::Postgres;
use super::link::Link;

const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a quiet connection checks that Postgres is still there.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat or the `LISTEN` itself may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Notifications longer than this are not ours and are dropped unread.
pub(crate) const MAX_PAYLOAD: usize = 1024;
/// Notifications received but not yet handled; past it the connection waits.
const QUEUE: usize = 1024;

/// What a listening connection does with what it hears.
pub(crate) trait Listener: Send + 'static {
    /// Listening (again): notifications sent meanwhile were missed.
    fn subscribed(&mut self) -> impl Future<Output = ()> + Send;
    /// One notification's payload.
    fn message(&mut self, payload: &str);
}

/// `"name"`: a quoted identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Listens on `channel` for `listener` until the task is aborted.
pub(crate) async fn run<L: Listener>(
    pg: Postgres,
    channel: String,
    link: Arc<Link>,
    mut listener: L,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match pg.connect_dedicated().await {
            Ok((client, connection)) => {
                let (tx, mut rx) = mpsc::channel(QUEUE);
                let _driver = AbortOnDrop(tokio::spawn(drive(connection, tx)));
                let listen = format!("LISTEN {}", quote(&channel));
                match tokio::time::timeout(IO_TIMEOUT, client.batch_execute(&listen)).await {
                    Ok(Ok(())) => {
                        link.up();
                        backoff = MIN_BACKOFF;
                        listener.subscribed().await;
                        let error = listen_on(&client, &mut rx, &link, &mut listener).await;
                        link.down(&error);
                    }
                    Ok(Err(e)) => link.down(&e),
                    Err(_) => link.down(&"LISTEN timed out"),
                }
            }
            Err(e) => link.down(&e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Polls the connection, forwarding notifications, until it fails or closes.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, tx: mpsc::Sender<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) if n.payload().len() <= MAX_PAYLOAD => {
                if tx.send(n.payload().to_owned()).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// Hands notifications to `listener` until the connection fails; checks the
/// connection every [`HEARTBEAT`] meanwhile, so that a silent one (a dead host, a
/// partition) is noticed.
async fn listen_on<L: Listener>(
    client: &tokio_postgres::Client,
    rx: &mut mpsc::Receiver<String>,
    link: &Link,
    listener: &mut L,
) -> &'static str {
    enum Event {
        Message(Option<String>),
        Heartbeat,
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.reset();
    loop {
        let event = poll_fn(|cx| {
            if let Poll::Ready(message) = rx.poll_recv(cx) {
                return Poll::Ready(Event::Message(message));
            }
            if heartbeat.poll_tick(cx).is_ready() {
                return Poll::Ready(Event::Heartbeat);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Message(Some(payload)) => listener.message(&payload),
            Event::Message(None) => return "listening connection closed",
            Event::Heartbeat => {
                match tokio::time::timeout(IO_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => link.up(),
                    Ok(Err(_)) => return "heartbeat failed",
                    Err(_) => return "heartbeat timed out",
                }
            }
        }
    }
}

pub(crate) use crate::backend::AbortOnDrop;

/// A listener a [`Hub`] shares its connection with.
pub(crate) trait SharedListener: Send + Sync + 'static {
    /// Listening (again): notifications sent meanwhile were missed.
    fn subscribed(&self) -> futures_util::future::BoxFuture<'_, ()>;
    /// One notification's payload.
    fn message(&self, payload: &str);
}

type Subscribers = std::sync::Mutex<Vec<(u64, Arc<dyn SharedListener>)>>;

/// One `LISTEN` connection on one channel, shared by every listener of one
/// [`Postgres`] on it (e.g. every circuit sync of a proxy): a deployment with
/// many circuits holds one listening connection per database, not one per
/// circuit. It lives while a [`Subscription`] does.
pub(crate) struct Hub {
    subscribers: Arc<Subscribers>,
    next_id: std::sync::atomic::AtomicU64,
    link: Arc<Link>,
    _task: AbortOnDrop,
}

/// A listener's place on a [`Hub`]; dropping it leaves (the last one to leave
/// closes the connection).
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    id: u64,
}

impl Subscription {
    /// The shared connection's reachability.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.hub.link
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = self
            .hub
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|(id, _)| *id != self.id);
    }
}

/// Hands what the connection hears to every subscriber.
struct FanOut(Arc<Subscribers>);

impl FanOut {
    fn snapshot(&self) -> Vec<Arc<dyn SharedListener>> {
        let subscribers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.iter().map(|(_, l)| l.clone()).collect()
    }
}

impl Listener for FanOut {
    async fn subscribed(&mut self) {
        let listeners = self.snapshot();
        futures_util::future::join_all(listeners.iter().map(|l| l.subscribed())).await;
    }

    fn message(&mut self, payload: &str) {
        for listener in self.snapshot() {
            listener.message(payload);
        }
    }
}

impl Hub {
    /// Subscribes `listener` to `channel` on `pg`'s shared connection (started
    /// on the current runtime if none is open). A listener that joins while
    /// the connection listens is told it is subscribed at once (in a task of
    /// its own), so it resyncs as the others did.
    pub(crate) fn subscribe(
        pg: &Postgres,
        channel: &str,
        component: &'static str,
        listener: Arc<dyn SharedListener>,
    ) -> Subscription {
        let hub = {
            let mut hubs = pg.hubs().lock().unwrap_or_else(|p| p.into_inner());
            hubs.retain(|_, hub| hub.strong_count() > 0);
            let existing = hubs
                .get(channel)
                .and_then(std::sync::Weak::upgrade)
                .and_then(|hub| hub.downcast::<Hub>().ok());
            match existing {
                Some(hub) => hub,
                None => {
                    let subscribers: Arc<Subscribers> = Arc::default();
                    let link = Arc::new(super::link::link(component, pg.name().to_owned()));
                    let task = tokio::spawn(run(
                        pg.clone(),
                        channel.to_owned(),
                        link.clone(),
                        FanOut(subscribers.clone()),
                    ));
                    let hub = Arc::new(Hub {
                        subscribers,
                        next_id: std::sync::atomic::AtomicU64::new(0),
                        link,
                        _task: AbortOnDrop(task),
                    });
                    let erased: Arc<dyn std::any::Any + Send + Sync> = hub.clone();
                    hubs.insert(channel.to_owned(), Arc::downgrade(&erased));
                    hub
                }
            }
        };
        let id = hub
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hub.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, listener.clone()));
        // Joined after the connection said it listens: the fan-out's resync
        // may have missed this listener (a second one is harmless).
        if hub.link.is_up() {
            tokio::spawn(async move { listener.subscribed().await });
        }
        Subscription { hub, id }
    }
}
