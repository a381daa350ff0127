//! The body of a response settled by [`FirstEvent`](super::FirstEvent).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{sleep_until, Instant, Sleep};

use super::error::{StreamFault, StreamInterrupted};
use super::scan::Progress;
use crate::BoxError;

/// The body of a response settled by [`FirstEvent`](super::FirstEvent): an event
/// stream (its buffered start, then the rest of it, checked as it passes), a
/// non-stream answer read whole, or any other body unchanged.
///
/// An event stream that had started ends with a [`StreamInterrupted`] body error
/// instead of a clean end when its body breaks, when it ends (however it ends)
/// before its [`TerminalEvent`](super::TerminalEvent), when an event grows past
/// the size limit, or when it is silent for longer than the idle limit (unless
/// its terminal event had arrived: then the silence just ends it). So a client
/// never mistakes a cut answer for a whole one.
#[derive(Debug)]
pub struct SseBody<B> {
    inner: Inner<B>,
}

#[derive(Debug)]
enum Inner<B> {
    /// Passed through unchanged: a failure returned as is, the final responder's
    /// answer, or an answer that was not read ahead.
    Pass(B),
    /// A non-stream answer, read whole; `None` once sent.
    Buffered(Option<Bytes>),
    /// An event stream after its first data event.
    Stream(Box<Started<B>>),
}

#[derive(Debug)]
struct Started<B> {
    prefix: Option<Bytes>,
    body: B,
    progress: Progress,
    idle: Option<Idle>,
    /// The body returned its end (it is not polled again).
    body_ended: bool,
    /// This body has returned its end or its error.
    done: bool,
}

#[derive(Debug)]
struct Idle {
    limit: Duration,
    last_bytes: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<B> SseBody<B> {
    /// A body passed through unchanged.
    pub const fn new(inner: B) -> Self {
        Self {
            inner: Inner::Pass(inner),
        }
    }

    /// The body it wraps, when nothing of it has been read ahead: lets a caller
    /// that buffers answers take a body back as it is. `Err` gives the wrapper
    /// back (see [`into_buffered`](Self::into_buffered) for answers read whole).
    ///
    /// ```
    /// use tower_llm_resilience::fallback::SseBody;
    ///
    /// let body = SseBody::new(String::from("{}"));
    /// assert_eq!(body.try_into_inner().unwrap(), "{}");
    /// ```
    pub fn try_into_inner(self) -> Result<B, Self> {
        match self.inner {
            Inner::Pass(body) => Ok(body),
            inner => Err(Self { inner }),
        }
    }

    /// The whole answer, when [`FirstEvent`](super::FirstEvent) read it before it
    /// counted (a non-stream answer). `Err` gives the wrapper back.
    pub fn into_buffered(self) -> Result<Bytes, Self> {
        match self.inner {
            Inner::Buffered(bytes) => Ok(bytes.unwrap_or_default()),
            inner => Err(Self { inner }),
        }
    }

    /// Whether this is an event stream that had started when it was settled.
    pub fn is_event_stream(&self) -> bool {
        matches!(self.inner, Inner::Stream(_))
    }

    pub(crate) fn buffered(bytes: Bytes) -> Self {
        Self {
            inner: Inner::Buffered(Some(bytes)),
        }
    }

    pub(crate) fn started(
        prefix: Bytes,
        body: B,
        progress: Progress,
        idle_limit: Option<Duration>,
        body_ended: bool,
    ) -> Self {
        let idle = idle_limit.map(|limit| {
            let now = Instant::now();
            Idle {
                limit,
                last_bytes: now,
                timer: Box::pin(sleep_until(now + limit)),
            }
        });
        Self {
            inner: Inner::Stream(Box::new(Started {
                prefix: Some(prefix),
                body,
                progress,
                idle,
                body_ended,
                done: false,
            })),
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
        match &mut self.inner {
            Inner::Pass(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|result| {
                    result
                        .map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                        .map_err(Into::into)
                })
            }),
            Inner::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(started) => started.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Pass(body) => body.is_end_stream(),
            Inner::Buffered(bytes) => bytes.is_none(),
            // Only once its end was checked: a stream that ends without its
            // terminal event still has an error to report.
            Inner::Stream(started) => started.prefix.is_none() && started.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Pass(body) => body.size_hint(),
            Inner::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Stream(started) if started.done => SizeHint::with_exact(0),
            Inner::Stream(started) => {
                let extra = started.prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = if started.body_ended {
                    SizeHint::with_exact(0)
                } else {
                    started.body.size_hint()
                };
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}

impl<B> Started<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        if self.body_ended {
            return self.end();
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = frame.map_data(|mut data| data.copy_to_bytes(data.remaining()));
                if let Some(data) = frame.data_ref() {
                    if let Some(idle) = &mut self.idle {
                        idle.last_bytes = Instant::now();
                    }
                    if let Err(too_large) = self.progress.feed(data) {
                        return self.fail(Box::new(StreamFault::EventTooLarge(too_large.0)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => self.fail(error.into()),
            Poll::Ready(None) => {
                self.body_ended = true;
                self.end()
            }
            Poll::Pending => {
                let Some(idle) = &mut self.idle else {
                    return Poll::Pending;
                };
                loop {
                    ready!(idle.timer.as_mut().poll(cx));
                    let silent_until = idle.last_bytes + idle.limit;
                    if Instant::now() >= silent_until {
                        break;
                    }
                    // Bytes came since the timer was set: wait for the rest.
                    idle.timer.as_mut().reset(silent_until);
                }
                let limit = idle.limit;
                if self.progress.complete {
                    // The answer is whole; the server just did not close.
                    self.done = true;
                    return Poll::Ready(None);
                }
                self.fail(Box::new(StreamFault::Silent(limit)))
            }
        }
    }

    /// The body ended: the stream ends here if its terminal event arrived.
    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.progress.finish();
        if self.progress.complete {
            self.done = true;
            return Poll::Ready(None);
        }
        self.fail(Box::new(StreamFault::NoTerminalEvent))
    }

    fn fail(&mut self, source: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        // Release what the scanner held.
        self.progress.release();
        let error = StreamInterrupted::new(source);
        tracing::warn!(kind = %error.kind(), "event stream interrupted after its first event: {error}");
        metrics::counter!("llm_fallback_stream_interrupted_total").increment(1);
        Poll::Ready(Some(Err(Box::new(error))))
    }
}
