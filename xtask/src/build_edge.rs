//! `cargo xtask build-edge`: builds the edge worker (crate spoor-edge) to
//! `edge/build/` with worker-build, pointing it at the locally installed
//! wasm-bindgen and esbuild so it never downloads them. Skips the build when
//! every output is newer than every input (a cheap mtime check); it must
//! never decide "up to date" from anything slower or subtler than that.

use crate::setup::{require, Tools};
use crate::sh;
use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Files worker-build leaves in `<crate>/build/` that the runtimes load.
pub const OUTPUTS: [&str; 2] = ["index.js", "index_bg.wasm"];

pub fn run(tools: &Tools, force: bool) -> Result<()> {
    let root = sh::root();
    let edge = root.join("edge");
    let outputs: Vec<PathBuf> = OUTPUTS.iter().map(|f| edge.join("build").join(f)).collect();
    let inputs: Vec<PathBuf> = [
        "core/src",
        "core/Cargo.toml",
        "edge/src",
        "edge/Cargo.toml",
        "edge/nats/src",
        "edge/nats/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    if !force {
        if let (Some(out), Some(inp)) = (oldest(&outputs), newest(&inputs)) {
            if out > inp {
                println!("build-edge: up to date ({})", edge.join("build").display());
                return Ok(());
            }
        }
    }
    build_crate(tools, &edge)
}

/// Runs `worker-build --release` in `dir` and checks its outputs appeared.
pub fn build_crate(tools: &Tools, dir: &Path) -> Result<()> {
    require(&tools.worker_build, "worker-build")?;
    require(&tools.wasm_bindgen, "wasm-bindgen")?;
    require(&tools.esbuild, "esbuild")?;
    println!("build-edge: building {} with worker-build", dir.display());
    let started = SystemTime::now();
    sh::run(
        Command::new(&tools.worker_build)
            .arg("--release")
            .current_dir(dir)
            .env("WASM_BINDGEN_BIN", &tools.wasm_bindgen)
            .env("ESBUILD_BIN", &tools.esbuild),
    )
    .context("building the edge worker")?;
    for f in OUTPUTS {
        let p = dir.join("build").join(f);
        let m = mtime(&p)
            .with_context(|| format!("worker-build succeeded but {} is missing", p.display()))?;
        if m < started {
            anyhow::bail!("worker-build succeeded but did not rewrite {}", p.display());
        }
    }
    println!("build-edge: built {}", dir.join("build").display());
    Ok(())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The oldest mtime among `files`, or None if any is missing.
fn oldest(files: &[PathBuf]) -> Option<SystemTime> {
    files
        .iter()
        .map(|f| mtime(f))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
}

/// The newest mtime of anything under `paths` (files or directories, recursively).
fn newest(paths: &[PathBuf]) -> Option<SystemTime> {
    let mut best: Option<SystemTime> = None;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        // Directories count too: deleting a source file only touches its directory.
        if let Ok(m) = meta.modified() {
            best = Some(best.map_or(m, |b| b.max(m)));
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
    }
    best
}
