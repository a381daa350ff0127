//! What the proxy's writer queues share (usage records, budget charges, audit
//! events): a bounded `mpsc` queue to one task, and a flush marker the task
//! answers once everything sent before it is written.

use tokio::sync::{mpsc, oneshot};

/// Sends the marker `flush` makes (waiting for room in `queue`), then waits
/// for the writer to answer it: every message sent before is written (or
/// dropped by a failed write). Unbounded: the caller bounds it. `writer` names
/// the writer in the error.
pub(crate) async fn flush<M>(
    queue: &mpsc::Sender<M>,
    flush: impl FnOnce(oneshot::Sender<()>) -> M,
    writer: &str,
) -> Result<(), String> {
    let (done, written) = oneshot::channel();
    let stopped = || format!("the {writer} stopped");
    queue.send(flush(done)).await.map_err(|_| stopped())?;
    written.await.map_err(|_| stopped())
}

/// Messages waiting in `queue`.
pub(crate) fn queued<M>(queue: &mpsc::Sender<M>) -> usize {
    queue.max_capacity() - queue.capacity()
}
