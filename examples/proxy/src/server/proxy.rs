//! [`Proxy`]: the serving threads, each with its runtime and listener, the
//! control thread for the background chores, and the graceful stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tower_llm_resilience::BoxError;

use super::connections::{serve, ClientLimits};
use super::listeners::bind_listeners;
use crate::config::Config;
use crate::postgres_state::MigrateFailure;

/// How often a proxy that started while PostgreSQL was unreachable tries to
/// migrate its schema again.
const MIGRATE_RETRY: Duration = Duration::from_secs(5);
use crate::routes;
use crate::state::{AppState, Shared};

/// A running proxy, built from a [`Config`].
///
/// It serves on [`Config::worker_threads`] threads, each with a single-threaded
/// tokio runtime, an upstream connection pool and a listening socket of its own
/// on the same address (`SO_REUSEPORT` on Linux, where the kernel spreads the
/// connections; elsewhere the threads share one socket). A request, its upstream
/// call and its answer stay on one thread, with no hand-off between threads.
/// What the layers keep running in the background (the Redis backends' tasks)
/// runs on one more thread.
///
/// Stopping it (or dropping it) stops accepting, gives in-flight requests
/// `limits.shutdown_grace_secs`, then drops everything it ran, requests still
/// waiting included, as a process exit would; what it stored stays. What the
/// requests queued for the stores (usage records, budget charges, audit
/// events) is written first, within another `shutdown_grace_secs`.
///
/// ```no_run
/// # fn main() -> Result<(), tower_llm_resilience::BoxError> {
/// let config = llm_proxy::Config::load("llm-proxy.toml".as_ref())?;
/// let proxy = llm_proxy::Proxy::start(&config)?;
/// println!("listening on {}", proxy.url());
/// proxy.stop();
/// # Ok(())
/// # }
/// ```
pub struct Proxy {
    addr: SocketAddr,
    grace: Duration,
    state: Shared,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    control: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Bind `config.listen` (port 0 picks a free port) and start serving.
    pub fn start(config: &Config) -> Result<Self, BoxError> {
        config.validate()?;
        let grace = config.limits.shutdown_grace_secs;
        let limits = ClientLimits::from_config(&config.limits);
        let upkeep = config.limits.metrics_upkeep_secs;
        let workers = config.worker_threads();
        let listeners = bind_listeners(config.listen, workers).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "cannot listen on {}: another process already listens there \
                     (stop it, or choose another `listen` address)",
                    config.listen
                )
            } else {
                format!("cannot listen on {}: {e}", config.listen)
            }
        })?;
        let addr = listeners[0].local_addr()?;
        let mut runtimes = Vec::with_capacity(workers + 1);
        for _ in 0..=workers {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtimes.push(runtime),
                Err(e) => {
                    discard(runtimes);
                    return Err(e.into());
                }
            }
        }
        let control = runtimes.pop().expect("workers + 1 runtimes were built");
        // `[state] postgres_url`: the schema first (a no-op when current). An
        // unreachable PostgreSQL does not stop the proxy (chat does not need
        // it; the stores answer 503 meanwhile): it migrates once it answers.
        let mut migrate_later = false;
        if config.state.postgres_migrate {
            // On a thread of its own: `start` may be called inside a runtime.
            let migrated = std::thread::scope(|scope| {
                scope
                    .spawn(|| control.block_on(crate::postgres_state::try_migrate(config)))
                    .join()
            });
            match migrated {
                Ok(Ok(_)) => {}
                Ok(Err(MigrateFailure::Unreachable(e))) => {
                    tracing::warn!(
                        error = %e,
                        "PostgreSQL unreachable at startup: serving without it, \
                         migrating once it answers"
                    );
                    migrate_later = true;
                }
                Ok(Err(MigrateFailure::Refused(e))) => {
                    runtimes.push(control);
                    discard(runtimes);
                    return Err(format!(
                        "{e} (fix it, or set state.postgres_migrate = false and run \
                         `llm-proxy migrate`)"
                    )
                    .into());
                }
                Err(_) => {
                    runtimes.push(control);
                    discard(runtimes);
                    return Err("the PostgreSQL migration panicked".into());
                }
            }
        }
        // Built inside the control runtime: the Redis backends' tasks run there
        // (once its thread starts) and stop with it.
        let built = {
            let _entered = control.enter();
            routes::build(config)
        };
        let (router, state) = match built {
            Ok(built) => built,
            Err(e) => {
                runtimes.push(control);
                discard(runtimes);
                return Err(e.into());
            }
        };
        let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
        let background = state.clone();
        let config_copy = config.clone();
        let control = std::thread::Builder::new()
            .name("llm-proxy-control".into())
            .spawn(move || {
                control.block_on(async move {
                    // Housekeeping on its own schedule, not only when scraped.
                    let chores = tokio::spawn(housekeeping(background.clone(), upkeep));
                    let migration = migrate_later.then(|| {
                        tokio::spawn(crate::postgres_state::migrate_in_background(
                            config_copy,
                            MIGRATE_RETRY,
                        ))
                    });
                    let _ = control_stopped.await;
                    // Every request has finished: what they queued for the
                    // stores is written before the threads go.
                    background.flush_writers(grace).await;
                    chores.abort();
                    if let Some(migration) = migration {
                        migration.abort();
                    }
                });
            })?;
        let mut proxy = Self {
            addr,
            grace,
            state,
            stop: tokio::sync::watch::channel(false).0,
            workers: Vec::with_capacity(workers),
            control: Some((stop_control, control)),
        };
        for (i, (listener, runtime)) in listeners.into_iter().zip(runtimes).enumerate() {
            let router = router.clone();
            let limits = limits.clone();
            let mut stopped = proxy.stop.subscribe();
            let worker = std::thread::Builder::new()
                .name(format!("llm-proxy-{i}"))
                .spawn(move || {
                    let served = runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        let stop = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        serve(router, listener, limits, stop, grace).await;
                        Ok::<(), BoxError>(())
                    });
                    if let Err(e) = served {
                        tracing::error!(error = %e, "a proxy worker stopped with an error");
                    }
                    runtime.shutdown_timeout(Duration::from_secs(5));
                });
            match worker {
                Ok(worker) => proxy.workers.push(worker),
                // Dropping `proxy` stops the workers already started.
                Err(e) => return Err(e.into()),
            }
        }
        Ok(proxy)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The number of serving threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// With `[state] redis_url` or `postgres_url`: each upstream's circuit sync
    /// (its name and the sync), to see whether they reach the shared store.
    /// Empty with embedded state.
    pub fn circuit_syncs(&self) -> &[(Arc<str>, crate::CircuitSync)] {
        &self.state.pipeline.circuit_syncs
    }

    /// Shut down gracefully and wait for the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        self.drain();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some((stop, control)) = self.control.take() {
            let _ = stop.send(());
            let _ = control.join();
        }
    }
}

impl Proxy {
    /// While the workers finish: requests waiting for a human are answered at
    /// once (an error with their escalation id and resume token; the escalation
    /// stays resolvable), and again for any that start waiting meanwhile; a
    /// little before the grace period ends, upstream streams still open end with
    /// an error event, sent while their connections are still served.
    fn drain(&self) {
        let started = std::time::Instant::now();
        let close_at = self.grace - (self.grace / 4).min(Duration::from_millis(500));
        let pipeline = &self.state.pipeline;
        while self.workers.iter().any(|worker| !worker.is_finished()) {
            pipeline.escalations.release_waiters();
            if started.elapsed() >= close_at && !pipeline.closing.is_closed() {
                pipeline.closing.close();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runtimes that never ran: shut down without blocking (dropping one may block,
/// which is not allowed when the caller is async).
fn discard(runtimes: Vec<tokio::runtime::Runtime>) {
    for runtime in runtimes {
        runtime.shutdown_background();
    }
}

/// The proxy's periodic chores: the Prometheus recorder's upkeep (histogram
/// samples are drained into their buckets, so a proxy nobody scrapes does not
/// grow) and the escalation counts `/metrics` reports.
async fn housekeeping(state: Shared, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_chores = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        state.metrics.run_upkeep();
        if tokio::time::Instant::now() >= next_chores {
            next_chores = tokio::time::Instant::now() + STORE_CHORES_EVERY;
            store_chores(&state).await;
        }
    }
}

/// How often the escalation counts are re-read and old records purged.
const STORE_CHORES_EVERY: Duration = Duration::from_secs(60);

/// Re-read the pending escalation counts (other proxies may share the store)
/// and purge records past their retention.
async fn store_chores(state: &AppState) {
    let caps = &state.pipeline.escalation_caps;
    if let Err(e) = caps.sync().await {
        tracing::warn!(error = %e, "cannot re-read the pending escalations");
    }
    match caps.purge_old().await {
        Ok(0) => {}
        Ok(purged) => tracing::info!(purged, "escalations past their retention purged"),
        Err(e) => tracing::warn!(error = %e, "cannot purge old escalations"),
    }
    if let Some(log) = state.audit.log() {
        let before = std::time::SystemTime::now() - crate::audit::RETENTION;
        if let Err(e) = log.prune(before).await {
            tracing::warn!(error = %e, "cannot prune the audit log");
        }
    }
}
