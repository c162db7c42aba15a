//! `ClickHouseServer`: a real clickhouse-server (Debian's 18.16) for tests,
//! from the repository's config template `deploy/clickhouse/server.xml`
//! (loopback only, free ports, UTC, data and logs in a temp dir), with a tiny blocking client for its HTTP interface. Most
//! tests share one server per test process (`shared()`) and isolate
//! themselves with `fresh_database`; outage tests start a private one
//! (`start()`) they can stop and restart. It never reads
//! /etc/clickhouse-server and never touches a server it did not start.

use crate::tools::{self, Tool};
use anyhow::{bail, Result};
use nix::sys::signal::Signal;
use spoor_process::{ChildProcess, Spec};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A user that may read but not write (profile `readonly = 2`: settings may
/// still be changed per query, so clients that set options keep working).
/// For the aggregator's tests. No password; loopback only.
pub const READONLY_USER: &str = "spoor_readonly";

/// Temp-dir prefix of shared servers; a stale one (its test process gone)
/// is removed when the next shared server starts.
const SHARED_PREFIX: &str = "spoor-clickhouse-shared-";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct ClickHouseServer {
    http_port: u16,
    tcp_port: u16,
    dir: PathBuf,
    process: ChildProcess,
    /// Removes `dir` on drop; None for the shared server, which is never dropped.
    _temp: Option<tempfile::TempDir>,
}

impl ClickHouseServer {
    /// The test process's shared server, started on first use. It dies with
    /// the process (see `tools::spawn_tied`). Panics if it cannot start,
    /// with a message naming the set-up command when the binary is missing.
    pub fn shared() -> &'static ClickHouseServer {
        static SHARED: OnceLock<std::result::Result<ClickHouseServer, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            remove_stale_shared_dirs();
            let dir = std::env::temp_dir().join(format!("{SHARED_PREFIX}{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            ClickHouseServer::start_in(dir, None).map_err(|e| format!("{e:#}"))
        });
        match started {
            Ok(server) => server,
            Err(e) => panic!("the shared clickhouse-server did not start: {e}"),
        }
    }

    /// A private server (for outage tests), stopped and deleted on drop.
    pub fn start() -> Result<ClickHouseServer> {
        let temp = tempfile::Builder::new()
            .prefix("spoor-clickhouse-")
            .tempdir()?;
        let dir = temp.path().to_owned();
        ClickHouseServer::start_in(dir, Some(temp))
    }

    fn start_in(dir: PathBuf, temp: Option<tempfile::TempDir>) -> Result<ClickHouseServer> {
        let binary = Tool::ClickHouseServer.path()?;
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::write(dir.join("users.xml"), USERS_XML)?;
        // A free port can be taken before the server binds it; try fresh ones.
        let mut last_err = None;
        for _ in 0..3 {
            let (http_port, tcp_port) = (tools::free_port()?, tools::free_port()?);
            std::fs::write(
                dir.join("config.xml"),
                config_xml(&dir, http_port, tcp_port),
            )?;
            // Its stderr goes to its error log: a config it rejects is
            // reported there before its logger starts.
            let spec = Spec::new("clickhouse-server", &binary, dir.join("err.log"))
                .arg(format!(
                    "--config-file={}",
                    dir.join("config.xml").display()
                ))
                .current_dir(&dir)
                .tied_to_parent(Signal::SIGKILL)
                .grace(STOP_GRACE);
            let mut server = ClickHouseServer {
                http_port,
                tcp_port,
                dir: dir.clone(),
                process: ChildProcess::new(spec),
                _temp: None,
            };
            match server.spawn() {
                Ok(()) => {
                    server._temp = temp;
                    return Ok(server);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    /// Starts the process on this server's ports and waits for `SELECT 1`.
    fn spawn(&self) -> Result<()> {
        self.process
            .start_ready("SELECT 1", START_TIMEOUT, || self.query("SELECT 1").is_ok())?;
        Ok(())
    }

    /// Base URL of the HTTP interface, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native-protocol port, for `clickhouse-client --port`.
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The server's data, config and logs (`log.log`, `err.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process is up (false after `stop`/`kill`).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The server's pid while it runs (for its CPU time in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Runs one statement over HTTP as the default user and returns the body
    /// (TabSeparated unless the SQL says `FORMAT`). Errors carry the server's message.
    pub fn query(&self, sql: &str) -> Result<String> {
        self.query_as("default", sql)
    }

    /// Like `query`, as `user` (e.g. `READONLY_USER`).
    pub fn query_as(&self, user: &str, sql: &str) -> Result<String> {
        let url = format!("{}/?user={user}", self.http_url());
        match ureq::post(&url)
            .timeout(Duration::from_secs(30))
            .send_string(sql)
        {
            Ok(resp) => Ok(resp.into_string()?),
            Err(ureq::Error::Status(code, resp)) => {
                bail!(
                    "clickhouse answered {code} to {sql:?}: {}",
                    resp.into_string().unwrap_or_default().trim()
                )
            }
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("querying clickhouse at {}", self.http_url()))),
        }
    }

    /// Creates a database no other test uses and returns its name:
    /// `<prefix>_<pid>_<n>`, with the prefix reduced to `[a-z0-9_]`.
    /// Panics if the server refuses.
    pub fn fresh_database(&self, prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!(
            "{}_{}_{}",
            clean.trim_matches('_'),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let name = if name.starts_with(|c: char| c.is_ascii_digit()) {
            format!("t_{name}")
        } else {
            name
        };
        self.query(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating database {name}: {e:#}"));
        name
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 10 s). Its data
    /// and ports are kept for `restart`.
    pub fn stop(&self) {
        self.process.stop();
    }

    /// Kills the server at once (SIGKILL), like a crash.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Stops the server if it runs, then starts it again on the same ports
    /// with the same data, and waits until it answers.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        // Right after a stop the port can still be held briefly; retry.
        let mut last = None;
        for _ in 0..5 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        Err(last.expect("tried at least once"))
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        // No grace: the data dir is deleted right after.
        self.kill();
    }
}

/// Removes shared servers' dirs left by test processes that no longer run.
fn remove_stale_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SHARED_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The repository's server config template filled in for this server: its
/// ports, everything under `dir`, terse logs, room for many parallel tests.
fn config_xml(dir: &Path, http_port: u16, tcp_port: u16) -> String {
    SERVER_XML
        .replace("{{dir}}", &dir.display().to_string())
        .replace("{{http_port}}", &http_port.to_string())
        .replace("{{tcp_port}}", &tcp_port.to_string())
        .replace("{{log_level}}", "warning")
        .replace("{{mark_cache_size}}", "67108864")
        .replace("{{max_concurrent_queries}}", "200")
}

/// The server config template shared with the demo.
const SERVER_XML: &str = include_str!("../../deploy/clickhouse/server.xml");

/// The users file shared with the demo and deployments.
const USERS_XML: &str = include_str!("../../deploy/clickhouse/users.xml");
