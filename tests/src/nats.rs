//! A real nats-server for tests: started from the repository's own
//! `deploy/nats/nats-server.conf` on free ports with JetStream state in a
//! temporary directory, stoppable and restartable on the same port and store
//! (for outage tests), and killed on drop.
//!
//! Every server runs secured, as deployed: TLS first with a certificate
//! from a fresh throwaway CA ([`crate::pki`]), and nkey users for the four
//! roles. Clients get their credentials from the handle
//! ([`NatsServer::connect`], [`NatsServer::connect_options`],
//! [`NatsServer::seed`], [`NatsServer::ca_pem_path`]).
//!
//! It must never touch the test process's environment (tests run in
//! parallel; the config's `$SPOOR_NATS_*` variables go to the child only),
//! never skip when the binary is missing (the error names the set-up
//! command), and never leave a server running after its handle is dropped.

pub use crate::pki::NatsRole;
use crate::pki::Pki;
use crate::tools::{free_port, port_open, workspace_root, Tool};
use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;
use spoor_process::{ChildProcess, Spec};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a (re)start may take before it counts as failed. JetStream with
/// `sync_interval: always` starts in well under a second; a loaded 2-core CI
/// box gets generous slack.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Lines of the server's log searched for a lost port race.
const LOG_TAIL: usize = spoor_process::LOG_TAIL_LINES;

/// A running (or deliberately stopped) nats-server. Methods take `&self` so
/// one handle can be shared (e.g. in an `Arc`) by a test that stops the
/// server while clients run.
pub struct NatsServer {
    /// The server process, run from a spec that names this server's ports.
    process: ChildProcess,
    binary: PathBuf,
    extra_args: Vec<String>,
    /// The config file: the repository's, or an edited copy in `dir`.
    config: PathBuf,
    port: u16,
    monitor_port: u16,
    pki: Pki,
    // Declared last so it is removed after Drop has killed the server.
    dir: tempfile::TempDir,
}

/// How a test server differs from the deployed one.
#[derive(Debug, Clone, Default)]
struct Variant<'a> {
    args: &'a [&'a str],
    sync_interval: Option<&'a str>,
    /// Drop the nkey users (for `--auth <token>`, which nats-server does not
    /// accept beside a users list); TLS stays on.
    without_users: bool,
    /// Names in the server certificate instead of [`Pki::LOCAL_NAMES`].
    server_names: Option<&'a [&'a str]>,
    /// Another server's CA, certificate and keys instead of fresh ones.
    pki: Option<&'a Pki>,
    /// A server certificate that expired in 2021.
    expired: bool,
}

impl NatsServer {
    /// Starts a server with the repository's config: TLS first, nkey users.
    pub fn start() -> Result<NatsServer> {
        Self::start_with(Variant::default())
    }

    /// Starts a server with extra command-line flags, which override the
    /// config file. Restarts keep them.
    pub fn start_with_args(args: &[&str]) -> Result<NatsServer> {
        Self::start_with(Variant {
            args,
            ..Variant::default()
        })
    }

    /// Starts a server that requires `token` (`--auth`) instead of nkey
    /// users, still TLS first: for clients' token handling.
    pub fn start_with_token(token: &str) -> Result<NatsServer> {
        Self::start_with(Variant {
            args: &["--auth", token],
            without_users: true,
            ..Variant::default()
        })
    }

    /// Starts a server whose config differs from the repository's only in
    /// JetStream's `sync_interval` (e.g. `"2m"`, the server default), for
    /// measuring what the deployed `always` costs.
    pub fn start_with_sync_interval(value: &str) -> Result<NatsServer> {
        Self::start_with(Variant {
            sync_interval: Some(value),
            ..Variant::default()
        })
    }

    /// Starts a server whose certificate names only `names` (signed by its
    /// CA as usual): clients dialling 127.0.0.1 must refuse it.
    pub fn start_with_cert_names(names: &[&str]) -> Result<NatsServer> {
        Self::start_with(Variant {
            server_names: Some(names),
            ..Variant::default()
        })
    }

    /// Starts a second server (another region) with `home`'s CA,
    /// certificate and nkey users, so the same clients (one edge seed, one
    /// trusted CA) may fail over to it.
    pub fn start_sharing_keys_with(home: &NatsServer) -> Result<NatsServer> {
        Self::start_with(Variant {
            pki: Some(&home.pki),
            ..Variant::default()
        })
    }

    /// Starts a server whose certificate (signed by its CA, with the right
    /// names) expired in 2021: clients must refuse it.
    pub fn start_with_expired_cert() -> Result<NatsServer> {
        Self::start_with(Variant {
            expired: true,
            ..Variant::default()
        })
    }

    fn start_with(variant: Variant<'_>) -> Result<NatsServer> {
        let binary = Tool::NatsServer.path()?;
        let dir = tempfile::Builder::new()
            .prefix("spoor-nats-")
            .tempdir()
            .context("creating nats-server's temporary directory")?;
        let pki = match variant.pki {
            Some(shared) => shared
                .copy_into(&dir.path().join("pki"))
                .context("copying the shared test PKI")?,
            None if variant.expired => Pki::generate_expired(
                &dir.path().join("pki"),
                variant.server_names.unwrap_or(&Pki::LOCAL_NAMES),
            )
            .context("generating the test PKI")?,
            None => Pki::generate(
                &dir.path().join("pki"),
                variant.server_names.unwrap_or(&Pki::LOCAL_NAMES),
            )
            .context("generating the test PKI")?,
        };
        let mut server = NatsServer {
            process: ChildProcess::new(Spec::new("nats-server", &binary, "/dev/null")),
            binary,
            extra_args: variant.args.iter().map(|a| a.to_string()).collect(),
            config: Self::config_path(),
            port: 0,
            monitor_port: 0,
            pki,
            dir,
        };
        std::fs::create_dir_all(server.store_dir()).context("creating the JetStream store dir")?;
        if variant.sync_interval.is_some() || variant.without_users {
            let mut text = std::fs::read_to_string(&server.config)
                .with_context(|| format!("reading {}", server.config.display()))?;
            if let Some(value) = variant.sync_interval {
                let line = "sync_interval: always";
                if !text.contains(line) {
                    bail!("{} no longer says `{line}`", server.config.display());
                }
                text = text.replace(line, &format!("sync_interval: {value}"));
            }
            if variant.without_users {
                text = without_authorization(&text)
                    .with_context(|| format!("editing {}", server.config.display()))?;
            }
            let edited = server.dir.path().join("nats-server.conf");
            std::fs::write(&edited, text).context("writing the edited nats-server config")?;
            server.config = edited;
        }
        // free_port() only says the port was free a moment ago; another test
        // may bind it first. One retry on fresh ports covers that race.
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port()?;
            server.monitor_port = loop {
                let p = free_port()?;
                if p != server.port {
                    break p;
                }
            };
            server.process = ChildProcess::new(server.spec());
            match server.spawn(attempt == 1) {
                Ok(()) => return Ok(server),
                Err(e) if attempt == 1 && server.lost_port_race() => {
                    eprintln!("nats-server lost a port race, retrying on new ports: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/healthz`, `/jsz`, `/connz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// `tls://127.0.0.1:PORT`: the certificate names 127.0.0.1, and the
    /// scheme makes async-nats insist on TLS. Connect with
    /// [`NatsServer::connect_options`] (TLS first, the CA, a role's nkey).
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// `localhost:PORT`, for the edge (`NATS_URL`), which verifies the
    /// certificate against the name `localhost`.
    pub fn host_port(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The throwaway PKI this server runs with.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The CA certificate (PEM file) that clients trust.
    pub fn ca_pem_path(&self) -> &Path {
        self.pki.ca_path()
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> String {
        self.pki.ca_pem().to_string()
    }

    /// The nkey seed of `role` (`SU...`).
    pub fn seed(&self, role: NatsRole) -> String {
        self.pki.seed(role).to_string()
    }

    /// A file holding only `role`'s seed (for `--nats-nkey-file`).
    pub fn seed_path(&self, role: NatsRole) -> PathBuf {
        self.pki.seed_path(role)
    }

    /// async-nats options for `role`: TLS first, this server's CA, the
    /// role's nkey, and its inbox prefix (the edge may only read
    /// `_INBOX_EDGE.>`).
    pub fn connect_options(&self, role: NatsRole) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .name(format!("spoor-test-{}", role.name()))
            .require_tls(true)
            .tls_first()
            .add_root_certificates(self.ca_pem_path().to_path_buf())
            .nkey(self.seed(role))
            .custom_inbox_prefix(role.inbox_prefix())
    }

    /// Connects to [`NatsServer::url`] as `role`.
    pub async fn connect(&self, role: NatsRole) -> Result<async_nats::Client> {
        self.connect_options(role)
            .connect(self.url())
            .await
            .with_context(|| format!("connecting to {} as {role:?}", self.url()))
    }

    /// JetStream's store directory; it survives `stop`/`kill`/`restart`.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's combined stdout/stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// True while the server process is alive.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The server's pid while it runs (for its CPU time in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Stops the server cleanly (SIGTERM; SIGKILL after 10 s) and reaps it.
    /// The ports and the store stay reserved for `restart`. A no-op when
    /// already stopped.
    pub fn stop(&self) {
        self.process.stop();
    }

    /// Kills the server at once (SIGKILL), like a crash, and reaps it. With
    /// `sync_interval: always` every acknowledged message survives this.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Stops the server if it runs, then starts it again on the same ports
    /// with the same store and flags, and waits until it is ready.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        // The port cannot change here (clients hold the URL), so on a bind
        // failure (the port grabbed by someone else meanwhile) keep trying
        // the same one for a while.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn(false) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline && self.lost_port_race() => {
                    eprintln!("nats-server restart could not bind yet, retrying: {e:#}");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn config_path() -> PathBuf {
        workspace_root().join("deploy/nats/nats-server.conf")
    }

    /// The server on this handle's ports, store and flags; SIGKILLed
    /// should the test process die.
    fn spec(&self) -> Spec {
        Spec::new("nats-server", &self.binary, self.log_path())
            .arg("-c")
            .arg(&self.config)
            .args(&self.extra_args)
            .env("SPOOR_NATS_PORT", self.port.to_string())
            .env("SPOOR_NATS_MONITOR_PORT", self.monitor_port.to_string())
            .env("SPOOR_NATS_NAME", format!("spoor-test-{}", self.port))
            .env("SPOOR_NATS_STORE_DIR", self.store_dir())
            .envs(self.pki.server_env())
            .tied_to_parent(Signal::SIGKILL)
            .grace(STOP_GRACE)
    }

    /// Starts the process and waits for readiness; on failure it is killed
    /// and the error carries the log tail.
    fn spawn(&self, truncate_log: bool) -> Result<()> {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .write(true)
            .append(!truncate_log)
            .truncate(truncate_log)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(
            log,
            "--- spoor harness: starting nats-server on port {} ---",
            self.port
        )?;
        // /healthz answers 200 only once JetStream is up, but the monitor
        // listener starts before the client one; check both.
        self.process
            .start_ready("JetStream healthy", READY_TIMEOUT, || {
                port_open(self.port) && healthz_ok(self.monitor_port)
            })
            .with_context(|| format!("nats-server did not start on port {}", self.port))?;
        Ok(())
    }

    fn lost_port_race(&self) -> bool {
        self.log_tail(LOG_TAIL).contains("address already in use")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // No grace: the store is deleted right after.
        self.kill();
    }
}

/// The config without its `authorization { ... }` block (from that line to
/// the next line that is exactly `}`).
fn without_authorization(config: &str) -> Result<String> {
    let mut out = String::with_capacity(config.len());
    let mut skipping = false;
    let mut found = false;
    for line in config.lines() {
        if !skipping && line.starts_with("authorization {") {
            skipping = true;
            found = true;
            continue;
        }
        if skipping {
            if line == "}" {
                skipping = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !found || skipping {
        bail!("no top-level `authorization {{ ... }}` block ending in a line `}}`");
    }
    Ok(out)
}

/// True when the monitoring endpoint answers `/healthz` with 200 (ureq
/// turns any other status into an error).
pub(crate) fn healthz_ok(monitor_port: u16) -> bool {
    ureq::get(&format!("http://127.0.0.1:{monitor_port}/healthz"))
        .timeout(Duration::from_secs(2))
        .call()
        .is_ok()
}
