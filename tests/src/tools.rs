//! Where the harness finds the servers' binaries and the edge build, and
//! small helpers shared by every handle: free ports, readiness polling.
//!
//! Lookup order for each tool: an explicit environment variable (set by
//! `cargo xtask test`), then the workspace-local install that `cargo xtask
//! setup` makes under `.spoor/tools/` or `node_modules/`, then the system path.
//!
//! Children are started through `spawn_tied` (from `spoor-process`, re-exported
//! here), which guarantees they die with the test process even when it is
//! killed; the harness must never start a child any other way.

use anyhow::{bail, Context as _, Result};
use std::ffi::{OsStr, OsString};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The set-up command every missing-tool error names.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (or `cargo xtask test`, which runs it)";

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf()
}

/// A tool the harness runs.
#[derive(Debug, Clone, Copy)]
pub enum Tool {
    NatsServer,
    ClickHouseServer,
    Workerd,
    Wrangler,
    /// Debian's chromium, driven by playwright-core in the browser tests.
    Chromium,
    /// Node.js, which runs the browser tests' scripts.
    Node,
}

impl Tool {
    fn env_var(self) -> &'static str {
        match self {
            Tool::NatsServer => "SPOOR_NATS_SERVER",
            Tool::ClickHouseServer => "SPOOR_CLICKHOUSE_SERVER",
            Tool::Workerd => "SPOOR_WORKERD",
            Tool::Wrangler => "SPOOR_WRANGLER",
            Tool::Chromium => "SPOOR_CHROMIUM",
            Tool::Node => "SPOOR_NODE",
        }
    }

    fn candidates(self) -> Vec<PathBuf> {
        let root = workspace_root();
        match self {
            Tool::NatsServer => vec![root.join(".spoor/tools/nats/bin/nats-server")],
            // Debian's package installs the server in /usr/sbin.
            Tool::ClickHouseServer => {
                vec![
                    PathBuf::from("/usr/sbin/clickhouse-server"),
                    PathBuf::from("/usr/bin/clickhouse-server"),
                ]
            }
            Tool::Workerd => {
                vec![root.join("node_modules/@cloudflare/workerd-linux-64/bin/workerd")]
            }
            Tool::Wrangler => vec![root.join("node_modules/.bin/wrangler")],
            Tool::Chromium => vec![PathBuf::from("/usr/bin/chromium")],
            Tool::Node => vec![],
        }
    }

    fn binary_name(self) -> &'static str {
        match self {
            Tool::NatsServer => "nats-server",
            Tool::ClickHouseServer => "clickhouse-server",
            Tool::Workerd => "workerd",
            Tool::Wrangler => "wrangler",
            Tool::Chromium => "chromium",
            Tool::Node => "node",
        }
    }

    /// Finds the tool's binary or fails with a message naming the set-up command.
    pub fn path(self) -> Result<PathBuf> {
        self.path_in(std::env::var_os(self.env_var()), std::env::var_os("PATH"))
    }

    /// `path()` with the environment passed in: the value of the tool's
    /// `SPOOR_*` variable and of `PATH`. Lets a test check the lookup without
    /// touching the process environment.
    pub fn path_in(
        self,
        env_value: Option<OsString>,
        search_path: Option<OsString>,
    ) -> Result<PathBuf> {
        if let Some(p) = env_value {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(p);
            }
            bail!(
                "{}={} does not exist; {SETUP_HINT}",
                self.env_var(),
                p.display()
            );
        }
        for c in self.candidates() {
            if c.is_file() {
                return Ok(c);
            }
        }
        if let Some(p) = search_path.and_then(|paths| find_on_path(&paths, self.binary_name())) {
            return Ok(p);
        }
        bail!(
            "{} not found (looked at ${}, {:?} and PATH); {SETUP_HINT}",
            self.binary_name(),
            self.env_var(),
            self.candidates()
        )
    }
}

fn find_on_path(paths: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port that was free a moment ago. The OS may hand it out again before the
/// server binds it; handles retry start-up on a bind failure for that reason.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// Polls `ready` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} was not ready after {timeout:?}")
}

/// True once something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The edge's worker-build output (`index.js`, `index_bg.wasm`): $SPOOR_EDGE_BUILD
/// (set by `cargo xtask test`), else `edge/build/` in the workspace.
pub fn edge_build_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("SPOOR_EDGE_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("edge/build"));
    if !dir.join("index.js").is_file() {
        bail!(
            "the edge build is missing ({} has no index.js); run `cargo xtask build-edge` \
             (or `cargo xtask test`, which runs it)",
            dir.display()
        );
    }
    Ok(dir)
}

/// The workspace's `node_modules/playwright-core` (installed from
/// package.json by `cargo xtask setup`), which browser-test scripts import.
pub fn playwright_core_dir() -> Result<PathBuf> {
    npm_package_dir("playwright-core")
}

/// The workspace's `node_modules/<name>` (an npm package from package.json,
/// installed by `cargo xtask setup`), which test scripts import.
pub fn npm_package_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("node_modules").join(name);
    if !dir.join("package.json").is_file() {
        bail!(
            "{name} is missing ({} has no package.json); {SETUP_HINT}",
            dir.display()
        );
    }
    Ok(dir)
}

/// chdb-core (current ClickHouse in process, a Python package) as the
/// directory `pip install --target` filled, for PYTHONPATH:
/// $SPOOR_CHDB_PATH (set by `cargo xtask test`), else `.spoor/tools/chdb`
/// in the workspace, where `cargo xtask setup` installs it.
pub fn chdb_dir() -> Result<PathBuf> {
    chdb_dir_in(std::env::var_os("SPOOR_CHDB_PATH"))
}

/// `chdb_dir()` with the value of $SPOOR_CHDB_PATH passed in.
pub fn chdb_dir_in(env_value: Option<OsString>) -> Result<PathBuf> {
    let (dir, from) = match env_value {
        Some(p) => (PathBuf::from(p), "SPOOR_CHDB_PATH="),
        None => (workspace_root().join(".spoor/tools/chdb"), ""),
    };
    if !dir.join("chdb/__init__.py").is_file() {
        bail!(
            "chdb-core not found ({from}{} has no chdb/__init__.py); {SETUP_HINT}",
            dir.display()
        );
    }
    Ok(dir)
}

/// Child processes are started through [`spawn_tied`] (or a
/// [`spoor_process::ChildProcess`] whose spec is tied to the parent).
pub use spoor_process::{spawn_tied, stop_child, tail};
