//! A chat request through its model's tiers to the upstreams, and back: the
//! answers and failures of OpenAI-compatible and Anthropic upstreams, streams,
//! fallback between tiers and their circuits.
//!
//! One test binary for the area (like tower's tests); every test here may run
//! alongside the others. `anthropic` sets one environment variable of its own
//! (an upstream key), once, before any proxy reads it; no other test reads or
//! changes it.

mod answers;
mod anthropic;
mod balanced;
#[path = "../common/mod.rs"]
mod common;
mod fallback;
mod ready;
mod retry;
mod streaming;
mod tiers;
