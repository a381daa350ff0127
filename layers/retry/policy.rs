//! The [`tower::retry::Policy`] that decides from the shared classification.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::retry::budget::{Budget, TpsBudget};

use super::builder::Config;
use crate::classify::{Classify, FailureKind, Outcome};

/// State shared by every policy one layer made: settings, budget, jitter, counters.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) budget: Option<TpsBudget>,
    rng: Mutex<fastrand::Rng>,
    pub(crate) counters: Counters,
}

/// What the layer's policies did, since it was built.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        let budget = config
            .budget
            .map(|b| TpsBudget::new(b.ttl, b.min_per_sec, b.ratio));
        let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
        Self {
            config,
            budget,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            counters: Counters::default(),
        }
    }

    fn jittered_backoff(&self, attempts: u32) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        self.config.backoff.delay(attempts, &mut rng)
    }
}

/// A [`tower::retry::Policy`] driven by a classifier and a
/// [`FailurePolicy`](crate::classify::FailurePolicy); made by
/// [`RetryLayer`](super::RetryLayer).
///
/// tower's `Retry` clones its policy for every request: a clone starts a fresh
/// count of attempts and takes "now" as the moment the first attempt is sent (the
/// clone is made right after it is). The budget, the jitter source and the
/// counters are shared by all clones.
pub struct RetryPolicy<C> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) classifier: C,
    attempts: u32,
    first_sent: Instant,
}

impl<C> RetryPolicy<C> {
    pub(crate) fn new(shared: Arc<Shared>, classifier: C) -> Self {
        Self {
            shared,
            classifier,
            attempts: 0,
            first_sent: Instant::now(),
        }
    }

    /// The wait before the next attempt, or `None` to give up with this result.
    fn next_wait(&mut self, kind: &FailureKind) -> Option<Duration> {
        let config = &self.shared.config;
        let counters = &self.shared.counters;
        if !config.policy.is_retryable(kind) || self.attempts >= config.max_attempts {
            return None;
        }
        let wait = match kind.retry_after() {
            Some(asked) => asked.min(config.max_retry_after),
            None => self.shared.jittered_backoff(self.attempts),
        };
        if let Some(deadline) = config.deadline {
            if Instant::now() + wait > self.first_sent + deadline {
                tracing::debug!(retry = %config.name, kind = kind.name(), ?wait, "retry: past the deadline, giving up");
                return None;
            }
        }
        if let Some(budget) = &self.shared.budget {
            if !budget.withdraw() {
                counters.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("llm_retry_budget_exhausted_total", "retry" => config.name.clone())
                    .increment(1);
                tracing::debug!(retry = %config.name, kind = kind.name(), "retry: budget exhausted, giving up");
                return None;
            }
        }
        counters.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("llm_retry_attempts_total", "retry" => config.name.clone(), "kind" => kind.name())
            .increment(1);
        tracing::debug!(retry = %config.name, kind = kind.name(), attempt = self.attempts + 1, ?wait, "retry: retrying");
        Some(wait)
    }
}

impl<C: Clone> Clone for RetryPolicy<C> {
    fn clone(&self) -> Self {
        Self::new(self.shared.clone(), self.classifier.clone())
    }
}

impl<C> fmt::Debug for RetryPolicy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("name", &self.shared.config.name)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<C, Req, Res, Err> tower::retry::Policy<Req, Res, Err> for RetryPolicy<C>
where
    C: Classify<Res, Err>,
    Req: Clone,
{
    type Future = Sleep;

    fn retry(&mut self, _request: &mut Req, result: &mut Result<Res, Err>) -> Option<Sleep> {
        if self.attempts == 0 {
            // Every request the caller sent earns the budget its share, whatever
            // its outcome: during an outage the retries stay a fraction of it.
            self.shared
                .counters
                .requests
                .fetch_add(1, Ordering::Relaxed);
            if let Some(budget) = &self.shared.budget {
                budget.deposit();
            }
        }
        self.attempts = self.attempts.saturating_add(1);
        let wait = match self.classifier.classify(result) {
            Outcome::Success => return None,
            Outcome::Failure(kind) => self.next_wait(&kind)?,
        };
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}
