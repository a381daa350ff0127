//! Stop calling an upstream that keeps failing.

mod error;

pub use self::error::CircuitOpen;
