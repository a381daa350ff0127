//! The layer, its service and future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::accountant::{Accountant, UsageRecord, PRIMARY_TIER};
use super::price::PriceTable;
use super::ReportUsage;

type OnRecord = Arc<dyn Fn(&UsageRecord) + Send + Sync>;

/// Counts the tokens and cost of every answer; see the [module docs](super).
#[derive(Clone)]
pub struct UsageLayer {
    accountant: Accountant,
    on_record: Option<OnRecord>,
}

impl UsageLayer {
    /// Count usage, priced with `prices`.
    pub fn new(prices: impl Into<Arc<PriceTable>>) -> Self {
        Self {
            accountant: Accountant::new(prices),
            on_record: None,
        }
    }

    /// Also hand each answer's [`UsageRecord`] to `record` (to store it, check a
    /// budget...). It runs on the call's task, before the answer is returned:
    /// keep it quick (send to a channel for slow work).
    #[must_use]
    pub fn on_record(mut self, record: impl Fn(&UsageRecord) + Send + Sync + 'static) -> Self {
        self.on_record = Some(Arc::new(record));
        self
    }

    /// The price table.
    pub fn prices(&self) -> &PriceTable {
        self.accountant.prices()
    }
}

impl fmt::Debug for UsageLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageLayer")
            .field("prices", self.accountant.prices())
            .field("on_record", &self.on_record.is_some())
            .finish()
    }
}

impl<S> Layer<S> for UsageLayer {
    type Service = Usage<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Usage {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of a [`UsageLayer`].
///
/// # Readiness
///
/// Ready when the inner service is; it adds no state of its own.
#[derive(Clone, Debug)]
pub struct Usage<S> {
    inner: S,
    layer: UsageLayer,
}

impl<S> Usage<S> {
    /// Wrap `inner`, pricing with `prices`.
    pub fn new(inner: S, prices: impl Into<Arc<PriceTable>>) -> Self {
        UsageLayer::new(prices).layer(inner)
    }

    /// A layer making this service.
    pub fn layer(prices: impl Into<Arc<PriceTable>>) -> UsageLayer {
        UsageLayer::new(prices)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Give back the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for Usage<S>
where
    S: Service<Request>,
    S::Response: ReportUsage,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = UsageFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        UsageFuture {
            inner: self.inner.call(request),
            layer: Some(self.layer.clone()),
        }
    }
}

pin_project! {
    /// The future of a [`Usage`] call.
    pub struct UsageFuture<F> {
        #[pin]
        inner: F,
        layer: Option<UsageLayer>,
    }
}

impl<F> fmt::Debug for UsageFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageFuture").finish_non_exhaustive()
    }
}

impl<F, Response, Error> Future for UsageFuture<F>
where
    F: Future<Output = Result<Response, Error>>,
    Response: ReportUsage,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(layer)) = (&mut result, this.layer.take()) {
            if let Some(report) = response.usage_report() {
                let tier: Arc<str> = response.usage_tier().map_or(PRIMARY_TIER.into(), Arc::from);
                let record = layer.accountant.account(report, tier);
                if let Some(cost) = record.cost {
                    response.attach_cost(cost);
                }
                if let Some(on_record) = &layer.on_record {
                    on_record(&record);
                }
            }
        }
        Poll::Ready(result)
    }
}
