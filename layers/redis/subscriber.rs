//! A pub/sub subscription that survives Redis going away: reconnects with backoff
//! and tells its listener each time it is subscribed again, so that it can resync.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;

use super::link::{Link, IO_TIMEOUT};

/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// How often a quiet subscription checks that Redis is still there.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What a subscription does with what it hears.
pub(crate) trait Listener: Send + 'static {
    /// Subscribed (again): changes published while unsubscribed were missed.
    fn subscribed(&mut self) -> impl Future<Output = ()> + Send;
    /// One message on the channel.
    fn message(&mut self, payload: &[u8]);
}

/// Subscribes `listener` to `channel` until the task is aborted.
pub(crate) async fn run<L: Listener>(
    client: redis::Client,
    channel: String,
    link: Arc<Link>,
    mut listener: L,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::time::timeout(IO_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match connected {
            Ok(Ok(pubsub)) => {
                link.up();
                backoff = MIN_BACKOFF;
                listener.subscribed().await;
                let error = listen(pubsub, &link, &mut listener).await;
                link.down(&error);
            }
            Ok(Err(e)) => link.down(&e),
            Err(_) => link.down(&"pub/sub connection timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Hands messages to `listener` until the connection fails; pings Redis every
/// [`HEARTBEAT`] meanwhile, so that a silent connection (a dead host, a
/// partition) is noticed and the link is seen working again after a failed
/// command elsewhere.
async fn listen<L: Listener>(
    pubsub: redis::aio::PubSub,
    link: &Link,
    listener: &mut L,
) -> &'static str {
    enum Event {
        Message(Option<redis::Msg>),
        Heartbeat,
    }
    let (mut sink, mut stream) = pubsub.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.reset();
    loop {
        let event = poll_fn(|cx| {
            if let Poll::Ready(message) = stream.poll_next_unpin(cx) {
                return Poll::Ready(Event::Message(message));
            }
            if heartbeat.poll_tick(cx).is_ready() {
                return Poll::Ready(Event::Heartbeat);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Message(Some(message)) => listener.message(message.get_payload_bytes()),
            Event::Message(None) => return "pub/sub connection closed",
            Event::Heartbeat => {
                match tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => link.up(),
                    Ok(Err(_)) => return "pub/sub ping failed",
                    Err(_) => return "pub/sub ping timed out",
                }
            }
        }
    }
}

pub(crate) use crate::backend::AbortOnDrop;
