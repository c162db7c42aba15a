//! `spoor-loadtest run …` sends a seeded clickstream to the edge and checks
//! receipts and storage; `spoor-loadtest generate …` prints the request
//! bodies instead (one JSON line each), for other load tools;
//! `spoor-loadtest record …` saves real traffic from the events stream and
//! `spoor-loadtest replay …` sends it again.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use spoor_loadtest::{generate, RecordConfig, ReplayOptions, RunOptions, TrafficArgs};
use spoor_runtime::{window, NatsArgs};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "spoor-loadtest",
    version,
    about = "Load and end-to-end checks for Spoor's ingest pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up; boxing would buy nothing
enum Command {
    /// Send traffic to the edge, check every receipt and (optionally) storage.
    Run(RunOptions),
    /// Print the request bodies of a plan, one per line, in sending order.
    Generate {
        #[command(flatten)]
        traffic: TrafficArgs,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Save a time range of the events stream as a recording (JSON lines).
    Record(RecordArgs),
    /// Send a recording again, at its recorded pace scaled by --speed.
    Replay(ReplayOptions),
}

#[derive(clap::Args)]
struct RecordArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The events stream.
    #[arg(long, env = "SPOOR_STREAM", default_value = spoor_core::contract::DEFAULT_EVENTS_STREAM)]
    stream: String,
    /// Start: RFC 3339, or a span back from now (90s, 15m, 2h, 1d).
    #[arg(long)]
    since: String,
    /// End (default: the stream's last message as of the start).
    #[arg(long)]
    until: Option<String>,
    /// Only this project's requests.
    #[arg(long)]
    project: Option<String>,
    /// Largest uncompressed frame decoded (the relays' --max-frame-bytes).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_frame_bytes: usize,
    /// The recording to write.
    #[arg(long, short)]
    out: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(mut opts) => {
            opts.progress = std::io::stderr().is_terminal();
            run(&opts)
        }
        Command::Generate { traffic, out } => write_plan(&traffic, out).map(|()| true),
        Command::Record(args) => record(&args).map(|()| true),
        Command::Replay(mut opts) => {
            opts.progress = std::io::stderr().is_terminal();
            replay(&opts)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("spoor-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(opts: &RunOptions) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(spoor_loadtest::run(opts))?;
    println!("{summary}");
    Ok(summary.ok)
}

fn record(args: &RecordArgs) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let cfg = RecordConfig {
        nats: args.nats.endpoint()?,
        stream: args.stream.clone(),
        since: Some(window::parse_time(&args.since, now).context("--since")?),
        until: args
            .until
            .as_deref()
            .map(|u| window::parse_time(u, now))
            .transpose()
            .context("--until")?,
        project: args.project.clone(),
        max_frame_bytes: args.max_frame_bytes,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let recorded = rt.block_on(spoor_loadtest::record(&cfg))?;
    recorded.write(&args.out)?;
    println!("{recorded}");
    println!("wrote {}", args.out.display());
    Ok(())
}

fn replay(opts: &ReplayOptions) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(spoor_loadtest::replay(opts))?;
    println!("{summary}");
    Ok(summary.ok)
}

fn write_plan(traffic: &TrafficArgs, out: Option<PathBuf>) -> anyhow::Result<()> {
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let run_id = traffic.run_id.unwrap_or_else(Uuid::new_v4);
    let plan = generate(&traffic.model(run_id, now_ms)).map_err(anyhow::Error::msg)?;
    let mut w: Box<dyn Write> = match &out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for r in &plan.requests {
        writeln!(w, "{}", plan.batches[r.batch].body)?;
    }
    w.flush()?;
    eprintln!(
        "run {run_id}: {} requests ({} resends), {} events sent, {} unique valid, {} invalid",
        plan.requests.len(),
        plan.resends(),
        plan.events_sent(),
        plan.unique_valid(),
        plan.invalid()
    );
    Ok(())
}
