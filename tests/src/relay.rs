//! The `spoor-relay` binary as a child process, for tests that must crash a
//! relay for real (`kill -9`) rather than stop it through its shutdown
//! future: a killed process sends no NAK, flushes no ack and closes its
//! sockets mid-request, which is what JetStream and ClickHouse must survive.
//!
//! The binary is `$SPOOR_RELAY_BIN` (set by `cargo xtask test`, which builds
//! it first), else `target/debug/spoor-relay`. A missing binary is an error
//! naming the build command, never a skip. The process is killed on drop
//! and dies with the test process.

use crate::tools::{free_port, workspace_root};
use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;
use spoor_process::{ChildProcess, Spec};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

/// How long a (re)start may take before it counts as failed (stream,
/// consumer, leases and schema set-up, on a loaded box).
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
    /// `--projects`: the projects the relay inserts (those of the edge's
    /// `WRITE_KEYS`, or of the frames a test publishes); frames of others
    /// are dead-lettered. Empty: the flag is left out, and every non-empty
    /// project is inserted.
    pub projects: Vec<String>,
    /// Extra flags for `spoor-relay run`, e.g. `["--flush-interval-ms", "200"]`.
    pub args: Vec<String>,
}

/// A running (or killed) relay process; restartable on the same port.
pub struct RelayProcess {
    process: ChildProcess,
    port: u16,
    // Declared last so it is removed after Drop has killed the relay.
    _dir: tempfile::TempDir,
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
        let port = free_port()?;
        let log = dir.path().join("relay.log");
        let spec = Spec::new("spoor-relay", binary, log)
            .arg("run")
            .args(["--nats-url", &config.nats_url])
            .args(
                config
                    .nats_ca
                    .iter()
                    .flat_map(|ca| [OsStr::new("--nats-ca"), ca.as_os_str()]),
            )
            .args(
                config
                    .nats_nkey_file
                    .iter()
                    .flat_map(|f| [OsStr::new("--nats-nkey-file"), f.as_os_str()]),
            )
            .args(["--clickhouse-url", &config.clickhouse_url])
            .args(["--clickhouse-db", &config.database])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(
                (!config.projects.is_empty())
                    .then(|| ["--projects".to_string(), config.projects.join(",")])
                    .into_iter()
                    .flatten(),
            )
            .args(&config.args)
            .env("RUST_LOG", "info")
            .tied_to_parent(Signal::SIGKILL)
            .grace(STOP_GRACE);
        let relay = RelayProcess {
            process: ChildProcess::new(spec),
            port,
            _dir: dir,
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
        self.process.log_path().to_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// True while the process is alive.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The relay's pid while it runs (for its CPU time in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> Result<String> {
        crate::metrics::fetch(&self.url())
    }

    /// Kills the relay at once (SIGKILL): no drain, no ack, no NAK.
    pub fn kill9(&self) {
        self.process.kill();
    }

    /// Freezes the relay (SIGSTOP): it neither renews its leases nor does
    /// anything else until [`RelayProcess::thaw`], like a process stalled
    /// by its host.
    pub fn freeze(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Lets a frozen relay run again (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.process.pid().context("the relay is not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, signal).with_context(|| format!("{signal} to the relay"))?;
        Ok(())
    }

    /// Stops the relay cleanly (SIGTERM: it drains and acks), then reaps it.
    pub fn stop(&self) {
        self.process.stop();
    }

    /// Starts the relay again on the same port (after `kill9` or `stop`).
    pub fn restart(&self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&self) -> Result<()> {
        let healthz = format!("{}/healthz", self.url());
        self.process
            .start_ready("GET /healthz = 200", READY_TIMEOUT, || {
                matches!(ureq::get(&healthz).timeout(Duration::from_secs(2)).call(), Ok(r) if r.status() == 200)
            })?;
        Ok(())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
