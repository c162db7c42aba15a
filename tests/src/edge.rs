//! `Edge`: the edge worker's real WASM build (`edge/build/`, from `cargo
//! xtask build-edge`) served for tests, either by plain workerd from a
//! generated capnp config (`Edge::start`, the runtime Cloudflare runs and the
//! one to measure) or under `wrangler dev` (`Edge::start_wrangler`, for
//! Queues and the developer loop). Each instance gets a copy of the build,
//! its own config and state in a temp dir and free ports, and is stopped on
//! drop. It never builds the worker itself and never binds anything but
//! 127.0.0.1.

use crate::tools::{self, spawn_tied, stop_child, tail, workspace_root, Tool};
use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The worker's variables. Start from `EdgeConfig::new(nats_addr)` or
/// `default()` and override with `var`. On top of wrangler.toml's `[vars]`
/// the harness sets two defaults: `NATS_URL` = `127.0.0.1:1` (nothing
/// listens there, so a test that forgets it fails fast instead of reaching
/// a demo's nats-server) and `ALLOW_TEST_CF` = `"true"` (workerd has no real
/// `request.cf`; tests supply their own through the test headers, and a
/// test of the production setting passes `"false"`).
#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// Overrides for the worker's text bindings; anything not set falls
    /// back to the harness defaults, then to wrangler.toml.
    pub vars: BTreeMap<String, String>,
    /// CA certificates (PEM files) the runtime trusts for its outbound TLS:
    /// workerd through the network service's `trustedCertificates`,
    /// wrangler through `NODE_EXTRA_CA_CERTS`.
    pub trusted_cas: Vec<PathBuf>,
    /// Plain workerd only: serve V8's inspector on 127.0.0.1 at this port
    /// (for CPU profiles in benchmarks).
    pub inspector_port: Option<u16>,
}

impl EdgeConfig {
    /// A config whose edge publishes to the nats-server at `nats_addr`
    /// (`host:port`) with the deployed defaults (TLS on) and no
    /// credentials: for addresses where no Spoor server listens.
    pub fn new(nats_addr: impl Into<String>) -> Self {
        EdgeConfig::default().var("NATS_URL", nats_addr)
    }

    /// A config whose edge publishes to `nats` as deployed: TLS first to
    /// `localhost` (the name in its certificate), the CA trusted, the edge
    /// role's nkey seed.
    pub fn for_nats(nats: &crate::nats::NatsServer) -> Self {
        EdgeConfig::new(nats.host_port())
            .var("NATS_TLS", "on")
            .var("NATS_NKEY_SEED", nats.seed(crate::nats::NatsRole::Edge))
            .trust_ca(nats.ca_pem_path())
    }

    /// A config whose edge publishes to node `node` of `cluster` (the edge
    /// takes one server per region), secured as [`EdgeConfig::for_nats`].
    pub fn for_cluster_node(cluster: &crate::nats_cluster::NatsCluster, node: usize) -> Self {
        EdgeConfig::new(cluster.node(node).host_port())
            .var("NATS_TLS", "on")
            .var("NATS_NKEY_SEED", cluster.seed(crate::nats::NatsRole::Edge))
            .trust_ca(cluster.ca_pem_path())
    }

    /// Fails over to `nats` (a server sharing the home server's keys, see
    /// `NatsServer::start_sharing_keys_with`).
    pub fn secondary(self, nats: &crate::nats::NatsServer) -> Self {
        self.var("NATS_URL_SECONDARY", nats.host_port())
            .var("NATS_TLS", "on")
            .var("NATS_NKEY_SEED", nats.seed(crate::nats::NatsRole::Edge))
            .trust_ca(nats.ca_pem_path())
    }

    pub fn trust_ca(mut self, pem: &Path) -> Self {
        self.trusted_cas.push(pem.to_path_buf());
        self
    }

    /// The trusted CAs concatenated into one PEM file in `dir`, if any.
    fn write_cas(&self, dir: &Path) -> Result<Option<PathBuf>> {
        if self.trusted_cas.is_empty() {
            return Ok(None);
        }
        let mut pem = String::new();
        for ca in &self.trusted_cas {
            pem.push_str(
                &std::fs::read_to_string(ca)
                    .with_context(|| format!("reading the CA {}", ca.display()))?,
            );
            pem.push('\n');
        }
        let path = dir.join("trusted-ca.pem");
        std::fs::write(&path, pem)?;
        Ok(Some(path))
    }

    /// Serves V8's inspector at 127.0.0.1:`port` (plain workerd only).
    pub fn inspector(mut self, port: u16) -> Self {
        self.inspector_port = Some(port);
        self
    }

    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// wrangler.toml's vars, then the harness defaults, then `self.vars`.
    fn resolved_vars(&self, wrangler: &toml::Table) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        if let Some(toml::Value::Table(t)) = wrangler.get("vars") {
            for (k, v) in t {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                vars.insert(k.clone(), text);
            }
        }
        vars.insert("NATS_URL".into(), "127.0.0.1:1".into());
        vars.insert("ALLOW_TEST_CF".into(), "true".into());
        vars.extend(self.vars.clone());
        vars
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Workerd,
    Wrangler,
}

/// A running edge. `url()` is its base URL.
pub struct Edge {
    port: u16,
    runtime: Runtime,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

const READY_TIMEOUT_WORKERD: Duration = Duration::from_secs(30);
const READY_TIMEOUT_WRANGLER: Duration = Duration::from_secs(120);

impl Edge {
    /// Serves the edge build in plain workerd.
    pub fn start(config: &EdgeConfig) -> Result<Edge> {
        let workerd = Tool::Workerd.path()?;
        let wrangler_toml = repo_wrangler_toml()?;
        let vars = config.resolved_vars(&wrangler_toml);
        let date = compatibility_date(&wrangler_toml)?;
        let flags: Vec<String> = wrangler_toml
            .get("compatibility_flags")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();

        let mut last_err = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("spoor-edge-workerd-")
                .tempdir()?;
            let modules = copy_build(dir.path())?;
            let port = tools::free_port()?;
            let cas = config.write_cas(dir.path())?;
            let capnp = workerd_config(port, &modules, &date, &flags, &vars, cas.is_some(), true);
            match serve_workerd(&workerd, dir, port, &capnp, config.inspector_port) {
                Ok(edge) => return Ok(edge),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    /// Runs the edge build under `wrangler dev` (local Queues, the developer
    /// loop) with its own generated wrangler.toml, state dir, port and
    /// inspector port. wrangler's workerd children share its process group,
    /// which is killed on drop.
    pub fn start_wrangler(config: &EdgeConfig) -> Result<Edge> {
        let wrangler = Tool::Wrangler.path()?;
        let mut wrangler_toml = repo_wrangler_toml()?;
        let vars = config.resolved_vars(&wrangler_toml);

        let mut last_err = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("spoor-edge-wrangler-")
                .tempdir()?;
            copy_build(dir.path())?;
            // The copy is already built: drop `[build]` so wrangler does not run
            // `cargo xtask build-edge` from inside a test.
            wrangler_toml.remove("build");
            wrangler_toml.insert("main".into(), toml::Value::String("build/index.js".into()));
            let vars_table: toml::Table = vars
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect();
            wrangler_toml.insert("vars".into(), toml::Value::Table(vars_table));
            std::fs::write(
                dir.path().join("wrangler.toml"),
                toml::to_string(&wrangler_toml)?,
            )?;

            let (port, inspector) = (tools::free_port()?, tools::free_port()?);
            let log = dir.path().join("wrangler.log");
            let out = std::fs::File::create(&log)?;
            let mut cmd = Command::new(&wrangler);
            cmd.args(["dev", "--config", "wrangler.toml", "--ip", "127.0.0.1"])
                .args([
                    "--port",
                    &port.to_string(),
                    "--inspector-port",
                    &inspector.to_string(),
                ])
                .args([
                    "--persist-to",
                    "state",
                    "--show-interactive-dev-session=false",
                ])
                .env("WRANGLER_SEND_METRICS", "false");
            // wrangler dev's workerd trusts extra CAs through node's variable.
            if let Some(cas) = config.write_cas(dir.path())? {
                cmd.env("NODE_EXTRA_CA_CERTS", cas);
            }
            cmd
                // wrangler writes its own logs under the config home; keep them per instance.
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .current_dir(dir.path())
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            // SIGTERM, not SIGKILL: node then stops its workerd children itself.
            let child = spawn_tied(cmd, Signal::SIGTERM)
                .with_context(|| format!("starting {}", wrangler.display()))?;
            let edge = Edge {
                port,
                runtime: Runtime::Wrangler,
                log,
                child: Mutex::new(Some(child)),
                dir,
            };
            match edge.wait_ready(READY_TIMEOUT_WRANGLER) {
                Ok(()) => return Ok(edge),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    /// Serves one JavaScript module (`source`, an ES module with a default
    /// `fetch` handler that answers `GET /healthz`) in plain workerd with
    /// the edge's compatibility date: the runtime's own floor, which the
    /// edge's benchmarks compare against in the same run.
    pub fn start_js(source: &str) -> Result<Edge> {
        Edge::start_js_with(source, &[], &EdgeConfig::default())
    }

    /// `start_js`, plus wasm modules the script can import by file name
    /// (`import m from "x.wasm"`), reading only `config.inspector_port`.
    pub fn start_js_with(source: &str, wasm: &[&Path], config: &EdgeConfig) -> Result<Edge> {
        let workerd = Tool::Workerd.path()?;
        let wrangler_toml = repo_wrangler_toml()?;
        let date = compatibility_date(&wrangler_toml)?;
        let dir = tempfile::Builder::new()
            .prefix("spoor-js-workerd-")
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join("build"))?;
        std::fs::write(dir.path().join("build/worker.js"), source)?;
        let mut modules = vec![Module {
            name: "worker.js".into(),
            kind: "esModule",
        }];
        for w in wasm {
            let name = w
                .file_name()
                .context("a wasm module path names a file")?
                .to_string_lossy()
                .into_owned();
            std::fs::copy(w, dir.path().join("build").join(&name))
                .with_context(|| format!("copying {}", w.display()))?;
            modules.push(Module { name, kind: "wasm" });
        }
        let port = tools::free_port()?;
        let capnp = workerd_config(port, &modules, &date, &[], &BTreeMap::new(), false, false);
        serve_workerd(&workerd, dir, port, &capnp, config.inspector_port)
    }

    /// The runtime's process id (workerd, or wrangler's node process), for
    /// reading its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok()?.as_ref().map(|c| c.id())
    }

    /// Waits for `GET /healthz` to answer 200, failing early if the process exits.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let health = format!("{}/healthz", self.url());
        let mut last_answer = String::from("no answer");
        let mut exited = false;
        let ready = tools::wait_until("the edge", timeout, || {
            exited = !self.is_running();
            match ureq::get(&health).timeout(Duration::from_secs(2)).call() {
                Ok(r) if r.status() == 200 => return true,
                Ok(r) => last_answer = format!("HTTP {}", r.status()),
                Err(ureq::Error::Status(code, r)) => {
                    last_answer = format!("HTTP {code}: {}", r.into_string().unwrap_or_default())
                }
                Err(e) => last_answer = e.to_string(),
            }
            exited
        });
        if ready.is_err() || exited {
            self.stop();
            bail!(
                "the edge ({:?}) did not answer GET /healthz with 200 ({}; last: {last_answer}); last lines of {}:\n{}",
                self.runtime,
                if exited { "it exited" } else { "timed out" },
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The runtime's combined stdout and stderr so far (worker `console.log`s,
    /// uncaught exceptions), for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The instance's temp dir (config, copied build, wrangler state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the runtime (and, for wrangler, its whole process group).
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            stop_child(
                &mut c,
                Duration::from_secs(5),
                self.runtime == Runtime::Wrangler,
            );
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop();
    }
}

fn repo_wrangler_toml() -> Result<toml::Table> {
    let path = workspace_root().join("wrangler.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// A module of the worker, as workerd names it.
struct Module {
    name: String,
    kind: &'static str,
}

/// Copies the build's runtime files into `<dir>/build/`, so the instance
/// keeps serving what it started with while the edge is rebuilt. Returns
/// the modules: `index.js` first (the main module, ES), then every `.wasm`.
fn copy_build(dir: &Path) -> Result<Vec<Module>> {
    let src = tools::edge_build_dir()?;
    let dst = dir.join("build");
    std::fs::create_dir_all(&dst)?;
    let mut modules = vec![Module {
        name: "index.js".into(),
        kind: "esModule",
    }];
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".wasm") {
            modules.push(Module {
                name: name.clone(),
                kind: "wasm",
            });
        } else if name != "index.js" {
            continue;
        }
        std::fs::copy(entry.path(), dst.join(&name))
            .with_context(|| format!("copying {}", entry.path().display()))?;
    }
    if modules.len() < 2 {
        bail!(
            "{} has index.js but no .wasm module; rebuild with `cargo xtask build-edge --force`",
            src.display()
        );
    }
    Ok(modules)
}

/// workerd's config: one worker with text bindings, an HTTP socket on
/// 127.0.0.1:`port`, and an outbound network that may reach loopback and
/// private addresses. workerd's built-in `internet` service allows only
/// public ones, and the edge's `connect()` to a local nats-server goes
/// through globalOutbound.
fn workerd_config(
    port: u16,
    modules: &[Module],
    date: &str,
    flags: &[String],
    vars: &BTreeMap<String, String>,
    trusted_ca: bool,
    links: bool,
) -> String {
    let mut c = String::from("using Workerd = import \"/workerd/workerd.capnp\";\n\n");
    c.push_str("const config :Workerd.Config = (\n  services = [\n");
    c.push_str("    (name = \"edge\", worker = .edge),\n");
    // Outbound TLS (the edge to nats-server) trusts the test CA on top of
    // the system's roots. Without tlsOptions the network service cannot
    // speak TLS at all.
    let tls = if trusted_ca {
        ", tlsOptions = (trustedCertificates = [ embed \"trusted-ca.pem\" ])"
    } else {
        ", tlsOptions = ()"
    };
    let _ = writeln!(
        c,
        "    (name = \"outbound\", network = (allow = [\"public\", \"private\", \"local\"]{tls})),\n  ],"
    );
    let _ = writeln!(c, "  sockets = [ (name = \"http\", address = \"127.0.0.1:{port}\", http = (), service = \"edge\") ],");
    if let Ok(f) = std::env::var("SPOOR_EXPERIMENT_V8_FLAGS")
        .map(|f| f.trim().to_string())
        .and_then(|f| {
            if f.is_empty() {
                Err(std::env::VarError::NotPresent)
            } else {
                Ok(f)
            }
        })
    {
        let _ = writeln!(
            c,
            "  v8Flags = [ {} ],",
            f.split(' ').map(capnp_str).collect::<Vec<_>>().join(", ")
        );
    }
    c.push_str(");\n\n");
    c.push_str("const edge :Workerd.Worker = (\n  modules = [\n");
    for m in modules {
        let _ = writeln!(
            c,
            "    (name = {}, {} = embed {}),",
            capnp_str(&m.name),
            m.kind,
            capnp_str(&format!("build/{}", m.name))
        );
    }
    c.push_str("  ],\n");
    let _ = writeln!(c, "  compatibilityDate = {},", capnp_str(date));
    let flags: Vec<String> = flags.iter().map(|f| capnp_str(f)).collect();
    let _ = writeln!(c, "  compatibilityFlags = [{}],", flags.join(", "));
    c.push_str("  bindings = [\n");
    for (k, v) in vars {
        let _ = writeln!(c, "    (name = {}, text = {}),", capnp_str(k), capnp_str(v));
    }
    if links {
        // The NATS links: Durable Objects kept in memory (they hold sockets,
        // not data) and never evicted while the edge runs.
        let _ = writeln!(
            c,
            "    (name = \"LINK\", durableObjectNamespace = \"Link\"),"
        );
        c.push_str("  ],\n  durableObjectNamespaces = [ (className = \"Link\", uniqueKey = \"spoor-edge-link\", preventEviction = true) ],\n");
        c.push_str("  durableObjectStorage = (inMemory = void),\n");
    } else {
        c.push_str("  ],\n");
    }
    c.push_str("  globalOutbound = \"outbound\",\n);\n");
    c
}

/// wrangler.toml's compatibility date, which every runtime instance uses.
fn compatibility_date(wrangler_toml: &toml::Table) -> Result<String> {
    Ok(wrangler_toml
        .get("compatibility_date")
        .and_then(|v| v.as_str())
        .context("wrangler.toml has no compatibility_date")?
        .to_owned())
}

/// Writes `capnp` into `dir`, serves it with workerd (killed with the test
/// process) and waits until `GET /healthz` answers.
fn serve_workerd(
    workerd: &Path,
    dir: tempfile::TempDir,
    port: u16,
    capnp: &str,
    inspector_port: Option<u16>,
) -> Result<Edge> {
    std::fs::write(dir.path().join("config.capnp"), capnp)?;
    let log = dir.path().join("workerd.log");
    let out = std::fs::File::create(&log)?;
    let mut cmd = Command::new(workerd);
    cmd.args(["serve", "config.capnp", "--verbose"]);
    if let Some(p) = inspector_port {
        cmd.arg(format!("--inspector-addr=127.0.0.1:{p}"));
    }
    cmd.current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = spawn_tied(cmd, Signal::SIGKILL)
        .with_context(|| format!("starting {}", workerd.display()))?;
    let edge = Edge {
        port,
        runtime: Runtime::Workerd,
        log,
        child: Mutex::new(Some(child)),
        dir,
    };
    edge.wait_ready(READY_TIMEOUT_WORKERD)?;
    Ok(edge)
}

/// A capnp text-format string literal.
fn capnp_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capnp_strings_escape_json() {
        assert_eq!(
            capnp_str(r#"{"wk_demo":"demo"}"#),
            r#""{\"wk_demo\":\"demo\"}""#
        );
        assert_eq!(capnp_str("a\\b\n"), r#""a\\b\n""#);
    }

    #[test]
    fn caller_vars_override_defaults_and_wrangler_toml() {
        let toml: toml::Table =
            "[vars]\nREGION = \"local\"\nPARTITIONS = \"16\"\nALLOW_TEST_CF = \"false\""
                .parse()
                .unwrap();
        let vars = EdgeConfig::new("127.0.0.1:4222")
            .var("REGION", "eu")
            .resolved_vars(&toml);
        assert_eq!(vars["NATS_URL"], "127.0.0.1:4222");
        assert_eq!(vars["REGION"], "eu");
        assert_eq!(vars["PARTITIONS"], "16");
        assert_eq!(vars["ALLOW_TEST_CF"], "true");
    }
}
