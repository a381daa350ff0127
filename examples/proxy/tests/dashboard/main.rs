//! The operator dashboard: the admin circuit controls and who may use them,
//! the windowed answer statistics after a known mix of requests, the test
//! prompt and recent batches, and the page itself in real headless Chromium.

#[path = "../common/mod.rs"]
mod common;
mod controls;
mod page;
mod shared_state;
mod stats;
