//! The `spoor-relay` binary: parse flags, set up logging, bind, run until
//! SIGINT/SIGTERM. All behaviour lives in the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use spoor_relay::config::{ConnectionArgs, RunArgs};

#[derive(Parser)]
#[command(
    name = "spoor-relay",
    version,
    about = "Moves event frames from NATS JetStream into ClickHouse"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay events until SIGINT or SIGTERM, then drain and exit.
    Run(RunArgs),
    /// Apply the JetStream stream definition and the ClickHouse schema, then exit.
    Migrate(ConnectionArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Run(args) => {
            let listen = args.listen;
            let config = args.into_config()?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(listen = %listener.local_addr()?, "serving /healthz and /metrics");
            spoor_relay::run(config, listener, shutdown_signal()).await?;
        }
        Command::Migrate(args) => {
            spoor_relay::migrate(&args.into_config()?).await?;
            tracing::info!("migrations applied");
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
