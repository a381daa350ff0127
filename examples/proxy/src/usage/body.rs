//! A stream body that reads the usage events passing through it and records
//! them when the stream ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tower_llm_resilience::usage::{TokenUsage, UsageReport};

use super::{contains, Answered, UsageLog};

/// The longest SSE line kept while looking for usage; longer lines are skipped
/// (a usage event is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// Passes an event stream through, folding the usage of its `data:` events;
/// records once, when the stream ends or is dropped.
///
/// With `strip`, the OpenAI usage-only chunk (`"choices": []` with `usage`,
/// sent because the proxy asked for it) is taken out of the stream: the client
/// did not ask for it. Whole lines are then sent on (a partial line waits for
/// its end, up to [`MAX_LINE`]).
pub(crate) struct UsageBody<B> {
    inner: B,
    tap: Option<(Arc<UsageLog>, Answered)>,
    line: Vec<u8>,
    skipping: bool,
    model: Option<String>,
    tokens: Option<TokenUsage>,
    strip: bool,
    /// Strip mode: the blank line ending a dropped event is dropped too.
    drop_blank: bool,
    /// Strip mode: a line longer than `MAX_LINE` is being passed through.
    passing: bool,
    ended: bool,
}

impl<B> UsageBody<B> {
    pub(crate) fn new(inner: B, log: Arc<UsageLog>, answered: Answered, strip: bool) -> Self {
        Self {
            inner,
            tap: Some((log, answered)),
            line: Vec::new(),
            skipping: false,
            model: None,
            tokens: None,
            strip,
            drop_blank: false,
            passing: false,
            ended: false,
        }
    }

    /// Strip mode: the bytes to send for `data`, without usage-only events.
    fn filter(&mut self, data: &Bytes) -> Bytes {
        // Whole lines and no usage: sent as they are.
        if self.line.is_empty()
            && !self.passing
            && !self.drop_blank
            && data.ends_with(b"\n")
            && !contains(data, b"\"usage\"")
        {
            self.scan(data);
            return data.clone();
        }
        let mut out = Vec::with_capacity(data.len() + self.line.len());
        let mut rest = &data[..];
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            let (piece, after) = rest.split_at(at + 1);
            rest = after;
            if self.passing {
                out.extend_from_slice(piece);
                self.passing = false;
                continue;
            }
            self.line.extend_from_slice(piece);
            let line = std::mem::take(&mut self.line);
            let content = line
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(&line);
            if content.is_empty() && std::mem::take(&mut self.drop_blank) {
                // The end of a dropped event.
            } else if self.read_line(content) {
                self.drop_blank = true;
            } else {
                out.extend_from_slice(&line);
            }
            self.line = line;
            self.line.clear();
        }
        if self.passing {
            out.extend_from_slice(rest);
        } else {
            self.line.extend_from_slice(rest);
            if self.line.len() > MAX_LINE {
                out.append(&mut self.line);
                self.passing = true;
            }
        }
        Bytes::from(out)
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
                    let content = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.read_line(content);
                    self.line = line;
                }
                self.line.clear();
                self.skipping = false;
            }
            chunk = rest;
        }
    }

    /// Fold one line's usage; `true` when it is an OpenAI usage-only chunk.
    fn read_line(&mut self, line: &[u8]) -> bool {
        let Some(data) = line.strip_prefix(b"data:") else {
            return false;
        };
        // Only events that can carry usage are parsed.
        if !contains(data, b"\"usage\"") {
            if self.model.is_none() && contains(data, b"\"model\"") {
                self.model = serde_json::from_slice::<serde_json::Value>(data)
                    .ok()
                    .and_then(|v| model_of(&v));
            }
            return false;
        }
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else {
            return false;
        };
        if self.model.is_none() {
            self.model = model_of(&event);
        }
        if let Some(tokens) = TokenUsage::from_json(&event) {
            self.tokens
                .get_or_insert_with(TokenUsage::default)
                .accumulate(tokens);
        }
        event
            .get("choices")
            .and_then(serde_json::Value::as_array)
            .is_some_and(Vec::is_empty)
            && event.get("usage").is_some_and(serde_json::Value::is_object)
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
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let frame = match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.ended = true;
                    self.finish();
                    // Strip mode: a last line without its newline.
                    if self.strip && !self.line.is_empty() {
                        let rest = std::mem::take(&mut self.line);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                    }
                    return Poll::Ready(None);
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            if !self.strip {
                self.scan(data.chunk());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let kept = self.filter(&data);
            if !kept.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(kept))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.line.is_empty() && self.inner.is_end_stream())
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
    async fn totals_after(frames: &[&str], strip: bool) -> (super::super::Totals, String) {
        let log = UsageLog::build(
            &UsageConfig {
                enabled: true,
                ..UsageConfig::default()
            },
            None,
            None,
            None,
        )
        .unwrap()
        .unwrap();
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = frames
            .iter()
            .map(|f| Ok(Frame::data(Bytes::copy_from_slice(f.as_bytes()))))
            .collect();
        let inner = StreamBody::new(futures_util::stream::iter(frames));
        let body = UsageBody::new(inner, log.clone(), answered(), strip);
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let query = super::super::Query {
            from: 0,
            to: i64::MAX,
            client: None,
            by_client: false,
            by_model: false,
            by_day: false,
        };
        (log.query(query).await.unwrap().1, text)
    }

    #[tokio::test]
    async fn openai_usage_chunk_split_across_frames_is_read() {
        let (totals, _) = totals_after(
            &[
                "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
                "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_",
                "tokens\":9,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
            ],
            false,
        )
        .await;
        assert_eq!(
            (totals.requests, totals.input_tokens, totals.output_tokens),
            (1, 9, 3)
        );
    }

    #[tokio::test]
    async fn anthropic_start_and_delta_events_fold() {
        let (totals, _) = totals_after(&[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        ], false)
        .await;
        assert_eq!((totals.input_tokens, totals.output_tokens), (25, 15));
    }

    #[tokio::test]
    async fn a_stream_without_usage_is_one_request_of_zero_tokens() {
        let (totals, _) =
            totals_after(&["data: {\"choices\":[]}\n\n", "data: [DONE]\n\n"], false).await;
        assert_eq!((totals.requests, totals.input_tokens), (1, 0));
    }

    #[tokio::test]
    async fn strip_mode_takes_out_the_usage_chunk_and_keeps_the_rest() {
        let content =
            "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        let (totals, text) = totals_after(
            &[
                &content[..20],
                &content[20..],
                "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_",
                "tokens\":9,\"completion_tokens\":3}}\r\n\r\ndata: [DONE]\n\n",
            ],
            true,
        )
        .await;
        assert_eq!((totals.input_tokens, totals.output_tokens), (9, 3));
        assert_eq!(text, format!("{content}data: [DONE]\n\n"));
    }

    #[tokio::test]
    async fn strip_mode_passes_streams_without_usage_and_a_last_partial_line() {
        let (_, text) = totals_after(&["data: {\"choices\":[]}\n\n", "data: [DONE]"], true).await;
        assert_eq!(text, "data: {\"choices\":[]}\n\ndata: [DONE]");
    }
}
