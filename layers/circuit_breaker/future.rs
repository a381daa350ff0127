use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::circuit::{Admission, Circuit, Verdict};
use super::CircuitOpen;
use crate::classify::{Classify, Outcome};
use crate::BoxError;

/// An admitted call's claim on its circuit. Dropping a probe's guard before the
/// call finished gives the probe slot back.
pub(crate) struct Guard<K> {
    circuit: Arc<Circuit<K>>,
    admission: Admission,
    started: Option<Instant>,
    finished: bool,
}

impl<K: Clone + fmt::Debug + Send + Sync + 'static> Guard<K> {
    pub(crate) fn new(
        circuit: Arc<Circuit<K>>,
        admission: Admission,
        started: Option<Instant>,
    ) -> Self {
        Self {
            circuit,
            admission,
            started,
            finished: false,
        }
    }

    #[inline]
    fn finish(&mut self, outcome: &Outcome) {
        self.finished = true;
        // The common case, kept small enough to inline: a success on a closed
        // circuit that times nothing.
        if let (Outcome::Success, Admission::Closed, None) =
            (outcome, &self.admission, self.started)
        {
            self.circuit.record_closed_success();
            return;
        }
        self.finish_slow(outcome);
    }

    #[inline(never)]
    fn finish_slow(&mut self, outcome: &Outcome) {
        let verdict = Verdict::of(outcome, self.circuit.config());
        let elapsed: Option<Duration> = self.started.map(|s| s.elapsed());
        self.circuit.record(&self.admission, verdict, elapsed);
    }
}

impl<K> Drop for Guard<K> {
    fn drop(&mut self) {
        if let (false, Admission::Probe(generation)) = (self.finished, &self.admission) {
            self.circuit.release_probe(*generation);
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F, C, K> {
        #[pin]
        kind: Kind<F>,
        guard: Option<Guard<K>>,
        classifier: C,
        // The call's `circuit_breaker` span (disabled unless a subscriber
        // wants DEBUG spans of this crate).
        span: tracing::Span,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { error: Option<CircuitOpen> },
    }
}

impl<F, C, K: Clone + fmt::Debug + Send + Sync + 'static> ResponseFuture<F, C, K> {
    pub(crate) fn called(future: F, guard: Guard<K>, classifier: C, span: tracing::Span) -> Self {
        Self {
            kind: Kind::Called { future },
            guard: Some(guard),
            classifier,
            span,
        }
    }

    pub(crate) fn rejected(error: CircuitOpen, classifier: C, span: tracing::Span) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
            guard: None,
            classifier,
            span,
        }
    }
}

impl<F, C, K> fmt::Debug for ResponseFuture<F, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, K, Res, Err> Future for ResponseFuture<F, C, K>
where
    F: Future<Output = Result<Res, Err>>,
    Err: Into<BoxError>,
    C: Classify<Res, Err>,
    K: Clone + fmt::Debug + Send + Sync + 'static,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => {
                let result = {
                    let _entered = this.span.enter();
                    ready!(future.poll(cx))
                };
                // The guard stays in place (its Arc is released when the future
                // is dropped): moving it out would copy it on the hot path.
                if let Some(guard) = this.guard.as_mut().filter(|g| !g.finished) {
                    let outcome = this.classifier.classify(&result);
                    if let Outcome::Failure(kind) = &outcome {
                        this.span.record("error.type", kind.name());
                    }
                    guard.finish(&outcome);
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => {
                let error = error.take().unwrap_or(CircuitOpen::new(Duration::ZERO));
                Poll::Ready(Err(Box::new(error)))
            }
        }
    }
}
