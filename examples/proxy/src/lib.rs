//! `llm-proxy`: an OpenAI-compatible proxy built from the layers of
//! `tower-llm-resilience`.
//!
//! Each model is a chain of tiers through a `FallbackLayer` (streams settle on
//! their first event), each upstream sits behind its own `CircuitBreakerLayer`,
//! an `EscalationLayer` sends the requests the config's rules pick to a human,
//! and `/v1/batch` runs through a `PartialBatchLayer`. See the crate's README for
//! the endpoints and the configuration.
//!
//! The library half of the crate exists so the binary, the tests (and other
//! programs) can run the proxy and the mock upstream in process: [`Config`],
//! [`Proxy`] and [`mock::MockUpstream`]. Everything else is private to the
//! crate.
//!
//! # Where things live
//!
//! In the order a request meets them:
//!
//! - [`config`]: the TOML file, parsed and checked once into typed values
//!   (durations as `Duration`; an error names its setting).
//! - `server`: [`Proxy`], the serving threads with their runtimes and
//!   listening sockets ([`bind_listeners`]), the accept loop and the client
//!   connection limits, the graceful stop.
//! - `service`: the service in front of the routes: the access log, CORS, the
//!   authentication middleware, and `POST /v1/chat/completions` answered
//!   before routing (the hot path).
//! - `auth`: authentication as one middleware: which route needs a client key,
//!   an admin key or a review-page session; keys, sessions, the CSRF rules.
//! - `routes`: the handlers (`chat`, `batch`, `info`, `escalations`, `review`,
//!   `admin`) and the router; `state`: what they share.
//! - `request`: reading a chat request without rebuilding it.
//! - `pipeline`: the layers stacked for each model (escalation, fallback
//!   tiers, one circuit breaker per upstream) and how answers are classified.
//! - `upstream`: one provider as a tower service: the service, the HTTP
//!   transport, the Anthropic translation.
//! - `body`: response bodies (buffered answers, event streams, their bounds).
//! - `error`: `ApiError`, every error answer in the OpenAI format.
//! - Escalations: `escalation_caps` (caps on pending escalations), `resume`
//!   (a resume token works only for its client), `sealed` (snapshots
//!   encrypted at rest).
//! - `batch`: the batch runner and its bounded store; `jobs`: batches as
//!   jobs on apalis workers (the queue, the job store, `llm-proxy worker`,
//!   [`run_worker`]); `redis_state` and
//!   `postgres_state`: the state shared through Redis (`[state] redis_url`)
//!   and PostgreSQL (`postgres_url`), [`CircuitSync`] the circuits shared
//!   through either; `usage`: usage records and their stores, budgets; `cache`: the response cache;
//!   `dashboard`: what the operator dashboard shows that is kept nowhere
//!   else (answers by tier over recent windows, the last batches).
//! - [`telemetry`]: the log subscriber and the OTLP trace export
//!   (`[telemetry]`), the request's and each upstream call's spans.
//! - [`metrics`]: the Prometheus recorder and `GET /metrics`; [`client_id`]:
//!   the id records and logs carry instead of a key.
//! - [`mock`]: the mock upstream (`llm-proxy mock-upstream`); [`demo`]: the
//!   demo `llm-proxy` runs without arguments.
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

pub mod config;
mod server;

mod auth;
mod routes;
mod service;
mod state;

mod body;
mod error;
mod pipeline;
mod request;
mod upstream;

mod escalation_caps;
mod resume;
mod sealed;

mod audit;
mod batch;
mod cache;
mod circuit_sync;
mod dashboard;
mod jobs;
mod postgres_state;
mod redis_state;
mod usage;
mod writer;

pub mod client_id;
pub mod metrics;
pub mod telemetry;

pub mod demo;
pub mod mock;

pub use crate::circuit_sync::CircuitSync;
pub use crate::config::Config;
pub use crate::jobs::migrate_job_queue;
pub use crate::jobs::worker::run_worker;
pub use crate::postgres_state::migrate;
pub use crate::server::{bind_listeners, Proxy};
