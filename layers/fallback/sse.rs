//! Event streams (SSE): a tier answers once its first `data:` event arrives; other
//! answers once they are read whole.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body::Body;
use tokio::time::{sleep, Sleep};

use super::answer::{is_event_stream, ReadAnswer, FRAMES_PER_POLL};
use super::error::FirstEventError;
use super::scan::Progress;
use super::{SettleResponse, Settlement, SseBody, TerminalEvent};

use crate::BoxError;

/// How many bytes may arrive before the first complete `data:` event.
pub const DEFAULT_MAX_PREFIX_BYTES: usize = 64 * 1024;
/// The largest event (with the line being read) of a stream: far above any real
/// chunk, low enough that a server cannot make the client buffer without bound.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;
/// The largest non-stream answer read whole: far above any real chat answer, far
/// below memory.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;
/// The longest silence inside a stream after its first event.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Settles an `http::Response` only once it is an answer: an event stream
/// (`text/event-stream`) once its first `data:` event has arrived, within a
/// time-to-first-token limit counted from the response head; any other answer
/// once it has been read whole (bounded) and found whole.
///
/// # Event streams
///
/// A stream that breaks, ends, stalls past the limit, or opens with a provider
/// error event before its first `data:` event is a failed tier (a
/// [`FirstEventError`], classified [`Connect`](crate::classify::FailureKind::Connect),
/// [`InvalidResponse`](crate::classify::FailureKind::InvalidResponse),
/// [`Timeout`](crate::classify::FailureKind::Timeout), or the error event's kind),
/// so the next tier is tried and the client has received nothing. Once the first
/// event is in, the stream belongs to the client, and the [`SseBody`] checks the
/// rest as it passes: a stream is complete only once its [`TerminalEvent`]
/// arrived. A stream that breaks, or ends in any way before its terminal event,
/// or is silent longer than [`idle_timeout`](Self::idle_timeout), or sends an
/// event larger than [`max_event_bytes`](Self::max_event_bytes), ends with a
/// [`StreamInterrupted`](super::StreamInterrupted) body error, never a silently
/// shortened answer. A last event that is complete but lacks its closing blank
/// line when the body ends still counts.
///
/// Lines may end in `\n`, `\r\n` or a lone `\r`; a byte order mark before the
/// first line is skipped.
///
/// # Other answers
///
/// A successful answer that is not an event stream is read whole, up to
/// [`max_answer_bytes`](Self::max_answer_bytes) (with
/// [`http_body_util::Limited`]), before it counts. It fails the tier
/// ([`IncompleteAnswer`](super::IncompleteAnswer), classified
/// [`InvalidResponse`](crate::classify::FailureKind::InvalidResponse), or
/// [`Timeout`](crate::classify::FailureKind::Timeout) if reading it timed out) when it is larger than the limit (reading stops there and the
/// memory is released), shorter than its `Content-Length`, or a JSON answer (by
/// its `Content-Type`) that does not parse, as a close-delimited answer cut short
/// does not. The body then holds the bytes
/// ([`SseBody::into_buffered`]). Turn this off with
/// [`buffer_answers(false)`](Self::buffer_answers).
///
/// Bound the time to the response head itself with a timeout on each tier
/// (`tower::timeout::TimeoutLayer`), since the limit here starts at the head.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::fallback::{FirstEvent, TerminalEvent};
///
/// let settle = FirstEvent::new(Duration::from_secs(10))
///     .terminal_event(TerminalEvent::openai())
///     .max_event_bytes(256 * 1024)
///     .max_answer_bytes(4 * 1024 * 1024)
///     .idle_timeout(Some(Duration::from_secs(60)));
/// assert_eq!(settle.limits().2, 4 * 1024 * 1024);
/// // FallbackLayer::builder()...settle_with(settle).build()
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FirstEvent {
    timeout: Duration,
    max_prefix: usize,
    max_event: usize,
    max_answer: u64,
    idle_timeout: Option<Duration>,
    terminal: TerminalEvent,
    buffer_answers: bool,
}

impl FirstEvent {
    /// Wait at most `timeout` after the response head for the first `data:`
    /// event; every other setting at its default.
    pub const fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            max_prefix: DEFAULT_MAX_PREFIX_BYTES,
            max_event: DEFAULT_MAX_EVENT_BYTES,
            max_answer: DEFAULT_MAX_ANSWER_BYTES,
            idle_timeout: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            terminal: TerminalEvent::openai_or_anthropic(),
            buffer_answers: true,
        }
    }

    /// The time-to-first-token limit.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The most bytes read before the first complete `data:` event (default
    /// [`DEFAULT_MAX_PREFIX_BYTES`], 64 KiB); over it the tier fails with
    /// [`FirstEventError::TooLarge`]. At least 1.
    #[must_use]
    pub const fn max_prefix_bytes(mut self, limit: usize) -> Self {
        self.max_prefix = if limit == 0 { 1 } else { limit };
        self
    }

    /// The largest event of a stream, with the line being read (default
    /// [`DEFAULT_MAX_EVENT_BYTES`], 1 MiB). At least 1.
    #[must_use]
    pub const fn max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event = if limit == 0 { 1 } else { limit };
        self
    }

    /// The largest non-stream answer read whole (default
    /// [`DEFAULT_MAX_ANSWER_BYTES`], 16 MiB); over it the tier fails with
    /// [`IncompleteAnswer::TooLarge`](super::IncompleteAnswer::TooLarge) as soon
    /// as the limit is passed or announced by `Content-Length`.
    #[must_use]
    pub const fn max_answer_bytes(mut self, limit: u64) -> Self {
        self.max_answer = limit;
        self
    }

    /// The longest silence inside a stream after its first event (default
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`], 5 minutes); `None` for no limit. Past it,
    /// a stream whose terminal event has not arrived ends with a
    /// [`StreamInterrupted`](super::StreamInterrupted) error classified
    /// [`Timeout`](crate::classify::FailureKind::Timeout).
    #[must_use]
    pub const fn idle_timeout(mut self, limit: Option<Duration>) -> Self {
        self.idle_timeout = match limit {
            Some(limit) if limit.is_zero() => None,
            limit => limit,
        };
        self
    }

    /// The rule for the event that completes a stream (default: OpenAI's or
    /// Anthropic's, [`TerminalEvent::openai_or_anthropic`]).
    #[must_use]
    pub const fn terminal_event(mut self, rule: TerminalEvent) -> Self {
        self.terminal = rule;
        self
    }

    /// Read non-stream answers whole before they count (default `true`). With
    /// `false` they are passed on unread, as with
    /// [`Immediate`](super::Immediate), and a cut in them reaches the caller.
    #[must_use]
    pub const fn buffer_answers(mut self, on: bool) -> Self {
        self.buffer_answers = on;
        self
    }

    /// The limits in force: bytes before the first event, bytes per event,
    /// bytes per non-stream answer.
    pub const fn limits(&self) -> (usize, usize, u64) {
        (self.max_prefix, self.max_event, self.max_answer)
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
        let state = if is_event_stream(response.headers()) {
            let (parts, body) = response.into_parts();
            State::Waiting {
                parts,
                body,
                prefix: BytesMut::new(),
                progress: Progress::new(self.max_event, self.terminal),
                deadline: Box::pin(sleep(self.timeout)),
            }
        } else if self.buffer_answers {
            let (parts, body) = response.into_parts();
            match ReadAnswer::start(parts, body, self.max_answer) {
                Ok(read) => State::Reading(read),
                Err(error) => State::Failed(Some(error.into())),
            }
        } else {
            State::Ready(Some(response.map(SseBody::new)))
        };
        FirstEventFuture {
            state,
            settings: *self,
        }
    }

    fn try_settle(&self, response: http::Response<B>) -> Settlement<Self::Output, Self::Future> {
        if !self.buffer_answers && !is_event_stream(response.headers()) {
            return Settlement::Now(Ok(response.map(SseBody::new)));
        }
        if !is_event_stream(response.headers()) && response.body().is_end_stream() {
            // Nothing to read: settle on the spot.
            return match self.settle(response).check_empty() {
                Some(result) => Settlement::Now(result),
                None => unreachable_state(),
            };
        }
        Settlement::Wait(self.settle(response))
    }

    fn pass(&self, response: http::Response<B>) -> Self::Output {
        response.map(SseBody::new)
    }
}

#[cold]
fn unreachable_state() -> ! {
    unreachable!("an empty answer settles at once")
}

/// The future of [`FirstEvent`]: resolves with the response once its first
/// `data:` event is buffered, or once a non-stream answer is read whole.
#[derive(Debug)]
pub struct FirstEventFuture<B> {
    state: State<B>,
    settings: FirstEvent,
}

#[derive(Debug)]
enum State<B> {
    Ready(Option<http::Response<SseBody<B>>>),
    Failed(Option<BoxError>),
    Waiting {
        parts: http::response::Parts,
        body: B,
        prefix: BytesMut,
        progress: Progress,
        deadline: Pin<Box<Sleep>>,
    },
    Reading(ReadAnswer<B>),
    Done,
}

impl<B> FirstEventFuture<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    /// For an answer whose body is known to be empty: its result without polling.
    fn check_empty(self) -> Option<Result<http::Response<SseBody<B>>, BoxError>> {
        match self.state {
            State::Ready(response) => response.map(Ok),
            State::Failed(error) => error.map(Err),
            State::Reading(read) => Some(read.empty()),
            State::Waiting { .. } | State::Done => None,
        }
    }
}

impl<B> Future for FirstEventFuture<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<SseBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let poll = match &mut this.state {
            State::Ready(response) => Poll::Ready(response.take().map(Ok)),
            State::Failed(error) => Poll::Ready(error.take().map(Err)),
            State::Waiting { .. } => poll_first_event(&mut this.state, &this.settings, cx),
            State::Reading(read) => read.poll(cx).map(Some),
            State::Done => Poll::Ready(None),
        };
        match poll {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(result)) => {
                // Free whatever was buffered at once, whatever the outcome.
                this.state = State::Done;
                Poll::Ready(result)
            }
            Poll::Ready(None) => panic!("`FirstEventFuture` polled after completion"),
        }
    }
}

type Settled<B> = Option<Result<http::Response<SseBody<B>>, BoxError>>;

fn poll_first_event<B>(
    state: &mut State<B>,
    settings: &FirstEvent,
    cx: &mut Context<'_>,
) -> Poll<Settled<B>>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    let State::Waiting {
        body,
        prefix,
        progress,
        deadline,
        ..
    } = state
    else {
        return Poll::Ready(None);
    };
    let fail = |e: FirstEventError| Poll::Ready(Some(Err(BoxError::from(e))));
    let mut body_ended = false;
    for _ in 0..FRAMES_PER_POLL {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                let start = prefix.len();
                while data.has_remaining() {
                    let chunk = data.chunk();
                    prefix.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
                if let Err(too_large) = progress.feed(&prefix[start..]) {
                    return fail(FirstEventError::TooLarge(too_large.0));
                }
            }
            Poll::Ready(Some(Err(e))) => return fail(FirstEventError::Body(e.into())),
            Poll::Ready(None) => {
                progress.finish();
                body_ended = true;
            }
            Poll::Pending => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return fail(FirstEventError::TimedOut(settings.timeout));
                }
                return Poll::Pending;
            }
        }
        if progress.events > 0 {
            if let Some(kind) = progress.first_error.take() {
                return fail(FirstEventError::ErrorEvent(kind));
            }
            break;
        }
        if body_ended {
            return fail(FirstEventError::Closed);
        }
        if prefix.len() > settings.max_prefix {
            return fail(FirstEventError::TooLarge(settings.max_prefix));
        }
    }
    if progress.events == 0 {
        // Still ready after a full budget of frames: give the thread back.
        if deadline.as_mut().poll(cx).is_ready() {
            return fail(FirstEventError::TimedOut(settings.timeout));
        }
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    let State::Waiting {
        parts,
        body,
        prefix,
        progress,
        ..
    } = std::mem::replace(state, State::Done)
    else {
        return Poll::Ready(None);
    };
    let body = SseBody::started(
        prefix.freeze(),
        body,
        progress,
        settings.idle_timeout,
        body_ended,
    );
    Poll::Ready(Some(Ok(http::Response::from_parts(parts, body))))
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
