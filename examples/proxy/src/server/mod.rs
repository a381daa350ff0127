//! The server: listening sockets, serving threads and client connections.
//!
//! - [`proxy`]: [`Proxy`], a running proxy: one serving thread per worker, each
//!   with a single-threaded runtime, a listener and an upstream pool of its own,
//!   plus a control thread for the background chores; its graceful stop.
//! - [`listeners`]: the listening sockets (`SO_REUSEPORT` on Linux).
//! - [`connections`]: the accept loop, client connections bounded in number and
//!   in time (`[limits]`), request bodies read under a timeout.
//! - [`reclaim`]: at `limits.max_connections`, closing the connection silent
//!   the longest to make room.

mod connections;
mod listeners;
mod proxy;
mod reclaim;

pub use listeners::bind_listeners;
pub use proxy::Proxy;

pub(crate) use connections::{is_body_timeout, once_a_minute};
