use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tracing::Instrument;

use super::builder::Config;
use super::flow;
use super::policy::{EscalationPolicy, Verdict};
use super::snapshot::Adapter;
use crate::BoxError;

pub(crate) type BoxFuture<Res> = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

pin_project! {
    /// Response future of [`Escalation`](super::Escalation).
    ///
    /// Calls that need no human run the inner future unboxed and review its response
    /// in place; only an escalation or a resume switches to a boxed continuation.
    pub struct ResponseFuture<F, Res, P, A, Req> {
        #[pin]
        state: State<F, Res>,
        review: Option<Review<P, A>>,
        _req: PhantomData<fn(Req)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Res> {
        Called { #[pin] future: F },
        Escalating { future: BoxFuture<Res> },
    }
}

/// What the response review needs: the layer's config and the request's snapshot
/// and fingerprint.
pub(crate) struct Review<P, A> {
    pub(crate) config: Arc<Config<P, A>>,
    pub(crate) request: flow::Reviewed,
}

impl<F, Res, P, A, Req> ResponseFuture<F, Res, P, A, Req> {
    pub(crate) fn called(future: F, review: Option<Review<P, A>>) -> Self {
        Self {
            state: State::Called { future },
            review,
            _req: PhantomData,
        }
    }

    pub(crate) fn escalating(future: BoxFuture<Res>) -> Self {
        Self {
            state: State::Escalating { future },
            review: None,
            _req: PhantomData,
        }
    }
}

impl<F, E, Res, P, A, Req: 'static> Future for ResponseFuture<F, Res, P, A, Req>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    Res: Send + 'static,
    P: EscalationPolicy<Req, Res> + Send + Sync + 'static,
    A: Adapter<Req, Res> + Send + Sync + 'static,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let Some(review) = this.review.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    match review.config.policy.check_response(&response) {
                        Verdict::Proceed => return Poll::Ready(Ok(response)),
                        Verdict::Escalate { reason } => {
                            let future = Box::pin(
                                flow::escalate_response(
                                    review.config,
                                    review.request,
                                    response,
                                    reason,
                                )
                                .instrument(flow::span("response")),
                            );
                            this.state.set(State::Escalating { future });
                        }
                    }
                }
                StateProj::Escalating { future } => return future.as_mut().poll(cx),
            }
        }
    }
}
