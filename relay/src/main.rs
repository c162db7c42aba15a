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

// Parsed once at start; the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Relay events until SIGINT or SIGTERM, then drain and exit.
    Run(RunArgs),
    /// Apply the JetStream stream definition and the ClickHouse schema, then exit.
    Migrate(ConnectionArgs),
}

/// Rows are allocated on the partition pullers' threads (decoding) and
/// freed on the pipeline's (after the insert), tens of strings a row:
/// glibc's malloc spends much of the relay's time consolidating such
/// cross-thread frees; mimalloc's per-thread free lists do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    spoor_runtime::shell::init_tracing();
    match cli.command {
        Command::Run(args) => {
            let listen = args.listen;
            let config = args.into_config()?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(listen = %listener.local_addr()?, "serving /healthz and /metrics");
            spoor_relay::run(config, listener, spoor_runtime::shell::shutdown_signal()).await?;
        }
        Command::Migrate(args) => {
            spoor_relay::migrate(&args.into_config()?).await?;
            tracing::info!("migrations applied");
        }
    }
    Ok(())
}
