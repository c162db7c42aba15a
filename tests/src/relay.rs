//! The `spoor-relay` binary as a child process, for tests that must crash a
//! relay for real (`kill -9`) rather than stop it through its shutdown
//! future: a killed process sends no NAK, flushes no ack and closes its
//! sockets mid-request, which is what JetStream and ClickHouse must survive.
//!
//! The binary is `$SPOOR_RELAY_BIN` (set by `cargo xtask test`, which builds
//! it first), else `target/debug/spoor-relay`. A missing binary is an error
//! naming the build command, never a skip. The process is killed on drop
//! and dies with the test process.

use crate::tools::{free_port, spawn_tied, stop_child, tail, wait_until, workspace_root};
use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long a (re)start may take before it counts as failed (stream,
/// consumer and schema set-up plus the claims replay, on a loaded box).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits after SIGTERM (the drain) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(40);

/// What a relay process connects to, and any extra `run` flags.
#[derive(Debug, Clone)]
pub struct RelayProcessConfig {
    pub nats_url: String,
    /// `--nats-ca`: the CA of a TLS-first server ([`crate::nats::NatsServer::ca_pem_path`]).
    pub nats_ca: Option<PathBuf>,
    /// `--nats-nkey-file`: the relay role's seed
    /// ([`crate::nats::NatsServer::seed_path`] of `NatsRole::Relay`).
    pub nats_nkey_file: Option<PathBuf>,
    pub clickhouse_url: String,
    pub database: String,
    /// Extra flags for `spoor-relay run`, e.g. `["--flush-interval-ms", "200"]`.
    pub args: Vec<String>,
}

/// A running (or killed) relay process; restartable on the same port.
pub struct RelayProcess {
    child: Mutex<Option<Child>>,
    binary: PathBuf,
    config: RelayProcessConfig,
    port: u16,
    // Declared last so it is removed after Drop has killed the relay.
    dir: tempfile::TempDir,
}

impl RelayProcess {
    /// The relay binary, or an error naming the command that builds it.
    pub fn binary() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os("SPOOR_RELAY_BIN") {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(p);
            }
            bail!(
                "SPOOR_RELAY_BIN={} does not exist; run `cargo build -p spoor-relay` \
                 (or `cargo xtask test`, which builds it)",
                p.display()
            );
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let p = target.join("debug/spoor-relay");
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "{} not found; run `cargo build -p spoor-relay` (or `cargo xtask test`, which builds it)",
            p.display()
        )
    }

    /// Starts a relay and waits until its `/healthz` says it runs.
    pub fn start(config: RelayProcessConfig) -> Result<RelayProcess> {
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("spoor-relay-")
            .tempdir()
            .context("creating the relay's temporary directory")?;
        let relay = RelayProcess {
            child: Mutex::new(None),
            binary,
            config,
            port: free_port()?,
            dir,
        };
        relay.spawn()?;
        Ok(relay)
    }

    /// `http://127.0.0.1:PORT`, serving `/healthz` and `/metrics`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The relay's log (stdout and stderr), across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// True while the process is alive.
    pub fn is_running(&self) -> bool {
        self.lock()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.url());
        Ok(ureq::get(&url)
            .timeout(Duration::from_secs(5))
            .call()
            .with_context(|| format!("GET {url}"))?
            .into_string()?)
    }

    /// Kills the relay at once (SIGKILL): no drain, no ack, no NAK.
    pub fn kill9(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the relay cleanly (SIGTERM: it drains and acks), then reaps it.
    pub fn stop(&self) {
        if let Some(mut child) = self.lock().take() {
            stop_child(&mut child, STOP_GRACE, false);
        }
    }

    /// Starts the relay again on the same port (after `kill9` or `stop`).
    pub fn restart(&self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the relay log")?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .args(["--nats-url", &self.config.nats_url])
            .args(
                self.config
                    .nats_ca
                    .iter()
                    .flat_map(|ca| [OsStr::new("--nats-ca"), ca.as_os_str()]),
            )
            .args(
                self.config
                    .nats_nkey_file
                    .iter()
                    .flat_map(|f| [OsStr::new("--nats-nkey-file"), f.as_os_str()]),
            )
            .args(["--clickhouse-url", &self.config.clickhouse_url])
            .args(["--clickhouse-db", &self.config.database])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.config.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied(cmd, Signal::SIGKILL)
            .with_context(|| format!("starting {}", self.binary.display()))?;
        *self.lock() = Some(child);
        let healthz = format!("{}/healthz", self.url());
        let ready = wait_until("spoor-relay /healthz", READY_TIMEOUT, || {
            if !self.is_running() {
                return true; // reported below
            }
            matches!(ureq::get(&healthz).timeout(Duration::from_secs(2)).call(), Ok(r) if r.status() == 200)
        });
        if !self.is_running() {
            bail!(
                "spoor-relay exited during start-up; log:\n{}",
                self.log_tail(40)
            );
        }
        ready.with_context(|| format!("relay log:\n{}", self.log_tail(40)))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
