//! Benchmark (not a test): the edge's CPU path stage by stage, compiled to
//! wasm32 with the edge's release profile (`edge/bench`), timed in the two
//! V8s that matter: node (`edge/bench/run.mjs`, wall clock) and plain
//! workerd, the runtime Cloudflare runs (a JS worker instantiates the
//! module and runs one stage N times per request; the isolate thread's CPU
//! time, read from /proc, divided by N). workerd freezes clocks while a
//! request runs, so its CPU can only be read from outside.
//!
//! ```sh
//! SPOOR_WORKERD=... cargo run --release -p spoor-tests --example edge_stage_bench
//! ```

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use spoor_tests::bench::{busiest_thread_delta, thread_cpu_secs};
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::tools::workspace_root;

const WORKER_JS: &str = r#"
import mod from "spoor_edge_bench.wasm";
const x = new WebAssembly.Instance(mod, {}).exports;
let prepared = false;
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/healthz") return new Response("ok");
    if (!prepared) { x.prepare(Number(url.searchParams.get("events") ?? 50)); prepared = true; }
    const sum = x.run(Number(url.searchParams.get("stage")), Number(url.searchParams.get("iters")));
    return new Response(String(sum));
  },
};
"#;

fn main() -> Result<()> {
    let root = workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "spoor-edge-bench",
        ])
        .status()
        .context("building spoor-edge-bench for wasm32")?;
    if !status.success() {
        bail!("building spoor-edge-bench for wasm32 failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| root.join("target"));
    let wasm = target.join("wasm32-unknown-unknown/release/spoor_edge_bench.wasm");

    // node: wall clock per stage.
    let out = Command::new("node")
        .env("SPOOR_BENCH_JSON", "1")
        .arg(root.join("edge/bench/run.mjs"))
        .arg(&wasm)
        .output()
        .context("running node edge/bench/run.mjs")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .with_context(|| {
            format!(
                "run.mjs printed no results: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let node: Vec<Value> = serde_json::from_str(line)?;
    println!("{}", text.lines().next().unwrap_or(""));

    // workerd: the isolate thread's CPU per stage.
    let edge = Edge::start_js_with(WORKER_JS, &[&wasm], &EdgeConfig::default())?;
    let pid = edge.pid().context("workerd's pid")?;
    let run = |stage: usize, iters: u64| -> Result<f64> {
        let before = thread_cpu_secs(pid);
        ureq::get(&format!("{}/run?stage={stage}&iters={iters}", edge.url()))
            .timeout(std::time::Duration::from_secs(120))
            .call()
            .with_context(|| format!("stage {stage} in workerd"))?;
        let busiest = busiest_thread_delta(&before, &thread_cpu_secs(pid));
        Ok(busiest * 1e6 / iters as f64)
    };
    println!("\n| stage | node µs/batch | workerd µs/batch | workerd / node |");
    println!("|---|---|---|---|");
    for (stage, n) in node.iter().enumerate() {
        let node_us = n["us_per_batch"].as_f64().unwrap_or(0.0);
        // Warm up (tier-up), then samples of about 0.5 s (the thread's CPU
        // is counted in 10 ms ticks).
        let iters = ((500_000.0 / node_us.max(0.05)) as u64 / 2).max(1);
        run(stage, iters / 4 + 1)?;
        let mut samples: Vec<f64> = (0..5).map(|_| run(stage, iters)).collect::<Result<_>>()?;
        samples.sort_by(f64::total_cmp);
        let w = samples[2];
        println!(
            "| {} | {node_us:.1} | {w:.1} | {:.2} |",
            n["stage"].as_str().unwrap_or("?"),
            w / node_us
        );
    }
    Ok(())
}
