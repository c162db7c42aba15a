//! `cargo xtask test`: the whole test suite, as CI runs it (`.ci/run`). Sets
//! up the tools, builds the edge, then runs every step even after one fails,
//! prints a table of results and fails if any step failed. The child cargo
//! gets the tools' absolute paths through SPOOR_* variables; the harness
//! (tests/src/tools.rs) reads the same names. Never skips a step silently.

use crate::setup::{self, Tools};
use crate::{build_edge, sh};
use anyhow::{bail, Result};
use std::process::Command;
use std::time::Instant;

struct Step {
    name: String,
    cmd: Command,
    /// Whether the step runs libtest binaries whose failures the summary
    /// should name (the tail of a long CI log is often all one gets to see).
    tests: bool,
}

pub fn run() -> Result<()> {
    let tools = setup::run()?;
    let root = sh::root();
    let edge_start = Instant::now();
    let edge_built = build_edge::run(&tools, false);
    let edge_secs = edge_start.elapsed().as_secs_f64();
    if let Err(e) = &edge_built {
        eprintln!("test: build-edge failed, tests that need the edge will fail too: {e:#}");
    }

    let mut steps = vec![
        // The fault-injection tests run the relay binary as a child (to
        // kill -9 it); build it before the tests that need it.
        Step {
            name: "cargo build -p spoor-relay".into(),
            cmd: cargo(&["build", "-p", "spoor-relay"]),
            tests: false,
        },
        Step {
            name: "cargo test --workspace".into(),
            cmd: cargo_test(&tools),
            tests: true,
        },
        Step {
            name: "spoor-edge-nats builds for wasm32".into(),
            cmd: cargo(&[
                "build",
                "-p",
                "spoor-edge-nats",
                "--target",
                "wasm32-unknown-unknown",
            ]),
            tests: false,
        },
    ];
    steps.extend(fuzz_smoke_steps(&tools));

    let mut results: Vec<(String, bool, f64, Vec<String>)> = vec![(
        "build-edge".into(),
        edge_built.is_ok(),
        edge_secs,
        Vec::new(),
    )];
    for mut step in steps {
        println!("\n==> {}", step.name);
        let start = Instant::now();
        let cmd = step.cmd.current_dir(&root);
        let mut digest = FailureDigest::default();
        let outcome = if step.tests {
            sh::run_teed(cmd, |line| digest.line(line))
        } else {
            sh::run(cmd)
        };
        let ok = outcome.map_err(|e| eprintln!("test: {e:#}")).is_ok();
        results.push((step.name, ok, start.elapsed().as_secs_f64(), digest.lines));
    }

    println!("\ntest: summary");
    for (name, ok, secs, failures) in &results {
        println!(
            "  {}  {name} ({secs:.0}s)",
            if *ok { "ok  " } else { "FAIL" }
        );
        for line in failures {
            println!("          {line}");
        }
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.1)
        .map(|r| r.0.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("{} step(s) failed: {}", failed.len(), failed.join(", "));
    }
    println!("test: all steps passed");
    Ok(())
}

/// The failed tests of a libtest run, read from its stdout: each failed
/// test's name and the first lines of its panic, so the summary at the end
/// of a long log says what broke without scrolling back.
#[derive(Default)]
struct FailureDigest {
    lines: Vec<String>,
    /// Lines still to keep from the current failure's panic message.
    keep: usize,
}

impl FailureDigest {
    /// Upper bound on the digest, so a mass failure stays readable.
    const MAX_LINES: usize = 80;
    /// Lines kept from each panic: the location line and its message.
    const PANIC_LINES: usize = 4;

    fn line(&mut self, line: &str) {
        if self.lines.len() >= Self::MAX_LINES {
            return;
        }
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.lines.push(format!("failed: {name}"));
            self.keep = 0;
        } else if line.contains("panicked at") {
            self.lines.push(format!("  {}", line.trim()));
            self.keep = Self::PANIC_LINES - 1;
        } else if self.keep > 0 {
            self.keep -= 1;
            if line.trim().is_empty() || line.starts_with("note: run with `RUST_BACKTRACE") {
                self.keep = 0;
            } else {
                self.lines.push(format!("  {}", line.trim_end()));
            }
        }
    }
}

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(sh::cargo());
    c.args(args);
    c
}

/// `cargo test` over every native crate, every test binary even after one
/// fails (`--no-fail-fast`), so one run names every failure. `--workspace` would also pull in
/// the wasm-only edge crate (default-members leave it out), so exclude it.
fn cargo_test(tools: &Tools) -> Command {
    let mut c = cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "spoor-edge",
        "--no-fail-fast",
    ]);
    let root = sh::root();
    c.env("SPOOR_NATS_SERVER", &tools.nats_server)
        .env("SPOOR_CLICKHOUSE_SERVER", &tools.clickhouse_server)
        .env("SPOOR_CHDB_PATH", &tools.chdb)
        .env("SPOOR_WORKERD", &tools.workerd)
        .env("SPOOR_WRANGLER", &tools.wrangler)
        .env("SPOOR_CHROMIUM", &tools.chromium)
        .env("SPOOR_EDGE_BUILD", root.join("edge/build"))
        .env("SPOOR_RELAY_BIN", target_dir().join("debug/spoor-relay"));
    c
}

/// Cargo's target directory, as the child cargo will use it.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| sh::root().join("target"))
}

/// The fuzz targets in fuzz/fuzz_targets/, each run briefly on every CI run.
pub const FUZZ_TARGETS: [&str; 5] = [
    "decode_frame",
    "ingest_body",
    "nats_server_ops",
    "recording_lines",
    "segment_body",
];
/// Seconds each target runs in `cargo xtask test`: long enough to catch a
/// shallow regression from the committed seeds, short enough for CI.
const FUZZ_SMOKE_SECS: u32 = 20;

/// Short fuzzing runs that catch crashes on every CI run: build every target
/// once, then run each from its committed seeds (fuzz/seeds/<target>) with
/// a scratch corpus in fuzz/corpus/<target> (ignored by git). A crash fails
/// the step and leaves the input in fuzz/artifacts/<target>/.
fn fuzz_smoke_steps(tools: &Tools) -> Vec<Step> {
    let fuzz = |args: &[&str]| {
        let mut c = Command::new(&tools.cargo_fuzz);
        // cargo-fuzz is a cargo subcommand: its first argument is "fuzz".
        c.arg("fuzz").args(args).env("RUSTUP_TOOLCHAIN", "nightly");
        c
    };
    let mut steps = vec![Step {
        name: "cargo fuzz build (nightly)".into(),
        cmd: fuzz(&["build", "--release"]),
        tests: false,
    }];
    for target in FUZZ_TARGETS {
        let corpus = format!("fuzz/corpus/{target}");
        let seeds = format!("fuzz/seeds/{target}");
        let max_time = format!("-max_total_time={FUZZ_SMOKE_SECS}");
        let _ = std::fs::create_dir_all(sh::root().join(&corpus));
        steps.push(Step {
            name: format!("fuzz {target} for {FUZZ_SMOKE_SECS}s"),
            cmd: fuzz(&[
                "run",
                "--release",
                target,
                &corpus,
                &seeds,
                "--",
                &max_time,
                "-rss_limit_mb=2048",
            ]),
            tests: false,
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::FailureDigest;

    #[test]
    fn the_digest_names_each_failed_test_and_its_panic() {
        let log = "\
running 2 tests
test a::passes ... ok
test a::fails ... FAILED

failures:

---- a::fails stdout ----
some log line
thread 'a::fails' panicked at tests/it/a.rs:10:5:
assertion `left == right` failed: rows stored
  left: 3
 right: 4
more detail that is not kept
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    a::fails
";
        let mut digest = FailureDigest::default();
        for line in log.lines() {
            digest.line(line);
        }
        assert_eq!(
            digest.lines,
            [
                "failed: a::fails",
                "  thread 'a::fails' panicked at tests/it/a.rs:10:5:",
                "  assertion `left == right` failed: rows stored",
                "    left: 3",
                "   right: 4",
            ]
        );
    }
}
