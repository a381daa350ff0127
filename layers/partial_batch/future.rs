use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::error::BatchError;
use super::report::BatchReport;

type BoxedRun<Res> = Pin<Box<dyn Future<Output = Result<BatchReport<Res>, BatchError>> + Send>>;

/// The future of a [`PartialBatch`](super::PartialBatch) call: it drives the whole
/// batch when polled. Boxed once per batch (not per item), which costs nothing
/// measurable next to the items' own calls.
pub struct ResponseFuture<Res> {
    run: BoxedRun<Res>,
}

impl<Res> ResponseFuture<Res> {
    pub(crate) fn new(run: BoxedRun<Res>) -> Self {
        Self { run }
    }
}

impl<Res> Future for ResponseFuture<Res> {
    type Output = Result<BatchReport<Res>, BatchError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.run.as_mut().poll(cx)
    }
}

impl<Res> fmt::Debug for ResponseFuture<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
