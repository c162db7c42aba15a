//! A real three-node nats-server cluster for tests: started from the
//! repository's own `deploy/nats/nats-server-r3.conf` on free loopback
//! ports, each node with its JetStream store in the cluster's temporary
//! directory, and each node a handle that can be killed (-9), stopped and
//! started again on its own ports and store (for fault tests).
//!
//! Clients are secured exactly as on the single-node server
//! ([`crate::nats::NatsServer`]): TLS first with one throwaway CA and one
//! server certificate shared by the three nodes, and the same nkey users
//! for the four roles. [`NatsCluster::url`] lists every node, so a native
//! client (async-nats, the relay's `--nats-url`, the CLI) fails over among
//! them; the edge takes one node ([`NatsNode::host_port`]).
//!
//! It must never touch the test process's environment (each node's `$VAR`s
//! go to that child only), never skip when the binary is missing, and
//! never leave a node running after the cluster is dropped.

use crate::nats::{healthz_ok, NatsRole};
use crate::pki::Pki;
use crate::tools::{free_port, port_open, wait_until, workspace_root, Tool};
use anyhow::{anyhow, bail, Context as _, Result};
use nix::sys::signal::Signal;
use spoor_process::{ChildProcess, Spec};
use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Nodes in the cluster: the smallest that keeps a quorum with one down.
pub const NODES: usize = 3;

/// How long a node's (re)start may take, and how long the cluster may take
/// to elect its JetStream meta leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One node of a [`NatsCluster`].
pub struct NatsNode {
    process: ChildProcess,
    index: usize,
    name: String,
    port: u16,
    monitor_port: u16,
    cluster_port: u16,
    dir: PathBuf,
}

impl NatsNode {
    /// Its position in the cluster (0, 1 or 2).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its `server_name`, as JetStream names stream leaders and peers.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/healthz`, `/jsz`, `/routez`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// `tls://127.0.0.1:PORT`, this node alone.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// `localhost:PORT`, for the edge (`NATS_URL`).
    pub fn host_port(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The node's JetStream store; it survives kill, stop and start.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("jetstream")
    }

    /// The node's combined stdout/stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// True while the node's process is alive.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Kills the node at once (SIGKILL), like a crash or a power cut, and
    /// reaps it. Its ports and store stay reserved for [`NatsNode::start`].
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Stops the node cleanly (SIGTERM; SIGKILL after 10 s) and reaps it.
    pub fn stop(&self) {
        self.process.stop();
    }

    /// Starts the node again (stopping it first if it runs) on the same
    /// ports and store, and waits until it answers `/healthz` (JetStream
    /// up, in contact with the meta leader, its streams caught up).
    pub fn start(&self) -> Result<()> {
        self.process.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn()?;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                // The port taken by someone else meanwhile: the port cannot
                // change (clients and the other nodes hold it), so retry.
                Err(e) if Instant::now() < deadline && self.lost_port_race() => {
                    eprintln!(
                        "nats node {} could not bind yet, retrying: {e:#}",
                        self.name
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&self) -> Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        writeln!(
            log,
            "--- spoor harness: starting nats node {} on port {} ---",
            self.name, self.port
        )?;
        self.process
            .start()
            .with_context(|| format!("starting nats node {}", self.name))?;
        Ok(())
    }

    /// `/healthz` answers 200 only once JetStream is up and in contact with
    /// a meta leader, which needs a quorum of the nodes: so the first start
    /// spawns every node before waiting on any.
    fn wait_ready(&self) -> Result<()> {
        let result = self
            .process
            .wait_ready("JetStream healthy", READY_TIMEOUT, || {
                port_open(self.port) && healthz_ok(self.monitor_port)
            });
        if let Err(e) = result {
            self.process.kill();
            return Err(anyhow!(e).context(format!(
                "nats node {} did not start on port {}",
                self.name, self.port
            )));
        }
        Ok(())
    }

    fn lost_port_race(&self) -> bool {
        self.log_tail(spoor_process::LOG_TAIL_LINES)
            .contains("address already in use")
    }
}

/// Three nats-server nodes in one cluster, each with JetStream.
pub struct NatsCluster {
    nodes: Vec<NatsNode>,
    pki: Pki,
    // Declared last so it is removed after the nodes are killed.
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three nodes from `deploy/nats/nats-server-r3.conf` and waits
    /// until every node is healthy and they agree on a meta leader.
    pub fn start() -> Result<NatsCluster> {
        let binary = Tool::NatsServer.path()?;
        let dir = tempfile::Builder::new()
            .prefix("spoor-nats-r3-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let pki = Pki::generate(&dir.path().join("pki"), &Pki::LOCAL_NAMES)
            .context("generating the test PKI")?;
        let mut cluster = NatsCluster {
            nodes: Self::new_nodes(&binary, dir.path(), &pki)?,
            pki,
            dir,
        };
        // free_port() only says a port was free a moment ago; one retry on
        // fresh ports covers a lost race.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match cluster.start_all() {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt == 1 && cluster.nodes.iter().any(|n| n.lost_port_race()) => {
                    eprintln!("nats cluster lost a port race, retrying on new ports: {e:#}");
                    for node in &cluster.nodes {
                        node.kill();
                    }
                    cluster.nodes = Self::new_nodes(&binary, cluster.dir.path(), &cluster.pki)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Three node handles on fresh ports with empty stores, not started.
    fn new_nodes(binary: &Path, dir: &Path, pki: &Pki) -> Result<Vec<NatsNode>> {
        let mut taken = HashSet::new();
        let mut port = || -> Result<u16> {
            loop {
                let p = free_port()?;
                if taken.insert(p) {
                    return Ok(p);
                }
            }
        };
        let ports: Vec<(u16, u16, u16)> = (0..NODES)
            .map(|_| Ok((port()?, port()?, port()?)))
            .collect::<Result<_>>()?;
        let config = workspace_root().join("deploy/nats/nats-server-r3.conf");
        (0..NODES)
            .map(|i| {
                let (port, monitor_port, cluster_port) = ports[i];
                let name = format!("spoor-r3-{i}");
                let node_dir = dir.join(&name);
                let _ = std::fs::remove_dir_all(node_dir.join("jetstream"));
                std::fs::create_dir_all(node_dir.join("jetstream"))
                    .with_context(|| format!("creating {}", node_dir.display()))?;
                let routes: Vec<String> = (0..NODES)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats-route://127.0.0.1:{}", ports[j].2))
                    .collect();
                let spec = Spec::new("nats-server", binary, node_dir.join("nats-server.log"))
                    .arg("-c")
                    .arg(&config)
                    .env("SPOOR_NATS_HOST", "127.0.0.1")
                    .env("SPOOR_NATS_PORT", port.to_string())
                    .env("SPOOR_NATS_MONITOR_PORT", monitor_port.to_string())
                    .env("SPOOR_NATS_NAME", &name)
                    .env("SPOOR_NATS_STORE_DIR", node_dir.join("jetstream"))
                    .env(
                        "SPOOR_NATS_CLUSTER_LISTEN",
                        format!("127.0.0.1:{cluster_port}"),
                    )
                    .env("SPOOR_NATS_ROUTE_1", &routes[0])
                    .env("SPOOR_NATS_ROUTE_2", &routes[1])
                    .envs(pki.server_env())
                    .tied_to_parent(Signal::SIGKILL)
                    .grace(STOP_GRACE);
                Ok(NatsNode {
                    process: ChildProcess::new(spec),
                    index: i,
                    name,
                    port,
                    monitor_port,
                    cluster_port,
                    dir: node_dir,
                })
            })
            .collect()
    }

    fn start_all(&self) -> Result<()> {
        for node in &self.nodes {
            node.spawn()?;
        }
        for node in &self.nodes {
            node.wait_ready()?;
        }
        self.wait_ready()
    }

    pub fn nodes(&self) -> &[NatsNode] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &NatsNode {
        &self.nodes[index]
    }

    /// The index of the node named `name` (a stream leader, a peer).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Every node's URL, comma-separated: what `--nats-url` takes for a
    /// cluster.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::url).collect()
    }

    /// The cluster's route ports (the `cluster { listen }` of each node).
    pub fn cluster_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.cluster_port).collect()
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn ca_pem_path(&self) -> &Path {
        self.pki.ca_path()
    }

    pub fn seed(&self, role: NatsRole) -> String {
        self.pki.seed(role).to_string()
    }

    pub fn seed_path(&self, role: NatsRole) -> PathBuf {
        self.pki.seed_path(role)
    }

    /// The cluster's temporary directory (a directory per node inside).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// async-nats options for `role`, as [`crate::nats::NatsServer::connect_options`].
    pub fn connect_options(&self, role: NatsRole) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .name(format!("spoor-test-{}", role.name()))
            .require_tls(true)
            .tls_first()
            .add_root_certificates(self.ca_pem_path().to_path_buf())
            .nkey(self.seed(role))
            .custom_inbox_prefix(role.inbox_prefix())
    }

    /// Connects as `role` to any running node (failing over among them).
    pub async fn connect(&self, role: NatsRole) -> Result<async_nats::Client> {
        self.connect_options(role)
            .connect(self.urls())
            .await
            .with_context(|| format!("connecting to {} as {role:?}", self.url()))
    }

    /// The JetStream meta leader's node, as the running nodes' `/jsz`
    /// report it: `None` until they agree on one.
    pub fn meta_leader(&self) -> Option<usize> {
        let mut leaders = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| jsz_meta_leader(n.monitor_port));
        let first = leaders.next()??;
        if leaders.all(|l| l.as_deref() == Some(first.as_str())) {
            self.index_of(&first)
        } else {
            None
        }
    }

    /// Waits until every running node is healthy and they agree on a
    /// JetStream meta leader.
    pub fn wait_ready(&self) -> Result<()> {
        wait_until("the JetStream meta leader", READY_TIMEOUT, || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .all(|n| healthz_ok(n.monitor_port))
                && self.meta_leader().is_some()
        })
        .with_context(|| format!("nats cluster in {} not ready", self.dir.path().display()))
    }

    /// The stream's leader node, from `$JS.API.STREAM.INFO.<stream>`'s
    /// `cluster.leader`: `None` while it has none (an election).
    pub async fn stream_leader(&self, stream: &str) -> Result<Option<usize>> {
        let info = self.stream_info(stream).await?;
        Ok(info
            .cluster
            .and_then(|c| c.leader)
            .and_then(|name| self.index_of(&name)))
    }

    /// `$JS.API.STREAM.INFO.<stream>`, asked as the admin.
    pub async fn stream_info(&self, stream: &str) -> Result<async_nats::jetstream::stream::Info> {
        let client = self.connect(NatsRole::Admin).await?;
        let js = async_nats::jetstream::new(client);
        let info = js
            .get_stream(stream)
            .await
            .with_context(|| format!("stream {stream}"))?
            .info()
            .await
            .with_context(|| format!("info of stream {stream}"))?
            .clone();
        Ok(info)
    }

    /// Asks `stream`'s leader to step down
    /// (`$JS.API.STREAM.LEADER.STEPDOWN.<stream>`); its followers elect
    /// another.
    pub async fn step_down(&self, stream: &str) -> Result<()> {
        let client = self.connect(NatsRole::Admin).await?;
        let reply = client
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                "".into(),
            )
            .await
            .with_context(|| format!("stepping down the leader of {stream}"))?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("the step-down answer for {stream}"))?;
        if answer["success"] != serde_json::Value::Bool(true) {
            bail!("the leader of {stream} did not step down: {answer}");
        }
        Ok(())
    }

    /// Waits until `stream` has a leader and `replicas - 1` followers that
    /// are all current; returns the leader's node.
    pub async fn wait_stream_current(
        &self,
        stream: &str,
        replicas: usize,
        timeout: Duration,
    ) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.stream_info(stream).await {
                Ok(info) => match &info.cluster {
                    Some(c) => {
                        let followers = c.replicas.iter().filter(|p| p.current).count();
                        match c.leader.as_deref().and_then(|l| self.index_of(l)) {
                            Some(leader) if followers + 1 >= replicas => return Ok(leader),
                            _ => format!("{c:?}"),
                        }
                    }
                    None => "no cluster info".to_string(),
                },
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("stream {stream} not current on {replicas} nodes after {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // No grace: the stores are deleted right after.
        for node in &self.nodes {
            node.kill();
        }
    }
}

/// `meta_cluster.leader` of a node's `/jsz`, if it names one.
fn jsz_meta_leader(monitor_port: u16) -> Option<String> {
    let body = ureq::get(&format!("http://127.0.0.1:{monitor_port}/jsz"))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
    jsz["meta_cluster"]["leader"]
        .as_str()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}
