//! What travels through Redis for a circuit: its key ([`SyncKey`]), and the
//! settings of the shared trip.

use std::time::Duration;

pub use crate::circuit_breaker::SyncKey;

/// When the instances' outcomes, added up in Redis, open the circuit everywhere.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SharedTrip {
    pub(crate) failure_rate: f64,
    pub(crate) minimum_calls: u32,
    pub(crate) window: Duration,
}
