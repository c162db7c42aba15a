//! Where the harness finds the servers' binaries and the edge build, and
//! small helpers shared by every handle: free ports, readiness polling.
//!
//! Lookup order for each tool: an explicit environment variable (set by
//! `cargo xtask test`), then the workspace-local install that `cargo xtask
//! setup` makes under `.spoor/tools/` or `node_modules/`, then the system path.
//!
//! Children are started through `spawn_tied`, which guarantees they die with
//! the test process even when it is killed; this module must never start a
//! child any other way. It holds the crate's only `unsafe` (one `pre_exec`).

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;
use std::ffi::{OsStr, OsString};
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::OnceLock;
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

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
    let dir = workspace_root().join("node_modules/playwright-core");
    if !dir.join("package.json").is_file() {
        bail!(
            "playwright-core is missing ({} has no package.json); {SETUP_HINT}",
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

type SpawnJob = (Command, Signal, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel sends it `on_parent_death` when the test
/// process dies, however it dies (panic, Ctrl-C, SIGKILL): the handles' Drop
/// is not enough on its own, and a shared server in a `static` is never
/// dropped at all.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
/// the process, and test threads (and tokio's blocking threads) come and go.
/// So every child is forked by one harness thread that lives as long as the
/// process. To kill a whole process tree, set `process_group(0)` on `cmd`
/// and kill the group.
pub fn spawn_tied(cmd: Command, on_parent_death: Signal) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("spoor-harness-spawner".into())
            .spawn(move || {
                // Ends only with the process: the static keeps a sender alive.
                for (mut cmd, signal, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd, signal));
                }
            })
            .expect("starting the harness's spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, on_parent_death, reply_tx))
        .map_err(|_| io::Error::other("the harness's spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the harness's spawner thread is gone"))?
}

#[allow(unsafe_code)] // pre_exec is unsafe to call; see the SAFETY note.
fn spawn_with_pdeathsig(cmd: &mut Command, signal: Signal) -> io::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two async-signal-safe system calls (prctl, getppid); it allocates
    // nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal).map_err(io::Error::from)?;
            // The parent may have died between fork and prctl; then no signal would come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::other(
                    "the test process exited while starting a child",
                ));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`; reaps it.
/// With `group`, signals the child's whole process group (it must have been
/// started with `process_group(0)`).
pub fn stop_child(child: &mut Child, grace: Duration, group: bool) {
    use nix::sys::signal::{kill, killpg};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(child.id() as i32);
    let signal = |s: Signal| {
        let _ = if group { killpg(pid, s) } else { kill(pid, s) };
    };
    if matches!(child.try_wait(), Ok(Some(_))) {
        if group {
            signal(Signal::SIGKILL); // stragglers left by a leader that already exited
        }
        return;
    }
    signal(Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut exited = false;
    while !exited && Instant::now() < deadline {
        exited = matches!(child.try_wait(), Ok(Some(_)));
        if !exited {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A reaped pid may be reused, so a lone child is only killed while unreaped;
    // a group id stays reserved while any member (say, workerd under wrangler) lives.
    if group || !exited {
        signal(Signal::SIGKILL);
    }
    let _ = child.wait();
}
