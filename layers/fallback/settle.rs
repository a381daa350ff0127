//! When a tier's response counts as an answer.

use std::future::{ready, Future, Ready};

use crate::BoxError;

/// Decides when a response that classified as a success counts as the tier's
/// answer, and turns it into the type the [`Fallback`](super::Fallback) returns.
///
/// [`Immediate`] (the default) takes every successful response as it is.
/// [`FirstEvent`](super::FirstEvent) waits for the first `data:` event of an
/// event stream, so a stream that fails before it starts falls back instead of
/// reaching the client.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot settle responses of type `{Res}`",
    label = "not a settle policy for this response type",
    note = "`Immediate` (the default) settles any response; `FirstEvent` only `http::Response<B>` whose body `B` is an `http_body::Body + Unpin`"
)]
pub trait SettleResponse<Res> {
    /// The response type the fallback service returns.
    type Output;
    /// Resolves once the response counts as an answer, or fails (the tier is then
    /// treated as failed, classified through the error's kind).
    type Future: Future<Output = Result<Self::Output, BoxError>>;

    /// Wait until a successful response counts as an answer.
    fn settle(&self, response: Res) -> Self::Future;

    /// Settle at once when no waiting is needed, else hand back the future of
    /// [`settle`](Self::settle).
    ///
    /// The default always returns [`Settlement::Wait`]. Override it when the
    /// answer is often known at once ([`Immediate`] always knows): the response
    /// then goes straight to the caller, without a future to store and poll.
    #[inline]
    fn try_settle(&self, response: Res) -> Settlement<Self::Output, Self::Future> {
        Settlement::Wait(self.settle(response))
    }

    /// Convert a response returned as is without settling it: a failure that is
    /// not worth a fallback, or the final responder's answer.
    fn pass(&self, response: Res) -> Self::Output;
}

/// What [`SettleResponse::try_settle`] came to.
#[derive(Debug)]
pub enum Settlement<Out, F> {
    /// Settled at once: the answer, or the error that fails the tier.
    Now(Result<Out, BoxError>),
    /// Not yet: poll this future.
    Wait(F),
}

/// Every successful response is an answer at once; the response type is unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct Immediate;

impl<Res> SettleResponse<Res> for Immediate {
    type Output = Res;
    type Future = Ready<Result<Res, BoxError>>;

    #[inline]
    fn settle(&self, response: Res) -> Self::Future {
        ready(Ok(response))
    }

    #[inline]
    fn try_settle(&self, response: Res) -> Settlement<Res, Self::Future> {
        Settlement::Now(Ok(response))
    }

    #[inline]
    fn pass(&self, response: Res) -> Res {
        response
    }
}
