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
    #[arg(long)]
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
    MockUpstream(MockOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Serving a config file, its `[telemetry]` decides (installed once read).
    let serves_config = cli.command.is_none() && cli.config.is_some();
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
                let mock = MockUpstream::start(options).await?;
                println!("mock upstream listening on {}", mock.base_url());
                shutdown_signal().await;
                Ok(())
            })
        }),
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
