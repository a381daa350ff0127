//! Trust boundaries over real sockets: keys fail closed, an upstream's rejected
//! key neither leaks nor blocks the next tier, resume tokens belong to their
//! client, review-page sessions, CORS, and snapshots sealed at rest. (The access
//! log is `tests/access_log.rs`, a binary of its own: it installs the
//! process-wide log subscriber.)
//!
//! Some tests set environment variables: each a name of its own, set before the
//! proxy that reads it starts, read by no other test.

#[path = "../common/mod.rs"]
mod common;
mod cors;
mod keys;
mod resume;
mod sealed;
mod sessions;
mod upstream_key;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use llm_proxy::client_id::client_key_id;
use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};
use sha2::Digest as _;
