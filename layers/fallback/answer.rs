//! Non-stream answers, read whole (bounded) before they count.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body::Body;
use http_body_util::{LengthLimitError, Limited};

use super::error::IncompleteAnswer;
use super::SseBody;
use crate::BoxError;

/// Body frames read in one poll before yielding, so a body that is always ready
/// (with empty frames, say) cannot hold the thread.
pub(crate) const FRAMES_PER_POLL: usize = 64;

/// Reading one answer whole: at most `limit` bytes (through [`Limited`]), then
/// checked against its `Content-Length` and, for JSON, parsed.
#[derive(Debug)]
pub(crate) struct ReadAnswer<B> {
    parts: Option<http::response::Parts>,
    body: Limited<B>,
    buffer: BytesMut,
    announced: Option<u64>,
    json: bool,
    limit: u64,
}

impl<B> ReadAnswer<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    /// Start reading, or fail at once when `Content-Length` announces too much.
    pub(crate) fn start(
        parts: http::response::Parts,
        body: B,
        limit: u64,
    ) -> Result<Self, IncompleteAnswer> {
        let announced = content_length(&parts.headers);
        if announced.is_some_and(|n| n > limit) {
            return Err(IncompleteAnswer::TooLarge(limit));
        }
        let json = parts.status.is_success()
            && !matches!(parts.status.as_u16(), 204 | 205)
            && is_json(&parts.headers);
        Ok(Self {
            parts: Some(parts),
            body: Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)),
            buffer: BytesMut::new(),
            announced,
            json,
            limit,
        })
    }

    /// The answer, when its body is known to be empty, without polling.
    pub(crate) fn empty(mut self) -> Result<http::Response<SseBody<B>>, BoxError> {
        self.finish()
    }

    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http::Response<SseBody<B>>, BoxError>> {
        for _ in 0..FRAMES_PER_POLL {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let error = if e.is::<LengthLimitError>() {
                        IncompleteAnswer::TooLarge(self.limit)
                    } else {
                        IncompleteAnswer::Body(e)
                    };
                    return Poll::Ready(Err(error.into()));
                }
                Poll::Ready(None) => return Poll::Ready(self.finish()),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn finish(&mut self) -> Result<http::Response<SseBody<B>>, BoxError> {
        let bytes = std::mem::take(&mut self.buffer).freeze();
        let received = bytes.len() as u64;
        if let Some(announced) = self.announced.filter(|&n| n != received) {
            return Err(IncompleteAnswer::Short {
                announced,
                received,
            }
            .into());
        }
        if self.json && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(IncompleteAnswer::NotJson.into());
        }
        let parts = self
            .parts
            .take()
            .ok_or_else(|| BoxError::from("the answer was already taken"))?;
        Ok(http::Response::from_parts(parts, SseBody::buffered(bytes)))
    }
}

pub(crate) fn is_event_stream(headers: &http::HeaderMap) -> bool {
    media_type(headers).is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
}

fn is_json(headers: &http::HeaderMap) -> bool {
    media_type(headers).is_some_and(|t| {
        t.eq_ignore_ascii_case("application/json")
            || t.len() > 5 && t[t.len() - 5..].eq_ignore_ascii_case("+json")
    })
}

/// The media type of the `Content-Type`, without parameters.
fn media_type(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    // A byte scan: `split(';')` costs a searcher set-up per call, on every answer.
    let end = value.bytes().position(|b| b == b';').unwrap_or(value.len());
    Some(value[..end].trim())
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
