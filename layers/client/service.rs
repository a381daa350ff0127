//! The response future both clients return, and the streaming service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_service::Service;
use tracing::Instrument;

use super::error::ClientError;
use super::span::{chat_span, record_answer, record_completion, record_error};
use super::stream::ChatStream;
use super::transport::Transport;
use super::types::{ChatRequest, ChatResponse};
use crate::classify::FailureKind;

/// The future of one client call.
///
/// Boxed: the call is a network round trip, so the allocation costs nothing
/// measurable, and the type stays nameable.
pub struct ResponseFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<T, ClientError>> + Send + 'static>>,
}

impl<T> ResponseFuture<T> {
    pub(crate) fn new(
        future: impl Future<Output = Result<T, ClientError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(future),
        }
    }

    pub(crate) fn failed(error: ClientError) -> Self
    where
        T: Send + 'static,
    {
        Self::new(std::future::ready(Err(error)))
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Run one call under the client's timeout, in a span, counting its outcome.
///
/// The span and the counter name the provider and model, never the prompt.
pub(crate) fn run<T: Traced + Send + 'static>(
    transport: &Transport,
    request: &ChatRequest,
    model: &str,
    streaming: bool,
    call: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> ResponseFuture<T> {
    let provider = transport.provider().to_owned();
    let timeout = transport.timeout();
    let span = chat_span(&provider, model, streaming);
    let trace_content = transport.trace_content();
    if trace_content {
        let prompt = serde_json::to_string(&request.messages).unwrap_or_default();
        tracing::info!(parent: &span, gen_ai.prompt = %prompt, "gen_ai.content.prompt");
    }
    let record_on = span.clone();
    ResponseFuture::new(
        async move {
            let result = match timeout {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(result) => result,
                    Err(_) => Err(ClientError::new(
                        FailureKind::Timeout,
                        &provider,
                        format!("no answer within {limit:?}"),
                    )),
                },
                None => call.await,
            };
            let outcome = match &result {
                Ok(_) => "success",
                Err(error) => {
                    tracing::debug!(kind = %error.kind(), status = ?error.status(), "chat call failed");
                    record_error(&record_on, error.kind());
                    error.kind().name()
                }
            };
            metrics::counter!(
                "llm_client_requests_total",
                "provider" => provider,
                "outcome" => outcome
            )
            .increment(1);
            result.map(|mut answer| {
                answer.traced(record_on, trace_content);
                answer
            })
        }
        .instrument(span),
    )
}

/// What a client call answers with, as its chat span sees it.
pub(crate) trait Traced {
    /// The call succeeded with `self`: record what is known now, or keep the
    /// span to record the rest later (a stream, at its end). `content`: the
    /// user opted in to the answer's text in the span.
    fn traced(&mut self, span: tracing::Span, content: bool);
}

impl Traced for ChatResponse {
    fn traced(&mut self, span: tracing::Span, content: bool) {
        record_answer(&span, &self.model, self.usage);
        if content {
            record_completion(&span, &self.content);
        }
    }
}

impl Traced for ChatStream {
    fn traced(&mut self, span: tracing::Span, content: bool) {
        self.trace_in(span, content);
    }
}

/// A client that can answer with a [`ChatStream`]. Implemented by
/// [`OpenAiClient`](super::OpenAiClient) and
/// [`AnthropicClient`](super::AnthropicClient); [`Streaming`] turns it into a
/// `Service<ChatRequest, Response = ChatStream>`.
pub trait StreamChat {
    /// Send `request` with streaming on. The future resolves once the provider
    /// has answered with a success status (errors before that, such as a 429 or
    /// a timeout, are its `Err`); the answer then arrives through the stream.
    fn stream_chat(&self, request: ChatRequest) -> ResponseFuture<ChatStream>;
}

/// The streaming form of a client: `Service<ChatRequest, Response = ChatStream>`.
///
/// Made by `OpenAiClient::streaming` or `AnthropicClient::streaming`. The call's
/// future resolves when the answer's headers arrived with a success status; every
/// error up to then (status, provider error body, timeout, connection) is the
/// future's `Err` and so is seen by the layers wrapped around this service. Errors
/// after that arrive inside the [`ChatStream`].
#[derive(Clone, Debug)]
pub struct Streaming<C> {
    client: C,
}

impl<C> Streaming<C> {
    /// The streaming form of `client`.
    pub const fn new(client: C) -> Self {
        Self { client }
    }

    /// The client.
    pub fn get_ref(&self) -> &C {
        &self.client
    }

    /// The client, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.client
    }

    /// Give back the client.
    pub fn into_inner(self) -> C {
        self.client
    }
}

impl<C: StreamChat> Service<ChatRequest> for Streaming<C> {
    type Response = ChatStream;
    type Error = ClientError;
    type Future = ResponseFuture<ChatStream>;

    /// Always ready: the HTTP client pools connections on its own.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        self.client.stream_chat(request)
    }
}
