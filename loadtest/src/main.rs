//! `spoor-loadtest run …` sends a seeded clickstream to the edge and checks
//! receipts and storage; `spoor-loadtest generate …` prints the request
//! bodies instead (one JSON line each), for other load tools.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use spoor_loadtest::{generate, RunOptions, TrafficArgs};
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
