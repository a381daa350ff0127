//! `llm-proxy`: an OpenAI-compatible proxy built from the layers of
//! `tower-llm-resilience`.
//!
//! Each model is a chain of tiers through a `FallbackLayer` (streams settle on
//! their first event), each upstream sits behind its own `CircuitBreakerLayer`,
//! an `EscalationLayer` sends the requests the config's rules pick to a human,
//! and `/v1/batch` runs through a `PartialBatchLayer`. See the crate's README for
//! the endpoints and the configuration.
//!
//! The library half of the crate exists so tests (and other programs) can run
//! the proxy and the mock upstream in process: [`Proxy`] and
//! [`mock::MockUpstream`].
#![warn(missing_docs, rust_2018_idioms)]

pub mod auth;
pub mod batch;
pub mod body;
pub mod client_id;
pub mod config;
pub mod demo;
pub mod error;
pub mod escalation_caps;
pub mod metrics;
pub mod mock;
pub mod pipeline;
pub mod redis_state;
pub mod request;
pub mod resume;
pub mod routes;
pub mod sealed;
mod server;
pub mod service;
pub mod state;
pub mod upstream;

pub use crate::config::Config;
pub use crate::server::{bind_listeners, Proxy};
