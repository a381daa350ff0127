//! What a circuit reports about itself.

use std::fmt;
use std::time::Duration;

/// The state of one circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are rejected at once with [`CircuitOpen`](super::CircuitOpen).
    Open,
    /// A limited number of probe calls go through to test recovery.
    HalfOpen,
}

impl CircuitState {
    pub(crate) const fn from_u8(v: u8) -> Self {
        match v {
            0 => CircuitState::Closed,
            1 => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }

    /// `closed`, `open` or `half_open`.
    pub const fn name(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a circuit changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransitionCause {
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// The failure rate of the window reached the threshold.
    FailureRate,
    /// The slow-call rate of the window reached the threshold.
    SlowCallRate,
    /// The open period ended; probes may go through.
    CooldownElapsed,
    /// Enough probes succeeded.
    ProbesSucceeded,
    /// A probe failed.
    ProbeFailed,
    /// Forced through the [`Handle`](super::Handle).
    Forced,
    /// Reset through the [`Handle`](super::Handle).
    Reset,
    /// Applied from shared state (another instance decided).
    Remote,
}

/// One state change of one circuit, as sent to [`Handle::subscribe`](super::Handle::subscribe).
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitEvent<K> {
    /// The layer's name.
    pub name: String,
    /// The circuit's key; `None` for the layer's single (or overflow) circuit.
    pub key: Option<K>,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Why.
    pub cause: TransitionCause,
    /// For a change to `Open`: how long it stays open.
    pub open_for: Option<Duration>,
}

/// A point-in-time view of one circuit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitSnapshot {
    /// Its state.
    pub state: CircuitState,
    /// Whether the state is forced through the handle.
    pub forced: bool,
    /// Until a probe may go through, when open.
    pub retry_after: Option<Duration>,
    /// Failures in a row, counting towards `consecutive_failures`.
    pub consecutive_failures: u32,
    /// Calls, failures and slow calls in the rolling window (zero when no rate
    /// policy is configured).
    pub window_calls: u32,
    /// See `window_calls`.
    pub window_failures: u32,
    /// See `window_calls`.
    pub window_slow_calls: u32,
    /// Re-trips since the circuit last closed (drives the growing cooldown).
    pub trips: u32,
    /// Calls whose outcome counted for the circuit (successes and failures), counted
    /// only while [`Handle::count_calls`](super::Handle::count_calls) is on (a
    /// shared-state backend turns it on to compute failure rates); 0 otherwise.
    pub calls: u64,
    /// Calls that failed in a way that counts against the circuit.
    pub failures: u64,
    /// Calls rejected while open (in metrics-only mode: calls that would have been).
    pub rejected: u64,
}
