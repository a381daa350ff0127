//! A stream body that reads the usage events passing through it and records
//! them when the stream ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tower_llm_resilience::usage::{TokenUsage, UsageReport};

use super::{Answered, UsageLog};

/// The longest SSE line kept while looking for usage; longer lines are skipped
/// (a usage event is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// Passes an event stream through unchanged, folding the usage of its `data:`
/// events; records once, when the stream ends or is dropped.
pub(crate) struct UsageBody<B> {
    inner: B,
    tap: Option<(Arc<UsageLog>, Answered)>,
    line: Vec<u8>,
    skipping: bool,
    model: Option<String>,
    tokens: Option<TokenUsage>,
}

impl<B> UsageBody<B> {
    pub(crate) fn new(inner: B, log: Arc<UsageLog>, answered: Answered) -> Self {
        Self {
            inner,
            tap: Some((log, answered)),
            line: Vec::new(),
            skipping: false,
            model: None,
            tokens: None,
        }
    }

    fn scan(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let end = chunk.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(at) => (&chunk[..at], &chunk[at + 1..]),
                None => (chunk, &[][..]),
            };
            if !self.skipping {
                if self.line.len() + part.len() > MAX_LINE {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if end.is_some() {
                if !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.read_line(&line);
                    self.line = line;
                }
                self.line.clear();
                self.skipping = false;
            }
            chunk = rest;
        }
    }

    fn read_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Only events that can carry usage are parsed.
        if !contains(data, b"\"usage\"") {
            if self.model.is_none() && contains(data, b"\"model\"") {
                self.model = serde_json::from_slice::<serde_json::Value>(data)
                    .ok()
                    .and_then(|v| model_of(&v));
            }
            return;
        }
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        if self.model.is_none() {
            self.model = model_of(&event);
        }
        if let Some(tokens) = TokenUsage::from_json(&event) {
            self.tokens
                .get_or_insert_with(TokenUsage::default)
                .accumulate(tokens);
        }
    }

    fn finish(&mut self) {
        if let Some((log, answered)) = self.tap.take() {
            let report = self
                .tokens
                .map(|tokens| UsageReport::new(self.model.as_deref().unwrap_or("-"), tokens));
            log.record(&answered, report);
        }
    }
}

fn model_of(event: &serde_json::Value) -> Option<String> {
    event
        .get("model")
        .or_else(|| event.get("message").and_then(|m| m.get("model")))
        .and_then(|m| m.as_str())
        .map(str::to_owned)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl<B> Drop for UsageBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for UsageBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    // A reference count, not a copy.
                    let data = data.clone();
                    self.scan(data.chunk());
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UsageConfig;
    use http_body_util::{BodyExt, StreamBody};

    fn answered() -> Answered {
        Answered {
            client: "c1".into(),
            model: "smart".into(),
            tier: "primary".into(),
            cached: false,
            degraded: false,
        }
    }

    /// The totals recorded after streaming `frames` through a `UsageBody`.
    async fn totals_after(frames: &[&str]) -> super::super::Totals {
        let log = UsageLog::build(&UsageConfig::default()).unwrap().unwrap();
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = frames
            .iter()
            .map(|f| Ok(Frame::data(Bytes::copy_from_slice(f.as_bytes()))))
            .collect();
        let inner = StreamBody::new(futures_util::stream::iter(frames));
        let body = UsageBody::new(inner, log.clone(), answered());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert!(!bytes.is_empty(), "the stream passes through");
        let query = super::super::Query {
            from: 0,
            to: i64::MAX,
            client: None,
            by_client: false,
            by_model: false,
            by_day: false,
        };
        log.query(query).await.unwrap().1
    }

    #[tokio::test]
    async fn openai_usage_chunk_split_across_frames_is_read() {
        let totals = totals_after(&[
            "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_",
            "tokens\":9,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
        ])
        .await;
        assert_eq!(
            (totals.requests, totals.input_tokens, totals.output_tokens),
            (1, 9, 3)
        );
    }

    #[tokio::test]
    async fn anthropic_start_and_delta_events_fold() {
        let totals = totals_after(&[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        ])
        .await;
        assert_eq!((totals.input_tokens, totals.output_tokens), (25, 15));
    }

    #[tokio::test]
    async fn a_stream_without_usage_is_one_request_of_zero_tokens() {
        let totals = totals_after(&["data: {\"choices\":[]}\n\n", "data: [DONE]\n\n"]).await;
        assert_eq!((totals.requests, totals.input_tokens), (1, 0));
    }
}
