//! `llm-proxy`: see `llm-proxy --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llm_proxy::config::TelemetryConfig;
use llm_proxy::mock::{MockOptions, MockUpstream};
use llm_proxy::telemetry::Telemetry;
use llm_proxy::{Config, Proxy};
use tower_llm_resilience::BoxError;

/// An OpenAI-compatible LLM proxy with fallback tiers, circuit breakers, human
/// escalation and partial batches. Without arguments: a demo on 127.0.0.1:8080
/// with built-in upstreams.
#[derive(Parser, Debug)]
#[command(name = "llm-proxy", version)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Listen here instead (overrides the config's `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serving threads (overrides the config's `workers`; default one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a mock upstream that fails on demand (seeded), speaking the OpenAI
    /// chat completions API or (`--format anthropic`) the Anthropic Messages API.
    MockUpstream(Box<MockOptions>),
    /// Apply the PostgreSQL schema migrations of `--config`'s `[state]
    /// postgres_url` (or `postgres_url_env`) and exit. Safe to run while proxies
    /// run, and from several machines at once.
    Migrate,
    /// Run a batch worker: takes the items of asynchronous batches (`POST
    /// /v1/batch` with `Prefer: respond-async`) from the queue on `--config`'s
    /// `[state] redis_url` and runs them through the config's models, like the
    /// proxy. Stops gracefully on Ctrl-C or SIGTERM.
    Worker {
        /// Items run at once (default: `[batch] concurrency`).
        #[arg(long)]
        concurrency: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Serving a config file, its `[telemetry]` decides (installed once read).
    let serves_config =
        matches!(cli.command, None | Some(Command::Worker { .. })) && cli.config.is_some();
    let _telemetry = match serves_config {
        true => None,
        false => match Telemetry::install(&TelemetryConfig::default()) {
            Ok(telemetry) => Some(telemetry),
            Err(e) => {
                eprintln!("llm-proxy: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let result = match (cli.command, cli.config) {
        (Some(Command::MockUpstream(options)), _) => multi_thread().and_then(|runtime| {
            runtime.block_on(async move {
                let mock = MockUpstream::start(*options).await?;
                println!("mock upstream listening on {}", mock.base_url());
                shutdown_signal().await;
                Ok(())
            })
        }),
        (Some(Command::Migrate), Some(path)) => migrate(&path),
        (Some(Command::Migrate), None) => {
            Err("migrate needs --config FILE (whose [state] names the PostgreSQL)".into())
        }
        (Some(Command::Worker { concurrency }), Some(path)) => worker(&path, concurrency),
        (Some(Command::Worker { .. }), None) => {
            Err("worker needs --config FILE (the proxy's, with [state] redis_url)".into())
        }
        (None, Some(path)) => serve_config(&path, cli.listen, cli.workers),
        (None, None) => multi_thread().and_then(|runtime| {
            let listen = cli
                .listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
            runtime.block_on(llm_proxy::demo::run(listen, shutdown_signal()))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn multi_thread() -> Result<tokio::runtime::Runtime, BoxError> {
    tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}").into())
}

/// `migrate --config FILE`: apply the schema migrations and exit.
fn migrate(path: &std::path::Path) -> Result<(), BoxError> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let migrated = runtime.block_on(llm_proxy::migrate(&config))?;
    match migrated {
        None => {
            return Err(format!(
                "{}: [state] names no PostgreSQL (postgres_url or postgres_url_env): \
                 nothing to migrate",
                path.display()
            )
            .into())
        }
        Some(migrated) if migrated.applied.is_empty() => println!(
            "the PostgreSQL schema is current (version {})",
            migrated.current
        ),
        Some(migrated) => println!(
            "applied migrations {:?}; the PostgreSQL schema is at version {}",
            migrated.applied, migrated.current
        ),
    }
    if runtime.block_on(llm_proxy::migrate_job_queue(&config))? {
        println!("the batch queue's schema (apalis) is current");
    }
    Ok(())
}

/// `worker --config FILE`: run batch items until Ctrl-C or SIGTERM.
fn worker(path: &std::path::Path, concurrency: Option<usize>) -> Result<(), BoxError> {
    let config = Config::load(path)?;
    let telemetry = Telemetry::install(&config.telemetry)?;
    let result = multi_thread()?.block_on(llm_proxy::run_worker(
        &config,
        concurrency,
        shutdown_signal(),
    ));
    telemetry.flush();
    result
}

/// `--config FILE`: serve until Ctrl-C or SIGTERM, then shut down gracefully.
fn serve_config(
    path: &std::path::Path,
    listen: Option<SocketAddr>,
    workers: Option<usize>,
) -> Result<(), BoxError> {
    let mut config = Config::load(path)?;
    let telemetry = Telemetry::install(&config.telemetry)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if workers.is_some() {
        config.workers = workers;
    }
    let proxy = Proxy::start(&config)?;
    println!(
        "llm-proxy listening on {} ({} worker threads)",
        proxy.url(),
        proxy.workers()
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(shutdown_signal());
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    proxy.stop();
    telemetry.flush();
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
