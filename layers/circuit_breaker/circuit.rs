//! The state machine of one circuit.
//!
//! The closed path is one atomic load to admit a call and a few relaxed atomic
//! updates to record its outcome. Every transition (rare) takes the circuit's
//! mutex, re-checks the state under it, and bumps `generation`, so that outcomes
//! of calls admitted before a transition cannot drive the state after it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::builder::Config;
use super::event::{CircuitEvent, CircuitSnapshot, CircuitState, TransitionCause};
use super::window::{RollingWindow, FAILED, SLOW};
use super::CircuitOpen;
use crate::classify::Outcome;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

const NOT_FORCED: u8 = 0;
const FORCED_OPEN: u8 = 1;
const FORCED_CLOSED: u8 = 2;

/// What every circuit of one layer shares.
#[derive(Debug)]
pub(crate) struct Shared<K> {
    pub(crate) config: Config,
    pub(crate) events: broadcast::Sender<CircuitEvent<K>>,
    pub(crate) metrics_only: AtomicBool,
    /// Count every call's outcome in `Counters::calls` (off unless a shared-state
    /// backend asks: it costs an atomic add per call).
    pub(crate) count_calls: AtomicBool,
}

/// Counters kept off the success path: a success costs no atomic read-modify-write.
#[derive(Debug)]
struct Counters {
    /// Calls whose outcome counted (success or failure), while `count_calls` is on.
    calls: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
}

/// State only changed under the mutex.
#[derive(Debug)]
struct Transitions {
    trips: u32,
    probes_in_flight: u32,
    probe_successes: u32,
    rng: fastrand::Rng,
}

/// How the caller's call was admitted.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A normal call while closed.
    Closed,
    /// A probe while half-open, of this generation.
    Probe(u64),
    /// Let through only because the layer is in metrics-only mode.
    Passthrough,
}

impl Admission {
    /// The circuit's state as this call saw it, for its span.
    pub(crate) fn state_name(&self) -> &'static str {
        match self {
            Admission::Closed => "closed",
            Admission::Probe(_) => "half_open",
            Admission::Passthrough => "passthrough",
        }
    }
}

/// One circuit.
#[derive(Debug)]
pub(crate) struct Circuit<K> {
    pub(crate) key: Option<K>,
    shared: Arc<Shared<K>>,
    epoch: Instant,
    state: AtomicU8,
    forced: AtomicU8,
    generation: AtomicU64,
    open_until_nanos: AtomicU64,
    consecutive: AtomicU32,
    window: Option<RollingWindow>,
    /// Outcomes need timing: a slow-call policy or a time window.
    needs_clock: bool,
    counters: Counters,
    transitions: Mutex<Transitions>,
}

/// What a finished call tells the circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure {
        retry_after: Option<Duration>,
    },
    /// A failure that says nothing about the upstream's health (a caller bug).
    Neutral,
}

impl Verdict {
    pub(crate) fn of(outcome: &Outcome, config: &Config) -> Self {
        match outcome {
            Outcome::Success => Verdict::Success,
            Outcome::Failure(kind) if config.policy.counts_against_circuit(kind) => {
                Verdict::Failure {
                    retry_after: kind.retry_after(),
                }
            }
            Outcome::Failure(_) => Verdict::Neutral,
        }
    }
}

impl<K> Circuit<K> {
    fn lock(&self) -> MutexGuard<'_, Transitions> {
        // A panic elsewhere never leaves these counters half-updated in a way that
        // matters more than refusing service, so recover from poisoning.
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A probe future dropped before its call finished gives its slot back.
    pub(crate) fn release_probe(&self, generation: u64) {
        let mut t = self.lock();
        if self.generation.load(Ordering::Acquire) == generation {
            t.probes_in_flight = t.probes_in_flight.saturating_sub(1);
        }
    }
}

impl<K: Clone + std::fmt::Debug + Send + Sync + 'static> Circuit<K> {
    pub(crate) fn new(key: Option<K>, shared: Arc<Shared<K>>) -> Self {
        let config = &shared.config;
        let window = (config.failure_rate.is_some() || config.slow_call.is_some())
            .then(|| RollingWindow::new(config.window));
        let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
        let needs_clock =
            config.slow_call.is_some() || window.as_ref().is_some_and(RollingWindow::needs_clock);
        Circuit {
            key,
            epoch: Instant::now(),
            state: AtomicU8::new(CLOSED),
            forced: AtomicU8::new(NOT_FORCED),
            generation: AtomicU64::new(0),
            open_until_nanos: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            window,
            needs_clock,
            counters: Counters {
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            },
            transitions: Mutex::new(Transitions {
                trips: 0,
                probes_in_flight: 0,
                probe_successes: 0,
                rng: fastrand::Rng::with_seed(seed),
            }),
            shared,
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Whether outcomes need timing (slow-call policy or a time window).
    #[inline]
    pub(crate) fn needs_clock(&self) -> bool {
        self.needs_clock
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Admit a call, or say how long to wait. Never blocks.
    #[inline]
    pub(crate) fn admit(&self) -> Result<Admission, CircuitOpen> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(Admission::Closed);
        }
        self.admit_slow()
    }

    #[cold]
    fn admit_slow(&self) -> Result<Admission, CircuitOpen> {
        let now = Instant::now();
        let mut t = self.lock();
        let decision = match self.state.load(Ordering::Acquire) {
            CLOSED => return Ok(Admission::Closed),
            OPEN => {
                let until = self.open_until_nanos.load(Ordering::Acquire);
                let now_nanos = self.nanos_since_epoch(now);
                if now_nanos < until || self.forced.load(Ordering::Acquire) == FORCED_OPEN {
                    Err(CircuitOpen::new(self.open_retry_after(now_nanos)))
                } else {
                    self.set_state(&mut t, HALF_OPEN, TransitionCause::CooldownElapsed, None);
                    self.take_probe(&mut t)
                }
            }
            _ => self.take_probe(&mut t),
        };
        drop(t);
        decision.or_else(|open| {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            if self.shared.metrics_only.load(Ordering::Relaxed) {
                Ok(Admission::Passthrough)
            } else {
                metrics::counter!("llm_circuit_rejected_total", "circuit" => self.config().name.clone())
                    .increment(1);
                Err(open)
            }
        })
    }

    fn take_probe(&self, t: &mut Transitions) -> Result<Admission, CircuitOpen> {
        if t.probes_in_flight < self.config().probe_permits {
            t.probes_in_flight += 1;
            Ok(Admission::Probe(self.generation.load(Ordering::Acquire)))
        } else {
            // Probes are in flight: fail fast rather than park the caller.
            Err(CircuitOpen::new(Duration::ZERO))
        }
    }

    /// Record the outcome of an admitted call.
    pub(crate) fn record(
        &self,
        admission: &Admission,
        verdict: Verdict,
        elapsed: Option<Duration>,
    ) {
        let slow = match (self.config().slow_call, elapsed) {
            (Some((_, threshold)), Some(elapsed)) => elapsed >= threshold,
            _ => false,
        };
        if let Verdict::Failure { .. } = verdict {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        if verdict != Verdict::Neutral && self.shared.count_calls.load(Ordering::Relaxed) {
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
        }
        match admission {
            Admission::Closed => self.record_closed(verdict, slow),
            Admission::Probe(generation) => self.record_probe(*generation, verdict, slow),
            Admission::Passthrough => {}
        }
    }

    /// A success while closed, without timing: reset the failure streak (a load,
    /// and a store only when there was a streak), and feed the window if any.
    #[inline]
    pub(crate) fn record_closed_success(&self) {
        if self.shared.count_calls.load(Ordering::Relaxed) {
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
        }
        if self.window.is_some() {
            return self.record_closed(Verdict::Success, false);
        }
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    fn record_closed(&self, verdict: Verdict, slow: bool) {
        let failed = matches!(verdict, Verdict::Failure { .. });
        if verdict == Verdict::Success && self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        let consecutive = if failed {
            self.consecutive.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let config = self.config();
        let mut cause = None;
        if config
            .consecutive_failures
            .is_some_and(|n| consecutive >= n)
        {
            cause = Some(TransitionCause::ConsecutiveFailures);
        }
        if let (Some(window), false) = (&self.window, verdict == Verdict::Neutral) {
            let flags = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
            let now = if window.needs_clock() {
                self.nanos_since_epoch(Instant::now())
            } else {
                0
            };
            let totals = window.record(flags, now);
            let reached = |count: u32, rate: f64| {
                totals.calls >= config.minimum_calls
                    && f64::from(count) >= rate * f64::from(totals.calls)
            };
            if cause.is_none()
                && failed
                && config
                    .failure_rate
                    .is_some_and(|r| reached(totals.failures, r))
            {
                cause = Some(TransitionCause::FailureRate);
            }
            if cause.is_none()
                && slow
                && config
                    .slow_call
                    .is_some_and(|(r, _)| reached(totals.slow, r))
            {
                cause = Some(TransitionCause::SlowCallRate);
            }
        }
        if let Some(cause) = cause {
            let retry_after = match verdict {
                Verdict::Failure { retry_after } => retry_after,
                _ => None,
            };
            self.trip(CLOSED, cause, retry_after);
        }
    }

    fn record_probe(&self, generation: u64, verdict: Verdict, slow: bool) {
        let mut t = self.lock();
        if self.generation.load(Ordering::Acquire) != generation {
            return; // a transition happened since; this probe's slot was reset with it
        }
        t.probes_in_flight = t.probes_in_flight.saturating_sub(1);
        let slow_trips = slow && self.config().slow_call.is_some();
        match verdict {
            Verdict::Failure { retry_after } => {
                self.open(&mut t, TransitionCause::ProbeFailed, retry_after);
            }
            Verdict::Success if slow_trips => {
                self.open(&mut t, TransitionCause::SlowCallRate, None);
            }
            Verdict::Success => {
                t.probe_successes += 1;
                if t.probe_successes >= self.config().probe_successes {
                    t.trips = 0;
                    self.consecutive.store(0, Ordering::Relaxed);
                    if let Some(window) = &self.window {
                        window.clear();
                    }
                    self.set_state(&mut t, CLOSED, TransitionCause::ProbesSucceeded, None);
                }
            }
            Verdict::Neutral => {}
        }
    }

    fn trip(&self, expected: u8, cause: TransitionCause, retry_after: Option<Duration>) {
        let mut t = self.lock();
        if self.state.load(Ordering::Acquire) != expected
            || self.forced.load(Ordering::Acquire) == FORCED_CLOSED
        {
            return;
        }
        self.open(&mut t, cause, retry_after);
    }

    /// Open for the (growing, jittered) cooldown, or longer if the upstream said so.
    fn open(&self, t: &mut Transitions, cause: TransitionCause, retry_after: Option<Duration>) {
        let c = self.config();
        let grown = c.cooldown.as_secs_f64() * c.backoff_multiplier.powi(t.trips.min(64) as i32);
        let capped = grown.min(c.max_cooldown.as_secs_f64());
        let jittered = capped * (1.0 + c.jitter * t.rng.f64());
        let mut open_for = Duration::try_from_secs_f64(jittered).unwrap_or(c.max_cooldown);
        if let Some(wait) = retry_after {
            open_for = open_for.max(wait.min(c.max_retry_after));
        }
        t.trips = t.trips.saturating_add(1);
        self.open_for(t, open_for, cause);
    }

    fn open_for(&self, t: &mut Transitions, open_for: Duration, cause: TransitionCause) {
        let until = self
            .nanos_since_epoch(Instant::now())
            .saturating_add(u64::try_from(open_for.as_nanos()).unwrap_or(u64::MAX));
        self.open_until_nanos.store(until, Ordering::Release);
        self.set_state(t, OPEN, cause, Some(open_for));
    }

    fn set_state(
        &self,
        t: &mut Transitions,
        to: u8,
        cause: TransitionCause,
        open_for: Option<Duration>,
    ) {
        let from = self.state.swap(to, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
        t.probes_in_flight = 0;
        t.probe_successes = 0;
        let (from, to) = (CircuitState::from_u8(from), CircuitState::from_u8(to));
        let name = &self.config().name;
        match to {
            CircuitState::Open => {
                tracing::warn!(circuit = %name, key = ?self.key, %from, ?cause, ?open_for, "circuit opened")
            }
            _ => {
                tracing::info!(circuit = %name, key = ?self.key, %from, %to, ?cause, "circuit state changed")
            }
        }
        metrics::counter!("llm_circuit_transitions_total", "circuit" => name.clone(), "to" => to.name())
            .increment(1);
        // No receivers is fine: nobody subscribed.
        let _ = self.shared.events.send(CircuitEvent {
            name: name.clone(),
            key: self.key.clone(),
            from,
            to,
            cause,
            open_for,
        });
    }

    pub(crate) fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether dropping this circuit loses nothing: closed, not forced, no
    /// failure streak, no re-trips, and no failure or slow call in its window.
    /// Only such circuits are evicted when `max_keys` is reached.
    pub(crate) fn is_pristine(&self) -> bool {
        if self.state() != CircuitState::Closed
            || self.forced.load(Ordering::Acquire) != NOT_FORCED
            || self.consecutive.load(Ordering::Relaxed) != 0
        {
            return false;
        }
        if self.lock().trips != 0 {
            return false;
        }
        self.window.as_ref().is_none_or(|window| {
            let totals = window.totals(self.nanos_since_epoch(Instant::now()));
            totals.failures == 0 && totals.slow == 0
        })
    }

    /// What an open circuit tells callers to wait: the time left, or, while
    /// forced open (no end), the longest cooldown.
    fn open_retry_after(&self, now_nanos: u64) -> Duration {
        if self.forced.load(Ordering::Acquire) == FORCED_OPEN {
            return self.config().max_cooldown;
        }
        let until = self.open_until_nanos.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(now_nanos))
    }

    pub(crate) fn snapshot(&self) -> CircuitSnapshot {
        let t = self.lock();
        let now = self.nanos_since_epoch(Instant::now());
        let state = self.state();
        let totals = self
            .window
            .as_ref()
            .map(|w| w.totals(now))
            .unwrap_or_default();
        CircuitSnapshot {
            state,
            forced: self.forced.load(Ordering::Acquire) != NOT_FORCED,
            retry_after: (state == CircuitState::Open).then(|| self.open_retry_after(now)),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            window_calls: totals.calls,
            window_failures: totals.failures,
            window_slow_calls: totals.slow,
            trips: t.trips,
            calls: self.counters.calls.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
        }
    }

    /// Open until forced closed or reset.
    pub(crate) fn force_open(&self) {
        let mut t = self.lock();
        self.forced.store(FORCED_OPEN, Ordering::Release);
        self.open_until_nanos.store(u64::MAX, Ordering::Release);
        self.set_state(&mut t, OPEN, TransitionCause::Forced, None);
    }

    /// Closed, and never tripped, until reset.
    pub(crate) fn force_closed(&self) {
        let mut t = self.lock();
        self.forced.store(FORCED_CLOSED, Ordering::Release);
        self.set_state(&mut t, CLOSED, TransitionCause::Forced, None);
    }

    /// Back to a fresh closed circuit.
    pub(crate) fn reset(&self) {
        let mut t = self.lock();
        self.forced.store(NOT_FORCED, Ordering::Release);
        t.trips = 0;
        self.consecutive.store(0, Ordering::Relaxed);
        if let Some(window) = &self.window {
            window.clear();
        }
        self.set_state(&mut t, CLOSED, TransitionCause::Reset, None);
    }

    /// Apply a state decided elsewhere (another instance, through shared state).
    pub(crate) fn apply_remote(&self, state: CircuitState, open_for: Option<Duration>) {
        let mut t = self.lock();
        if self.forced.load(Ordering::Acquire) != NOT_FORCED || self.state() == state {
            return;
        }
        match state {
            CircuitState::Open => self.open_for(
                &mut t,
                open_for.unwrap_or(self.config().cooldown),
                TransitionCause::Remote,
            ),
            CircuitState::Closed => {
                t.trips = 0;
                self.consecutive.store(0, Ordering::Relaxed);
                self.set_state(&mut t, CLOSED, TransitionCause::Remote, None);
            }
            CircuitState::HalfOpen => {
                self.set_state(&mut t, HALF_OPEN, TransitionCause::Remote, None)
            }
        }
    }
}
