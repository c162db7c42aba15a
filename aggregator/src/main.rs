//! The `spoor-aggregator` binary: parse flags, set up logging, bind, serve
//! until SIGINT/SIGTERM. All behaviour lives in the library.

use anyhow::Context as _;
use spoor_aggregator::args::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    spoor_runtime::shell::init_tracing();
    let listen = args.listen;
    let config = args.into_config()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(url = %format!("http://{}/", listener.local_addr()?), "dashboard");
    spoor_aggregator::service::run(config, listener, spoor_runtime::shell::shutdown_signal())
        .await?;
    Ok(())
}
