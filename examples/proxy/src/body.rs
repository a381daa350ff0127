//! Response bodies inside the proxy: buffered answers and event streams.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::time::{sleep_until, Instant, Sleep};
use tower_llm_resilience::classify::{ClassifiedError, FailureKind};
use tower_llm_resilience::BoxError;

/// A streamed body.
pub(crate) type StreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// The body of every response inside the proxy: a buffered answer (non-streamed
/// requests, errors, templates) or an event stream.
///
/// Buffered bodies let the classifier read provider error bodies and the
/// escalation policy read the answer.
pub(crate) enum ProxyBody {
    /// A whole answer; empty once sent.
    Full(Bytes),
    /// An event stream (or any body not read yet).
    Stream(StreamBody),
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyBody::Full(bytes) => write!(f, "Full({} bytes)", bytes.len()),
            ProxyBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl ProxyBody {
    /// The buffered bytes; empty for a stream.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            ProxyBody::Full(bytes) => bytes,
            ProxyBody::Stream(_) => &[],
        }
    }

    /// Whether this is a buffered body.
    pub(crate) fn is_full(&self) -> bool {
        matches!(self, ProxyBody::Full(_))
    }
}

impl AsRef<[u8]> for ProxyBody {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl From<Vec<u8>> for ProxyBody {
    fn from(bytes: Vec<u8>) -> Self {
        ProxyBody::Full(Bytes::from(bytes))
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::Full(bytes)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) if bytes.is_empty() => Poll::Ready(None),
            ProxyBody::Full(bytes) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes))))),
            ProxyBody::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_empty(),
            ProxyBody::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Stream(body) => body.size_hint(),
        }
    }
}

/// A client-facing event stream: a break in the stream becomes a final
/// `event: error` in the OpenAI error format, so a client sees why its stream
/// ended instead of a truncated answer.
pub(crate) struct ClientStream<B> {
    inner: B,
    done: bool,
}

impl<B> ClientStream<B> {
    /// Wrap an event stream.
    pub(crate) fn new(inner: B) -> Self {
        Self { inner, done: false }
    }
}

/// The event sent when an upstream stream breaks after it started. It opens
/// with a blank line: an event the break cut in two is ended there (and fails to
/// parse), so the error event is read on its own.
pub(crate) fn error_event(message: &str) -> Bytes {
    let payload = serde_json::json!({
        "error": {
            "message": message,
            "type": "upstream_error",
            "code": "stream_interrupted",
        }
    });
    Bytes::from(format!("\n\nevent: error\ndata: {payload}\n\n"))
}

impl<B> Body for ClientStream<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                self.done = true;
                tracing::warn!(error = %e, "upstream stream broke after it started");
                metrics::counter!("llm_proxy_streams_interrupted_total").increment(1);
                let mut message = format!("the upstream stream was interrupted: {e}");
                let mut source = e.source();
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                Poll::Ready(Some(Ok(Frame::data(error_event(&message)))))
            }
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

/// An upstream stream with an idle limit: a silence longer than `idle` is a body
/// error (reported to the client as an error event).
///
/// A frame only pushes the deadline back (one clock reading); the timer is moved
/// when it fires before the deadline, not at every frame (a timer reset takes
/// the timer wheel's lock).
pub(crate) struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<B> IdleTimeout<B> {
    /// Limit the silence between two frames of `inner` to `idle`.
    pub(crate) fn new(inner: B, idle: Duration) -> Self {
        let deadline = Instant::now() + idle;
        Self {
            inner,
            idle,
            deadline,
            timer: Box::pin(sleep_until(deadline)),
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline = Instant::now() + this.idle;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => loop {
                match this.timer.as_mut().poll(cx) {
                    // Fired at a deadline a frame has pushed back since.
                    Poll::Ready(()) if this.timer.deadline() < this.deadline => {
                        this.timer.as_mut().reset(this.deadline);
                    }
                    // A silence is a timeout, whichever layer reads the error.
                    Poll::Ready(()) => {
                        return Poll::Ready(Some(Err(ClassifiedError::new(
                            FailureKind::Timeout,
                            format!("no data from the upstream for {:?}", this.idle),
                        )
                        .into())))
                    }
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// An upstream stream of at most `max` bytes in all: past it, the stream ends
/// with an [`InvalidResponse`](FailureKind::InvalidResponse) error and nothing
/// more is read (dropping the body closes the upstream connection).
pub(crate) struct MaxBytes<B> {
    inner: B,
    left: usize,
    max: usize,
    upstream: std::sync::Arc<str>,
    over: bool,
}

impl<B> MaxBytes<B> {
    /// Limit `inner`, the answer of `upstream`, to `max` bytes.
    pub(crate) fn new(inner: B, max: usize, upstream: std::sync::Arc<str>) -> Self {
        Self {
            inner,
            left: max,
            max,
            upstream,
            over: false,
        }
    }
}

impl<B> Body for MaxBytes<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.over {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                if size > this.left {
                    this.over = true;
                    return Poll::Ready(Some(Err(ClassifiedError::new(
                        FailureKind::InvalidResponse,
                        format!(
                            "upstream {} streamed more than {} bytes \
                             (limits.max_upstream_body_bytes)",
                            this.upstream, this.max
                        ),
                    )
                    .into())));
                }
                this.left -= size;
                Poll::Ready(Some(Ok(frame)))
            }
            other => other.map(|frame| frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.over || self.inner.is_end_stream()
    }
}

/// The proxy is closing: set once the shutdown grace period is about to end,
/// so every upstream stream still open ends with an error event the client
/// reads (instead of a connection cut without a word). Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Closing(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Closing {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Closing {
    /// Not closing yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// End every stream guarded by this (and every one guarded later).
    pub(crate) fn close(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        *self.0.borrow()
    }

    /// `body`, ended by an error once the proxy closes.
    pub(crate) fn guard<B>(&self, body: B) -> UntilClosing<B> {
        let mut closed = self.0.subscribe();
        UntilClosing {
            inner: body,
            closed: Box::pin(async move {
                if closed.wait_for(|closed| *closed).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }),
            done: false,
        }
    }
}

/// A stream that ends with an error when the proxy closes; see [`Closing`].
pub(crate) struct UntilClosing<B> {
    inner: B,
    closed: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    done: bool,
}

impl<B> Body for UntilClosing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Checked first: a stream that never pauses is ended all the same.
        if this.closed.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(ClassifiedError::new(
                FailureKind::Other,
                "the proxy is restarting: this answer was cut at the end of its shutdown \
                 grace period; send the request again",
            )
            .into())));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

/// An OpenAI `chat.completion` object with one assistant message.
pub(crate) fn completion_json(id: &str, model: &str, content: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    })
}

/// A complete OpenAI event stream for one assistant message.
pub(crate) fn completion_sse(id: &str, model: &str, content: &str) -> Bytes {
    let created = unix_now();
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut out = String::new();
    for event in [
        chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ),
        chunk(serde_json::json!({"content": content}), None),
        chunk(serde_json::json!({}), Some("stop")),
    ] {
        out.push_str("data: ");
        out.push_str(&event.to_string());
        out.push_str("\n\n");
    }
    out.push_str("data: [DONE]\n\n");
    Bytes::from(out)
}

/// Turn a buffered `chat.completion` into an event stream, for a client that
/// asked to stream an answer that arrived whole (a human's, a template's).
pub(crate) fn completion_to_sse(body: &[u8]) -> Option<Bytes> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let content = value.pointer("/choices/0/message/content")?.as_str()?;
    let id = value
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("chatcmpl-proxy");
    let model = value.get("model").and_then(|v| v.as_str()).unwrap_or("");
    Some(completion_sse(id, model, content))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_bodies_send_once() {
        let body = ProxyBody::from(Bytes::from_static(b"hello"));
        assert_eq!(body.bytes(), b"hello");
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.as_ref(), b"hello");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_push_the_idle_deadline_back_and_a_silence_ends_the_stream() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|b| b.map(|b| Ok::<_, BoxError>(Frame::data(b))))
        });
        let idle = Duration::from_millis(100);
        let mut body = IdleTimeout::new(http_body_util::StreamBody::new(frames), idle);
        let started = Instant::now();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        // 300 ms of frames 60 ms apart: three times the limit, never silent that long.
        for _ in 0..5 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("no data from the upstream"), "{e}");
        // Cut `idle` after the last frame, not earlier, not much later.
        let at = started.elapsed();
        assert!(at >= Duration::from_millis(400), "{at:?}");
        assert!(at < Duration::from_millis(410), "{at:?}");
    }

    #[test]
    fn buffered_completions_become_streams() {
        let json = completion_json("x", "m", "hi there").to_string();
        let sse = completion_to_sse(json.as_bytes()).unwrap();
        let text = std::str::from_utf8(&sse).unwrap();
        assert!(text.contains("\"content\":\"hi there\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(completion_to_sse(b"nope").is_none());
    }
}
