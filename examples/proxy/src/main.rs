//! `llm-proxy`: see `llm-proxy --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llm_proxy::mock::{MockOptions, MockUpstream};
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
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
