//! One tier's attempt: the primary's call (and its settling) and an alternate's,
//! classified and settled into an [`Attempted`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::ServiceExt;
use tracing::Instrument;

use super::builder::Config;
use super::{SettleResponse, Settlement};
use crate::classify::{classify_dyn_error, Classify, FailureKind, Outcome};
use crate::BoxError;

/// What one tier's attempt came to.
pub(super) enum Attempted<Out> {
    /// The tier answered.
    Answer(Out),
    /// The tier failed; `answer` is what it returned, converted, in case it is
    /// returned as is.
    Failed {
        kind: FailureKind,
        answer: Result<Out, BoxError>,
    },
    /// The classifier called an error a success: return it, no fallback.
    Return(Result<Out, BoxError>),
}

pub(super) type BoxAttempt<Out> = Pin<Box<dyn Future<Output = Attempted<Out>> + Send>>;

pin_project! {
    #[project = PrimaryProj]
    /// The primary's call, then the settling of its response.
    pub(super) enum Primary<F, SF> {
        Calling { #[pin] future: F },
        Settling { #[pin] future: SF },
        Done,
    }
}

impl<F, SF> Primary<F, SF> {
    pub(super) fn is_done(&self) -> bool {
        matches!(self, Primary::Done)
    }
}

/// Poll the primary until it has an outcome; `None` once it is done.
#[inline]
pub(super) fn poll_primary<F, Req, Res, Err, C, Settle>(
    mut primary: Pin<&mut Primary<F, Settle::Future>>,
    config: &Config<Req, Res, Err, C, Settle>,
    cx: &mut Context<'_>,
) -> Poll<Option<Attempted<Settle::Output>>>
where
    F: Future<Output = Result<Res, Err>>,
    Err: Into<BoxError>,
    C: Classify<Res, Err>,
    Settle: SettleResponse<Res>,
{
    loop {
        let attempted = match primary.as_mut().project() {
            PrimaryProj::Calling { future } => {
                match classify_and_settle(config, ready!(future.poll(cx))) {
                    AfterCall::Settle(future) => {
                        primary.set(Primary::Settling { future });
                        continue;
                    }
                    AfterCall::Done(attempted) => attempted,
                }
            }
            PrimaryProj::Settling { future } => after_settle(ready!(future.poll(cx))),
            PrimaryProj::Done => return Poll::Ready(None),
        };
        primary.set(Primary::Done);
        return Poll::Ready(Some(attempted));
    }
}

/// A call's result: a response to settle, or what the attempt came to.
pub(super) enum AfterCall<SF, Out> {
    Settle(SF),
    Done(Attempted<Out>),
}

/// Settle a result classified as `outcome`, or record it as a failure.
#[inline]
pub(super) fn after_call<Res, Err, Settle>(
    settle: &Settle,
    outcome: Outcome,
    result: Result<Res, Err>,
) -> AfterCall<Settle::Future, Settle::Output>
where
    Err: Into<BoxError>,
    Settle: SettleResponse<Res>,
{
    match outcome {
        Outcome::Success => match result {
            Ok(response) => match settle.try_settle(response) {
                Settlement::Now(settled) => AfterCall::Done(after_settle(settled)),
                Settlement::Wait(future) => AfterCall::Settle(future),
            },
            Err(error) => AfterCall::Done(Attempted::Return(Err(error.into()))),
        },
        Outcome::Failure(kind) => AfterCall::Done(Attempted::Failed {
            kind,
            answer: result
                .map(|response| settle.pass(response))
                .map_err(Into::into),
        }),
    }
}

/// Classify a tier's result, and settle it if it is a success.
#[inline]
pub(super) fn classify_and_settle<Req, Res, Err, C, Settle>(
    config: &Config<Req, Res, Err, C, Settle>,
    result: Result<Res, Err>,
) -> AfterCall<Settle::Future, Settle::Output>
where
    Err: Into<BoxError>,
    C: Classify<Res, Err>,
    Settle: SettleResponse<Res>,
{
    let outcome = config.classifier.classify(&result);
    after_call(&config.settle, outcome, result)
}

/// What a settled (or failed to settle) answer came to.
#[inline]
pub(super) fn after_settle<Out>(settled: Result<Out, BoxError>) -> Attempted<Out> {
    match settled {
        Ok(out) => Attempted::Answer(out),
        Err(error) => Attempted::Failed {
            kind: classify_dyn_error(&*error),
            answer: Err(error),
        },
    }
}

/// Call alternate `index` (1-based) with `request`, mapped for it.
pub(super) async fn run_alternate<Req, Res, Err, C, Settle>(
    config: Arc<Config<Req, Res, Err, C, Settle>>,
    index: usize,
    request: Req,
) -> Attempted<Settle::Output>
where
    Err: Into<BoxError>,
    C: Classify<Res, Err>,
    Settle: SettleResponse<Res>,
{
    let tier = &config.alternates[index - 1];
    let request = match &tier.map_request {
        Some(map) => map(request),
        None => request,
    };
    let span = tracing::debug_span!(
        "fallback_tier",
        llm.tier = %config.name(index),
        llm.tier.index = index,
        error.type = tracing::field::Empty,
    );
    let attempted = async {
        let result = tier.service.clone().oneshot(request).await;
        match classify_and_settle(&config, result) {
            AfterCall::Settle(future) => after_settle(future.await),
            AfterCall::Done(attempted) => attempted,
        }
    }
    .instrument(span.clone())
    .await;
    if let Attempted::Failed { kind, .. } = &attempted {
        span.record("error.type", kind.name());
    }
    attempted
}
