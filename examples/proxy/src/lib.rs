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
//! the proxy and the mock upstream in process: [`ProxyThread`] and
//! [`mock::MockUpstream`].
#![warn(missing_docs, rust_2018_idioms)]
// Handlers return a finished `Response` as their error: idiomatic in axum.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod auth;
pub mod batch;
pub mod body;
pub mod config;
pub mod demo;
pub mod errors;
pub mod metrics;
pub mod mock;
pub mod pipeline;
pub mod request;
pub mod review;
pub mod state;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tower_llm_resilience::BoxError;

pub use crate::config::Config;

/// Serve `router` on `listener` until `shutdown` resolves; then stop accepting,
/// and give in-flight requests up to `grace` to finish. Escalations still
/// pending stay in their store.
pub async fn serve(
    router: axum::Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), BoxError> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    use axum::serve::ListenerExt as _;
    // Small request/response exchanges: without TCP_NODELAY, Nagle's algorithm and
    // delayed ACKs add tens of milliseconds.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        result = &mut server => return Ok(result??),
        () = shutdown => {}
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(grace, server).await {
        Ok(result) => Ok(result??),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "requests still in flight after the grace period; stopping"
            );
            Ok(())
        }
    }
}

/// Build the proxy from `config` and run it until `shutdown` resolves.
pub async fn run(
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let (router, _state) = app::build(config)?;
    let grace = config::secs(
        "limits.shutdown_grace_secs",
        config.limits.shutdown_grace_secs,
    )?;
    serve(router, listener, shutdown, grace).await
}

/// A proxy running on a thread and runtime of its own, as a separate process
/// would: stopping it drops everything it ran (waiting requests included), and
/// what it stored stays. For tests and embedding.
pub struct ProxyThread {
    addr: SocketAddr,
    state: app::Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ProxyThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyThread")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ProxyThread {
    /// Bind `config.listen` (port 0 picks a free port) and start serving.
    pub fn start(config: &Config) -> Result<Self, BoxError> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        config.validate()?;
        let grace = config::secs(
            "limits.shutdown_grace_secs",
            config.limits.shutdown_grace_secs,
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // Built inside its own runtime: the Redis backends' tasks run there and
        // stop with it.
        let built = {
            let _entered = runtime.enter();
            app::build(config)
        };
        let (router, state) = match built {
            Ok(built) => built,
            Err(e) => {
                // Dropping a runtime may block: not allowed if the caller is async.
                runtime.shutdown_background();
                return Err(e.into());
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("llm-proxy-{}", addr.port()))
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let stop = async move {
                        let _ = stop_rx.await;
                    };
                    serve(router, listener, stop, grace).await
                });
                if let Err(e) = served {
                    tracing::error!(error = %e, "proxy stopped with an error");
                }
                runtime.shutdown_timeout(Duration::from_secs(5));
            })?;
        Ok(Self {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its state: the layers' handles.
    pub fn state(&self) -> &app::Shared {
        &self.state
    }

    /// Shut down gracefully and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}
