//! Event streams (SSE): a tier answers once its first `data:` event arrives.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{sleep, Sleep};

use super::error::{FirstEventError, StreamInterrupted};
use super::{SettleResponse, Settlement};
use crate::classify::{classify_error_body, FailureKind};
use crate::BoxError;

/// How many bytes may arrive before the first complete `data:` event.
const DEFAULT_MAX_PREFIX: usize = 64 * 1024;

/// Settles an `http::Response` whose body is an event stream (`text/event-stream`)
/// only once its first `data:` event has arrived, within a time-to-first-token
/// limit counted from the response head. Other responses are answers at once.
///
/// A stream that breaks, ends, stalls past the limit, or opens with a provider
/// error event before its first `data:` event is a failed tier (classified
/// [`Connect`](FailureKind::Connect), [`InvalidResponse`](FailureKind::InvalidResponse),
/// [`Timeout`](FailureKind::Timeout), or the error event's kind), so the next tier
/// is tried and the client has received nothing. Once the first event is in, the
/// stream belongs to the client: a break after that is a body error
/// ([`StreamInterrupted`]), never a silently shortened answer.
///
/// Bound the time to the response head itself with a timeout on each tier
/// (`tower::timeout::TimeoutLayer`), since the limit here starts at the head.
#[derive(Clone, Copy, Debug)]
pub struct FirstEvent {
    timeout: Duration,
    max_prefix: usize,
}

impl FirstEvent {
    /// Wait at most `timeout` after the response head for the first `data:` event.
    pub const fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            max_prefix: DEFAULT_MAX_PREFIX,
        }
    }

    /// The time-to-first-token limit.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<B> SettleResponse<http::Response<B>> for FirstEvent
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Output = http::Response<SseBody<B>>;
    type Future = FirstEventFuture<B>;

    fn settle(&self, response: http::Response<B>) -> Self::Future {
        if !is_event_stream(response.headers()) {
            return FirstEventFuture {
                state: State::Ready(Some(response.map(SseBody::new))),
            };
        }
        let (parts, body) = response.into_parts();
        FirstEventFuture {
            state: State::Waiting {
                parts: Some(parts),
                body: Some(body),
                buffer: BytesMut::new(),
                deadline: Box::pin(sleep(self.timeout)),
                timeout: self.timeout,
                max_prefix: self.max_prefix,
            },
        }
    }

    fn try_settle(&self, response: http::Response<B>) -> Settlement<Self::Output, Self::Future> {
        if is_event_stream(response.headers()) {
            Settlement::Wait(self.settle(response))
        } else {
            Settlement::Now(Ok(response.map(SseBody::new)))
        }
    }

    fn pass(&self, response: http::Response<B>) -> Self::Output {
        response.map(SseBody::new)
    }
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// The future of [`FirstEvent`]: resolves with the response once its first
/// `data:` event is buffered.
#[derive(Debug)]
pub struct FirstEventFuture<B> {
    state: State<B>,
}

#[derive(Debug)]
enum State<B> {
    Ready(Option<http::Response<SseBody<B>>>),
    Waiting {
        parts: Option<http::response::Parts>,
        body: Option<B>,
        buffer: BytesMut,
        deadline: Pin<Box<Sleep>>,
        timeout: Duration,
        max_prefix: usize,
    },
}

impl<B> Future for FirstEventFuture<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<SseBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (parts, body, buffer, deadline, timeout, max_prefix) = match &mut self.state {
            State::Ready(response) => {
                return Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            State::Waiting {
                parts,
                body,
                buffer,
                deadline,
                timeout,
                max_prefix,
            } => (parts, body, buffer, deadline, *timeout, *max_prefix),
        };
        let fail = |e: FirstEventError| Poll::Ready(Err(BoxError::from(e)));
        loop {
            let inner = body.as_mut().expect("polled after completion");
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                    match first_event(buffer) {
                        Scan::Data => {
                            let prefix = buffer.split().freeze();
                            let body = SseBody::started(prefix, body.take().expect("body"));
                            let parts = parts.take().expect("parts");
                            return Poll::Ready(Ok(http::Response::from_parts(parts, body)));
                        }
                        Scan::Error(kind) => return fail(FirstEventError::ErrorEvent(kind)),
                        Scan::Incomplete if buffer.len() > max_prefix => {
                            return fail(FirstEventError::TooLarge(max_prefix))
                        }
                        Scan::Incomplete => {}
                    }
                }
                Poll::Ready(Some(Err(e))) => return fail(FirstEventError::Body(e.into())),
                Poll::Ready(None) => return fail(FirstEventError::Closed),
                Poll::Pending => {
                    ready!(deadline.as_mut().poll(cx));
                    return fail(FirstEventError::TimedOut(timeout));
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// A complete event with data that is not an error.
    Data,
    /// The first complete data event is a provider error.
    Error(FailureKind),
    /// No complete data event yet.
    Incomplete,
}

/// Look for the first complete SSE event that has data (comments and data-less
/// events are skipped, as a client would).
fn first_event(buffer: &[u8]) -> Scan {
    let mut event_name: &[u8] = b"";
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    let mut rest = buffer;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let mut line = &rest[..end];
        rest = &rest[end + 1..];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        if line.is_empty() {
            if has_data {
                return classify_event(event_name, &data);
            }
            event_name = b"";
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                has_data = true;
            }
            b"event" => event_name = value,
            _ => {}
        }
    }
    Scan::Incomplete
}

fn classify_event(event_name: &[u8], data: &[u8]) -> Scan {
    match classify_error_body(data) {
        Some(kind) => Scan::Error(kind),
        None if event_name == b"error" => Scan::Error(FailureKind::Other),
        None => Scan::Data,
    }
}

/// The body of a response settled by [`FirstEvent`]: the buffered start of an
/// event stream followed by the rest of it, or any other body unchanged.
///
/// Once an event stream has started, a break in it is reported as a
/// [`StreamInterrupted`] body error.
#[derive(Debug)]
pub struct SseBody<B> {
    prefix: Option<Bytes>,
    inner: B,
    started_stream: bool,
    failed: bool,
}

impl<B> SseBody<B> {
    /// A body passed through unchanged.
    pub const fn new(inner: B) -> Self {
        Self {
            prefix: None,
            inner,
            started_stream: false,
            failed: false,
        }
    }

    /// The body it wraps, when nothing of it has been read ahead (any body that
    /// is not an event stream): lets a caller that buffers answers take a
    /// buffered body back as it is. `Err` gives the wrapper back.
    ///
    /// ```
    /// use tower_llm_resilience::fallback::SseBody;
    ///
    /// let body = SseBody::new(String::from("{}"));
    /// assert_eq!(body.try_into_inner().unwrap(), "{}");
    /// ```
    pub fn try_into_inner(self) -> Result<B, Self> {
        if self.prefix.is_none() && !self.started_stream {
            Ok(self.inner)
        } else {
            Err(self)
        }
    }

    fn started(prefix: Bytes, inner: B) -> Self {
        Self {
            prefix: Some(prefix),
            inner,
            started_stream: true,
            failed: false,
        }
    }
}

impl<B> Body for SseBody<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if this.failed {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(
                frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
            ))),
            Some(Err(e)) => {
                this.failed = true;
                let e = e.into();
                if this.started_stream {
                    tracing::warn!("event stream interrupted after its first event");
                    metrics::counter!("llm_fallback_stream_interrupted_total").increment(1);
                    Poll::Ready(Some(Err(Box::new(StreamInterrupted::new(e)))))
                } else {
                    Poll::Ready(Some(Err(e)))
                }
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && (self.failed || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_event_needs_a_complete_data_event() {
        assert_eq!(first_event(b""), Scan::Incomplete);
        assert_eq!(first_event(b": keep-alive\n\n"), Scan::Incomplete);
        assert_eq!(first_event(b"event: ping\n\n"), Scan::Incomplete);
        assert_eq!(first_event(b"data: {\"a\":1}\n"), Scan::Incomplete);
        assert_eq!(first_event(b"data: {\"a\":1}\n\n"), Scan::Data);
        assert_eq!(first_event(b": hi\r\n\r\ndata: x\r\n\r\n"), Scan::Data);
        assert_eq!(first_event(b"data\n\n"), Scan::Data);
    }

    #[test]
    fn error_events_are_classified() {
        let anthropic = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n";
        assert_eq!(
            first_event(anthropic),
            Scan::Error(FailureKind::Overloaded { retry_after: None })
        );
        let openai = b"data: {\"error\":{\"code\":\"context_length_exceeded\"}}\n\n";
        assert_eq!(
            first_event(openai),
            Scan::Error(FailureKind::ContextLengthExceeded)
        );
        assert_eq!(
            first_event(b"event: error\ndata: nope\n\n"),
            Scan::Error(FailureKind::Other)
        );
    }

    #[test]
    fn multi_line_data_is_joined() {
        let split = b"data: {\"error\":\ndata: {\"code\":\"content_filter\"}}\n\n";
        assert_eq!(
            first_event(split),
            Scan::Error(FailureKind::ContentFiltered)
        );
    }
}
