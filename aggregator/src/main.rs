//! The `spoor-aggregator` binary: parse flags, set up logging, bind, serve
//! until SIGINT/SIGTERM. All behaviour lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use spoor_aggregator::config::{ClickHouseRead, Config, LaneLimits, Tokens};
use spoor_store::ClickHouseConfig;

/// Serves Spoor's read path: metrics, funnels, timelines, sessions and the
/// live dashboard, over ClickHouse.
#[derive(Parser)]
#[command(name = "spoor-aggregator", version)]
struct Args {
    /// Where to serve the API and the dashboard.
    #[arg(
        long,
        env = "SPOOR_AGGREGATOR_LISTEN",
        default_value = "127.0.0.1:8686"
    )]
    listen: SocketAddr,
    /// ClickHouse's HTTP interface.
    #[arg(
        long,
        env = "SPOOR_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse_url: String,
    #[arg(long, env = "SPOOR_CLICKHOUSE_DATABASE", default_value = "spoor")]
    clickhouse_database: String,
    /// A read-only ClickHouse user (profile setting readonly = 2).
    #[arg(
        long,
        env = "SPOOR_CLICKHOUSE_READ_USER",
        default_value = "spoor_readonly"
    )]
    clickhouse_user: String,
    #[arg(long, env = "SPOOR_CLICKHOUSE_READ_PASSWORD")]
    clickhouse_password: Option<String>,
    /// Start even if the ClickHouse user can write (local experiments only).
    #[arg(long)]
    allow_writable_user: bool,
    /// Read tokens, PROJECT=TOKEN, comma-separated; each project its own.
    #[arg(long, env = "SPOOR_READ_TOKENS")]
    read_tokens: Option<String>,
    /// A file of PROJECT=TOKEN lines (`#` comments), added to --read-tokens.
    #[arg(long, env = "SPOOR_READ_TOKENS_FILE")]
    read_tokens_file: Option<PathBuf>,
    /// Dashboard queries running at once.
    #[arg(long, default_value_t = 8)]
    dashboard_concurrency: usize,
    /// Ad-hoc (API) queries running at once.
    #[arg(long, default_value_t = 2)]
    adhoc_concurrency: usize,
    /// Seconds a dashboard query may run.
    #[arg(long, default_value_t = 5.0)]
    dashboard_timeout_secs: f64,
    /// Seconds an ad-hoc query may run.
    #[arg(long, default_value_t = 30.0)]
    adhoc_timeout_secs: f64,
    /// Seconds a query may wait for a slot in its lane before a 503.
    #[arg(long, default_value_t = 2.0)]
    queue_wait_secs: f64,
    /// Most rows ClickHouse may return for one query.
    #[arg(long, default_value_t = 100_000)]
    max_result_rows: u64,
    /// Days the raw events are kept (the relay's --retention-days; 0:
    /// forever): unique-user questions inside them read the raw events.
    #[arg(long, env = "SPOOR_RETENTION_DAYS", default_value_t = 90)]
    raw_retention_days: u32,
}

fn secs(what: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{what} must be a positive number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut spec = args.read_tokens.clone().unwrap_or_default();
    if let Some(path) = &args.read_tokens_file {
        let file = std::fs::read_to_string(path)
            .with_context(|| format!("reading read tokens from {}", path.display()))?;
        spec.push('\n');
        spec.push_str(&file);
    }
    let tokens = Tokens::parse(&spec).context("--read-tokens")?;
    let mut config = Config::new(
        ClickHouseRead {
            connection: ClickHouseConfig {
                url: args.clickhouse_url,
                database: args.clickhouse_database,
                user: Some(args.clickhouse_user),
                password: args.clickhouse_password,
            },
            allow_writable_user: args.allow_writable_user,
        },
        tokens,
    );
    let queue_wait = secs("queue-wait-secs", args.queue_wait_secs)?;
    config.dashboard = LaneLimits {
        concurrency: args.dashboard_concurrency.max(1),
        queue_wait,
        timeout: secs("dashboard-timeout-secs", args.dashboard_timeout_secs)?,
    };
    config.adhoc = LaneLimits {
        concurrency: args.adhoc_concurrency.max(1),
        queue_wait,
        timeout: secs("adhoc-timeout-secs", args.adhoc_timeout_secs)?,
    };
    config.max_result_rows = args.max_result_rows;
    config.raw_retention_days = args.raw_retention_days;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(url = %format!("http://{}/", listener.local_addr()?), "dashboard");
    spoor_aggregator::service::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
