//! `llm-proxy`: see `llm-proxy --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llm_proxy::mock::{MockOptions, MockUpstream};
use llm_proxy::Config;

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an OpenAI-compatible mock upstream that fails on demand (seeded).
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("llm-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::MockUpstream(options)) => {
                let mock = MockUpstream::start(options).await?;
                println!("mock upstream listening on {}", mock.base_url());
                shutdown_signal().await;
                Ok(())
            }
            None => match cli.config {
                Some(path) => {
                    let mut config = Config::load(&path)?;
                    if let Some(listen) = cli.listen {
                        config.listen = listen;
                    }
                    let listener = tokio::net::TcpListener::bind(config.listen).await?;
                    println!("llm-proxy listening on http://{}", listener.local_addr()?);
                    llm_proxy::run(&config, listener, shutdown_signal()).await
                }
                None => {
                    let listen = cli
                        .listen
                        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
                    llm_proxy::demo::run(listen, shutdown_signal()).await
                }
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-proxy: {e}");
            ExitCode::FAILURE
        }
    }
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
