//! Streamed answers: a [`ChatStream`] of provider-neutral [`ChatDelta`]s.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use super::error::ClientError;
use super::span::{record_answer, record_completion, record_error};
use super::sse::{SseEvent, SseParser};
use super::tools::{ToolCallAssembler, ToolCallDelta};
use super::transport::Transport;
use super::types::{ChatResponse, FinishReason, Usage};
use crate::classify::{ClassifyResponse, FailureKind, Outcome};
use crate::fallback::{Degraded, MarkDegraded};

/// Body chunks read in one poll of a [`ChatStream`] before it yields.
const CHUNKS_PER_POLL: usize = 64;

/// One piece of a streamed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChatDelta {
    /// More of the answer's text.
    Text(String),
    /// The model stopped, for this reason.
    Finish(FinishReason),
    /// Tokens used so far (the last one of a stream is the total).
    Usage(Usage),
    /// A fragment of a tool call: its id and name first, then pieces of its
    /// arguments. [`ToolCallAssembler`] makes whole calls of them.
    ToolCall(ToolCallDelta),
}

/// A streamed answer: a [`Stream`] of `Result<ChatDelta, ClientError>`.
///
/// The stream ends (`None`) only after the provider's terminal event (`data: [DONE]`
/// or a chunk with a `finish_reason` for OpenAI-compatible servers, `message_stop`
/// for Anthropic). A last event that is complete but lacks its closing blank line
/// when the body ends still counts. Each of these ends the stream with one `Err`
/// instead, and a stream never ends silently short:
///
/// - a body that ends (cleanly or not) before the terminal event:
///   [`InvalidResponse`](FailureKind::InvalidResponse), not retried by default,
///   since part of the answer may have been read, and counted against a circuit
///   by a breaker that sees it (one around a non-streaming client does);
/// - a connection that breaks: [`Connect`](FailureKind::Connect);
/// - a silence longer than the client's stream idle timeout:
///   [`Timeout`](FailureKind::Timeout);
/// - a line that is not a valid event, or an event larger than the client's
///   `max_event_bytes`: `InvalidResponse`;
/// - an error event from the provider: its kind;
/// - an Anthropic stream that opens more than 1,024 `tool_use` blocks:
///   `InvalidResponse`.
///
/// After an error the stream is over.
///
/// Use [`next_delta`](Self::next_delta) or any `StreamExt` to read it, or
/// [`into_response`](Self::into_response) to wait for the whole answer.
pub struct ChatStream {
    provider: String,
    id: Option<String>,
    model: String,
    deltas: VecDeque<ChatDelta>,
    source: Option<Source>,
    degraded: Option<Degraded>,
    /// The call's chat span, open until the stream ends: its usage and any
    /// error are recorded on it.
    span: tracing::Span,
    /// The answer's text so far, for the span (only when the user opted in;
    /// at most [`MAX_TRACED_TEXT`] bytes).
    traced_text: Option<String>,
}

/// The most answer text a stream keeps for its span when content tracing is on.
const MAX_TRACED_TEXT: usize = 64 * 1024;

/// Where a stream's events come from, until its terminal event.
struct Source {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: SseParser,
    decoder: Box<dyn EventDecoder>,
    transport: Transport,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    body_ended: bool,
    complete: bool,
}

/// What a provider's decoder sees and changes for each event.
pub(crate) struct StreamState<'a> {
    pub(crate) id: &'a mut Option<String>,
    pub(crate) model: &'a mut String,
    pub(crate) deltas: &'a mut VecDeque<ChatDelta>,
    /// Set on the provider's terminal event: nothing after it is read.
    pub(crate) done: bool,
    /// Set once the answer is whole though more may follow (an OpenAI-compatible
    /// chunk with a `finish_reason`, before the usage chunk and `[DONE]` that
    /// some servers never send): the body may end after it.
    pub(crate) complete: bool,
}

/// Turns one provider's events into deltas.
pub(crate) trait EventDecoder: Send + 'static {
    fn on_event(
        &mut self,
        event: SseEvent,
        state: &mut StreamState<'_>,
        transport: &Transport,
    ) -> Result<(), ClientError>;

    /// What the terminal event is called, for the error when it never comes.
    fn terminal_event(&self) -> &'static str;
}

impl ChatStream {
    pub(crate) fn from_http(
        response: reqwest::Response,
        transport: Transport,
        model: String,
        decoder: Box<dyn EventDecoder>,
    ) -> Self {
        let idle = transport
            .stream_idle_timeout()
            .map(|after| (after, Box::pin(tokio::time::sleep(after))));
        Self {
            provider: transport.provider().to_owned(),
            id: None,
            model,
            deltas: VecDeque::new(),
            source: Some(Source {
                body: Box::pin(response.bytes_stream()),
                parser: SseParser::new(transport.max_event_bytes()),
                decoder,
                transport,
                idle,
                body_ended: false,
                complete: false,
            }),
            degraded: None,
            span: tracing::Span::none(),
            traced_text: None,
        }
    }

    /// A finished stream that replays `response`: its text, tool calls (one
    /// whole fragment each), finish reason and usage. For templates and
    /// fallbacks that must answer with a stream.
    pub fn from_response(response: ChatResponse) -> Self {
        let mut deltas = VecDeque::new();
        if !response.content.is_empty() {
            deltas.push_back(ChatDelta::Text(response.content));
        }
        for (index, call) in response.tool_calls.into_iter().enumerate() {
            deltas.push_back(ChatDelta::ToolCall(ToolCallDelta::new(
                u32::try_from(index).unwrap_or(u32::MAX),
                Some(call.id),
                Some(call.name),
                call.arguments,
            )));
        }
        deltas.extend(response.finish_reason.map(ChatDelta::Finish));
        deltas.extend(response.usage.map(ChatDelta::Usage));
        Self {
            provider: response.provider,
            id: response.id,
            model: response.model,
            deltas,
            source: None,
            degraded: response.degraded,
            span: tracing::Span::none(),
            traced_text: None,
        }
    }

    /// The provider that answers, as named by the client.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The model that answers: the provider's report once one arrived, before that
    /// the model that was asked.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The provider's id for the answer, once it arrived.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The next delta; `None` after the terminal event or after an error.
    pub async fn next_delta(&mut self) -> Option<Result<ChatDelta, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Read the whole stream into one [`ChatResponse`], or its first error.
    ///
    /// Tool call fragments are assembled into whole calls by a
    /// [`ToolCallAssembler`] with its default limits: more calls or argument
    /// bytes than those fail with [`InvalidResponse`](FailureKind::InvalidResponse).
    pub async fn into_response(mut self) -> Result<ChatResponse, ClientError> {
        let mut content = String::new();
        let (mut finish_reason, mut usage) = (None, None);
        let mut calls = ToolCallAssembler::default();
        while let Some(delta) = self.next_delta().await {
            match delta? {
                ChatDelta::Text(text) => content.push_str(&text),
                ChatDelta::Finish(reason) => finish_reason = Some(reason),
                ChatDelta::Usage(used) => usage = Some(used),
                ChatDelta::ToolCall(fragment) => calls
                    .push(&fragment)
                    .map_err(|e| e.into_client_error(&self.provider))?,
            }
        }
        let tool_calls = calls
            .finish()
            .map_err(|e| e.into_client_error(&self.provider))?;
        let mut response = ChatResponse::new(self.provider, self.model, content);
        response.tool_calls = tool_calls;
        response.id = self.id;
        response.finish_reason = finish_reason;
        response.usage = usage;
        response.degraded = self.degraded;
        Ok(response)
    }

    /// Record the rest of the call on `span` as the stream goes (`content`:
    /// the answer's text too).
    pub(crate) fn trace_in(&mut self, span: tracing::Span, content: bool) {
        self.span = span;
        self.traced_text = content.then(String::new);
    }

    /// Record what the span wants of a delta read.
    fn trace_delta(&mut self, delta: &ChatDelta) {
        match (delta, self.traced_text.as_mut()) {
            (ChatDelta::Usage(usage), _) => {
                record_answer(&self.span, &self.model, Some(*usage));
            }
            (ChatDelta::Text(text), Some(traced)) => {
                let room = MAX_TRACED_TEXT.saturating_sub(traced.len());
                let mut end = text.len().min(room);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                traced.push_str(&text[..end]);
            }
            _ => {}
        }
    }

    /// The stream ended whole: its span closes with the answer's model (and
    /// text, when opted in).
    fn trace_end(&mut self) {
        if self.span.is_none() {
            return;
        }
        self.span
            .record("gen_ai.response.model", self.model.as_str());
        if let Some(text) = self.traced_text.take() {
            record_completion(&self.span, &text);
        }
        self.span = tracing::Span::none();
    }

    fn fail(&mut self, error: ClientError) -> Poll<Option<Result<ChatDelta, ClientError>>> {
        self.source = None;
        self.deltas.clear();
        record_error(&self.span, error.kind());
        self.span = tracing::Span::none();
        tracing::debug!(provider = %self.provider, kind = %error.kind(), "chat stream failed");
        Poll::Ready(Some(Err(error)))
    }
}

/// A fallback marks a degraded stream (one a lower tier opened), so a chain of
/// [`Streaming`](super::Streaming) clients needs no wrapper; the marker follows
/// the stream into [`into_response`](ChatStream::into_response).
impl MarkDegraded for ChatStream {
    fn mark_degraded(&mut self, marker: Degraded) {
        self.degraded = Some(marker);
    }

    fn degraded(&self) -> Option<&Degraded> {
        self.degraded.as_ref()
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatDelta, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Chunks read in this poll: a body that is always ready with chunks that
        // yield nothing (empty ones, comments) must not hold the thread.
        let mut chunks = 0;
        loop {
            if let Some(delta) = this.deltas.pop_front() {
                this.trace_delta(&delta);
                return Poll::Ready(Some(Ok(delta)));
            }
            let Some(source) = this.source.as_mut() else {
                this.trace_end();
                return Poll::Ready(None);
            };
            if let Some(event) = source.parser.next_event() {
                let mut state = StreamState {
                    id: &mut this.id,
                    model: &mut this.model,
                    deltas: &mut this.deltas,
                    done: false,
                    complete: false,
                };
                let result = source
                    .decoder
                    .on_event(event, &mut state, &source.transport);
                let done = state.done;
                source.complete |= state.complete;
                if let Err(error) = result {
                    return this.fail(error);
                }
                if done {
                    // Whatever follows the terminal event is not read.
                    this.source = None;
                }
                continue;
            }
            if source.body_ended {
                if source.complete {
                    this.source = None;
                    continue;
                }
                // Not a connection error: the connection did what HTTP asks; the
                // answer is what is broken.
                let message = format!(
                    "the stream ended before its terminal event ({})",
                    source.decoder.terminal_event()
                );
                let error = ClientError::new(FailureKind::InvalidResponse, &this.provider, message);
                return this.fail(error);
            }
            match source.body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    chunks += 1;
                    if let Some((after, sleep)) = source.idle.as_mut() {
                        sleep.as_mut().reset(Instant::now() + *after);
                    }
                    if let Err(malformed) = source.parser.feed(&chunk) {
                        let error = ClientError::new(
                            FailureKind::InvalidResponse,
                            &this.provider,
                            malformed.to_string(),
                        );
                        return this.fail(error);
                    }
                    if chunks >= CHUNKS_PER_POLL {
                        // Whatever the chunks held is parsed; the next poll goes on.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Some(Err(broken))) => {
                    let error = source.transport.transport_error(broken);
                    return this.fail(error);
                }
                Poll::Ready(None) => {
                    source.parser.finish();
                    source.body_ended = true;
                }
                Poll::Pending => {
                    if let Some((after, sleep)) = source.idle.as_mut() {
                        if sleep.as_mut().poll(cx).is_ready() {
                            let message = format!("the stream was silent for {after:?}");
                            let error =
                                ClientError::new(FailureKind::Timeout, &this.provider, message);
                            return this.fail(error);
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("id", &self.id)
            .field("pending_deltas", &self.deltas.len())
            .field("open", &self.source.is_some())
            .field("degraded", &self.degraded)
            .finish()
    }
}

/// Opening a stream is a success; its failures arrive as its items.
impl ClassifyResponse for ChatStream {
    fn classify_response(&self) -> Outcome {
        Outcome::Success
    }
}

/// Parse one event's JSON, or fail the stream with [`FailureKind::InvalidResponse`].
pub(crate) fn parse_event<T: serde::de::DeserializeOwned>(
    data: &str,
    transport: &Transport,
) -> Result<T, ClientError> {
    serde_json::from_str(data).map_err(|e| {
        ClientError::new(
            FailureKind::InvalidResponse,
            transport.provider(),
            format!("an event's data is not the expected JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_body_always_ready_with_empty_chunks_yields() {
        let transport = super::super::transport::CommonOptions::new("test", "http://127.0.0.1:9")
            .build(&|base| base.to_owned(), http::header::AUTHORIZATION, "")
            .unwrap();
        let endless = futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::new()));
        let response = http::Response::new(reqwest::Body::wrap_stream(endless));
        let decoder = Box::new(super::super::openai::test_decoder());
        let mut stream = ChatStream::from_http(response.into(), transport, "m".to_owned(), decoder);
        let wakes = std::sync::Arc::new(CountWakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut stream).poll_next(&mut cx).is_pending());
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn from_response_replays_and_collects_the_same() {
        let mut answer = ChatResponse::new("template", "none", "Try again later.");
        answer.usage = Some(Usage {
            input_tokens: 1,
            output_tokens: 2,
        });
        let mut stream = ChatStream::from_response(answer.clone());
        assert_eq!(
            stream.next_delta().await.unwrap().unwrap(),
            ChatDelta::Text("Try again later.".into())
        );
        let rest = ChatStream::from_response(answer.clone());
        assert_eq!(rest.into_response().await.unwrap(), answer);
    }
}
