//! `cargo xtask demo [--exit]`: the whole pipeline on this machine —
//! nats-server, clickhouse-server, the relay and the edge under `wrangler
//! dev` — on fixed local ports that differ from every server's default, with
//! all state in `.spoor/demo/` (wiped at start). It replays seeded traffic
//! with spoor-loadtest, prints what happened and what to try, and stays up
//! until Ctrl-C; with `--exit` it verifies and stops. It listens on
//! 127.0.0.1 only and never leaves a child running.

use crate::pki::{NatsRole, Pki};
use crate::services::{Service, Services};
use crate::setup::{self, Tools};
use crate::{build_edge, sh};
use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub struct Options {
    pub exit: bool,
    pub seed: u64,
    pub port_offset: u16,
}

/// Demo ports: fixed so the printed commands can be pasted, and away from
/// the defaults (4222, 8123, 9000, 8787, 9229) so a developer's own servers
/// keep theirs. `--port-offset` shifts them all when one is taken.
#[derive(Clone, Copy)]
struct Ports {
    nats: u16,
    nats_monitor: u16,
    ch_http: u16,
    ch_tcp: u16,
    edge: u16,
    edge_inspector: u16,
    relay: u16,
    aggregator: u16,
}

impl Ports {
    fn with_offset(offset: u16) -> Result<Ports> {
        let p = |base: u16| base.checked_add(offset).context("--port-offset too large");
        Ok(Ports {
            nats: p(14222)?,
            nats_monitor: p(18222)?,
            ch_http: p(18123)?,
            ch_tcp: p(19000)?,
            edge: p(18787)?,
            edge_inspector: p(19229)?,
            relay: p(19100)?,
            aggregator: p(18686)?,
        })
    }
}

const DB: &str = "spoor";
const WRITE_KEY: &str = "wk_demo";
const PROJECT: &str = "demo";

pub fn run(opts: Options) -> Result<()> {
    let tools = setup::run()?;
    build_edge::run(&tools, false)?;
    sh::run(
        Command::new(sh::cargo())
            .args([
                "build",
                "--release",
                "-p",
                "spoor-relay",
                "-p",
                "spoor-loadtest",
                "-p",
                "spoor-aggregator",
                // The operator CLI, for the commands README shows against the demo.
                "-p",
                "spoor-cli",
            ])
            .current_dir(sh::root()),
    )?;
    let release = sh::target_dir()?.join("release");
    let relay_bin = release.join("spoor-relay");
    let loadtest_bin = release.join("spoor-loadtest");
    let aggregator_bin = release.join("spoor-aggregator");
    let spoor_bin = release.join("spoor");

    let root = sh::root();
    let dir = root.join(".spoor/demo");
    if dir.exists() {
        println!("demo: wiping {}", dir.display());
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let ports = Ports::with_offset(opts.port_offset)?;
    check_ports_free(ports)?;
    let Ports {
        edge: edge_port,
        ch_http: ch_http_port,
        ..
    } = ports;

    // NATS runs as deployed: TLS first with a throwaway CA, one nkey user
    // per role (the seeds are files in .spoor/demo/pki/).
    let pki = Pki::generate(&dir.join("pki"), &Pki::LOCAL_NAMES)
        .context("generating the demo's CA, certificate and nkeys")?;
    let mut services = Services::default();
    start_nats(&mut services, &tools, &dir, ports, &pki)?;
    start_clickhouse(&mut services, &tools, &dir, ports)?;
    migrate(&relay_bin, ports, &pki)?;
    start_relay(&mut services, &relay_bin, &dir, ports, &pki)?;
    let read_token = demo_read_token();
    start_aggregator(&mut services, &aggregator_bin, &dir, ports, &read_token)?;
    start_edge(&mut services, &tools, &dir, ports, &pki)?;

    let summary_path = dir.join("summary.json");
    let mut loadtest = Command::new(&loadtest_bin);
    loadtest
        .arg("run")
        .args(["--edge-url", &format!("http://127.0.0.1:{edge_port}")]);
    loadtest.args(["--write-key", WRITE_KEY, "--project", PROJECT]);
    loadtest.args([
        "--events",
        "10000",
        "--users",
        "200",
        "--batch-size",
        "50",
        "--concurrency",
        "8",
    ]);
    loadtest.args([
        "--invalid-ratio",
        "0.02",
        "--resend-ratio",
        "0.1",
        "--seed",
        &opts.seed.to_string(),
    ]);
    loadtest.args([
        "--clickhouse-url",
        &format!("http://127.0.0.1:{ch_http_port}"),
        "--clickhouse-db",
        DB,
    ]);
    loadtest.arg("--json-summary").arg(&summary_path);
    println!("\n$ {}", sh::display(&loadtest));
    let loadtest_ok = loadtest
        .status()
        .context("starting spoor-loadtest")?
        .success();
    services.check_all()?;

    let text = std::fs::read_to_string(&summary_path).with_context(|| {
        format!(
            "spoor-loadtest wrote no summary to {}",
            summary_path.display()
        )
    })?;
    let s: Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", summary_path.display()))?;
    print_summary(&s, &dir);
    print_relay_summary(ports.relay);
    let aggregated = aggregator_count(ports.aggregator, &read_token);
    match &aggregated {
        Ok(n) => println!("  aggregator counts {n} events for project {PROJECT} (POST /v1/projects/{PROJECT}/metrics)"),
        Err(e) => println!("  aggregator did not answer: {e:#}"),
    }
    let dashboard = format!(
        "http://127.0.0.1:{}/#project={PROJECT}&token={read_token}",
        ports.aggregator
    );

    let last_line = format!(
        "demo: sent={} accepted={} rejected={} stored={} p99_ack_ms={}",
        s["sent"], s["accepted"], s["rejected"], s["stored"], s["p99_ack_ms"]
    );
    if opts.exit {
        let mut problems = Vec::new();
        if !loadtest_ok {
            problems.push("spoor-loadtest exited non-zero".to_owned());
        }
        if s["stored"].as_u64().is_none() || s["stored"] != s["unique_valid"] {
            problems.push(format!(
                "stored={} but unique_valid={}",
                s["stored"], s["unique_valid"]
            ));
        }
        if s["ok"] != Value::Bool(true) {
            problems.push(format!("the summary says ok={}", s["ok"]));
        }
        match &aggregated {
            Ok(n) if Some(*n) == s["stored"].as_u64() => {}
            Ok(n) => problems.push(format!(
                "the aggregator counts {n} events but stored={}",
                s["stored"]
            )),
            Err(e) => problems.push(format!("the aggregator did not answer: {e:#}")),
        }
        services.stop_all();
        for p in &problems {
            println!("demo: MISMATCH: {p}");
        }
        println!("{last_line}");
        if !problems.is_empty() {
            std::process::exit(1);
        }
        return Ok(());
    }

    print_things_to_try(ports, &read_token, &spoor_bin);
    println!("\nDashboard: {dashboard}");
    if !loadtest_ok {
        println!("demo: WARNING: spoor-loadtest reported a mismatch (see above); everything stays up for you to look");
    }
    println!("{last_line}");
    println!("\ndemo: running; press Ctrl-C to stop everything");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        services.check_all()?;
    }
}

fn check_ports_free(ports: Ports) -> Result<()> {
    for (port, what) in [
        (ports.nats, "nats-server"),
        (ports.nats_monitor, "nats-server monitoring"),
        (ports.ch_http, "clickhouse http"),
        (ports.ch_tcp, "clickhouse tcp"),
        (ports.edge, "edge (wrangler dev)"),
        (ports.edge_inspector, "wrangler inspector"),
        (ports.relay, "relay"),
        (ports.aggregator, "aggregator"),
    ] {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} ({what}) is already in use on 127.0.0.1; is another demo running? (--port-offset N shifts every demo port)");
        }
    }
    Ok(())
}

fn start_nats(
    services: &mut Services,
    tools: &Tools,
    dir: &Path,
    ports: Ports,
    pki: &Pki,
) -> Result<()> {
    let Ports {
        nats: nats_port,
        nats_monitor: nats_monitor_port,
        ..
    } = ports;
    setup::require(&tools.nats_server, "nats-server")?;
    let mut cmd = Command::new(&tools.nats_server);
    cmd.arg("-c")
        .arg(sh::root().join("deploy/nats/nats-server.conf"));
    cmd.env("SPOOR_NATS_PORT", nats_port.to_string())
        .env("SPOOR_NATS_MONITOR_PORT", nats_monitor_port.to_string())
        .env("SPOOR_NATS_NAME", "spoor-demo")
        .env("SPOOR_NATS_STORE_DIR", dir.join("nats"))
        .envs(pki.server_env());
    let s = services.push(Service::start(
        "nats-server",
        cmd,
        &dir.join("nats-server.log"),
    )?);
    // /healthz answers 200 once JetStream is up, not just the client port.
    let health = format!("http://127.0.0.1:{nats_monitor_port}/healthz");
    s.wait_ready("JetStream healthy", Duration::from_secs(30), || {
        http_status(&health) == Some(200)
    })
}

fn start_clickhouse(
    services: &mut Services,
    tools: &Tools,
    dir: &Path,
    ports: Ports,
) -> Result<()> {
    let ch_http_port = ports.ch_http;
    setup::require(&tools.clickhouse_server, "clickhouse-server")?;
    let ch = dir.join("clickhouse");
    std::fs::create_dir_all(ch.join("data"))?;
    std::fs::write(ch.join("config.xml"), clickhouse_config(&ch, ports))?;
    std::fs::write(ch.join("users.xml"), CLICKHOUSE_USERS)?;
    println!(
        "      config: {} (from deploy/clickhouse/server.xml)",
        ch.join("config.xml").display()
    );
    let mut cmd = Command::new(&tools.clickhouse_server);
    cmd.arg(format!("--config-file={}", ch.join("config.xml").display()));
    cmd.current_dir(&ch);
    let s = services.push(Service::start(
        "clickhouse-server",
        cmd,
        &dir.join("clickhouse-server.log"),
    )?);
    let url = format!("http://127.0.0.1:{ch_http_port}/");
    // The relay creates the database and tables itself (its migrations).
    s.wait_ready("SELECT 1", Duration::from_secs(60), || {
        clickhouse(&url, "SELECT 1").is_ok()
    })
}

/// The NATS flags of a native client as `role`: TLS first against the
/// demo's CA, the role's seed file.
fn nats_args(cmd: &mut Command, ports: Ports, pki: &Pki, role: NatsRole) {
    cmd.args(["--nats-url", &format!("tls://localhost:{}", ports.nats)])
        .arg("--nats-ca")
        .arg(pki.ca_path())
        .arg("--nats-nkey-file")
        .arg(pki.seed_path(role));
}

/// `spoor-relay migrate` with the admin key: streams and schema, as a
/// deployment applies them before relays (which hold only the relay key).
fn migrate(relay_bin: &Path, ports: Ports, pki: &Pki) -> Result<()> {
    let mut cmd = Command::new(relay_bin);
    cmd.arg("migrate");
    nats_args(&mut cmd, ports, pki, NatsRole::Admin);
    cmd.args([
        "--clickhouse-url",
        &format!("http://127.0.0.1:{}", ports.ch_http),
    ])
    .args(["--clickhouse-db", DB])
    .env("NO_COLOR", "1");
    println!("$ {}", sh::display(&cmd));
    let status = cmd.status().context("starting spoor-relay migrate")?;
    if !status.success() {
        bail!("spoor-relay migrate failed ({status})");
    }
    Ok(())
}

fn start_relay(
    services: &mut Services,
    relay_bin: &Path,
    dir: &Path,
    ports: Ports,
    pki: &Pki,
) -> Result<()> {
    let Ports {
        ch_http: ch_http_port,
        relay: relay_port,
        ..
    } = ports;
    let mut cmd = Command::new(relay_bin);
    cmd.arg("run");
    nats_args(&mut cmd, ports, pki, NatsRole::Relay);
    cmd.args([
        "--clickhouse-url",
        &format!("http://127.0.0.1:{ch_http_port}"),
    ])
    .args(["--clickhouse-db", DB])
    .args(["--listen", &format!("127.0.0.1:{relay_port}")])
    // The edge's one project (WRITE_KEYS in wrangler.toml): frames of any
    // other go to the dead letters.
    .args(["--projects", PROJECT])
    // Its log goes to a file: no ANSI colours (tracing-subscriber honours NO_COLOR).
    .env("NO_COLOR", "1");
    let s = services.push(Service::start("spoor-relay", cmd, &dir.join("relay.log"))?);
    let health = format!("http://127.0.0.1:{relay_port}/healthz");
    s.wait_ready("GET /healthz = 200", Duration::from_secs(60), || {
        http_status(&health) == Some(200)
    })
}

/// A fresh read token for the demo's project (the aggregator requires one
/// per project): 32 hex characters from the OS's random source.
fn demo_read_token() -> String {
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn start_aggregator(
    services: &mut Services,
    aggregator_bin: &Path,
    dir: &Path,
    ports: Ports,
    read_token: &str,
) -> Result<()> {
    let mut cmd = Command::new(aggregator_bin);
    cmd.args([
        "--clickhouse-url",
        &format!("http://127.0.0.1:{}", ports.ch_http),
    ])
    .args(["--clickhouse-db", DB])
    .args(["--clickhouse-user", "spoor_readonly"])
    .args(["--listen", &format!("127.0.0.1:{}", ports.aggregator)])
    .env("SPOOR_READ_TOKENS", format!("{PROJECT}={read_token}"))
    .env("NO_COLOR", "1");
    let s = services.push(Service::start(
        "spoor-aggregator",
        cmd,
        &dir.join("aggregator.log"),
    )?);
    let health = format!("http://127.0.0.1:{}/healthz", ports.aggregator);
    s.wait_ready("GET /healthz = 200", Duration::from_secs(60), || {
        http_status(&health) == Some(200)
    })
}

/// Events of the demo's project over the last day, as the aggregator's
/// metrics API counts them.
fn aggregator_count(port: u16, read_token: &str) -> Result<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let body = serde_json::json!({
        "measure": {"kind": "count"},
        "since_ms": now - 2 * 86_400_000,
        "until_ms": now + 86_400_000,
        "granularity": "day",
    });
    let url = format!("http://127.0.0.1:{port}/v1/projects/{PROJECT}/metrics");
    let answer: Value = match ureq::post(&url)
        .timeout(Duration::from_secs(30))
        .set("Authorization", &format!("Bearer {read_token}"))
        .send_string(&body.to_string())
    {
        Ok(r) => serde_json::from_str(&r.into_string()?)?,
        Err(ureq::Error::Status(code, r)) => bail!(
            "the aggregator answered {code}: {}",
            r.into_string().unwrap_or_default()
        ),
        Err(e) => return Err(e.into()),
    };
    let rows = answer["rows"]
        .as_array()
        .with_context(|| format!("no rows in {answer}"))?;
    Ok(rows.iter().filter_map(|r| r["value"].as_f64()).sum::<f64>() as u64)
}

fn start_edge(
    services: &mut Services,
    tools: &Tools,
    dir: &Path,
    ports: Ports,
    pki: &Pki,
) -> Result<()> {
    let Ports {
        nats: nats_port,
        edge: edge_port,
        ..
    } = ports;
    setup::require(&tools.wrangler, "wrangler")?;
    let root = sh::root();
    let mut cmd = Command::new(&tools.wrangler);
    cmd.arg("dev")
        .arg("--config")
        .arg(root.join("wrangler.toml"))
        .args(["--ip", "127.0.0.1", "--port", &ports.edge.to_string()])
        .args(["--inspector-port", &ports.edge_inspector.to_string()])
        // The edge dials NATS by the name in its certificate, TLS first
        // (workerd's secureTransport "on"), trusting the demo CA through
        // NODE_EXTRA_CA_CERTS, and signs in with the edge role's nkey. The
        // seed is a throwaway demo key; production sets it with
        // `wrangler secret put NATS_NKEY_SEED`.
        .args(["--var", &format!("NATS_URL:localhost:{nats_port}")])
        .args(["--var", "NATS_TLS:on"])
        .args([
            "--var",
            &format!("NATS_NKEY_SEED:{}", pki.seed(NatsRole::Edge)),
        ])
        .env("NODE_EXTRA_CA_CERTS", pki.ca_path())
        .arg("--persist-to")
        .arg(dir.join("wrangler-state"))
        .args(["--show-interactive-dev-session=false"])
        .env("WRANGLER_SEND_METRICS", "false")
        .current_dir(&root);
    let s = services.push(Service::start(
        "edge (wrangler dev)",
        cmd,
        &dir.join("wrangler.log"),
    )?);
    let health = format!("http://127.0.0.1:{edge_port}/healthz");
    // wrangler runs wrangler.toml's build command (`cargo xtask build-edge`) first.
    s.wait_ready("GET /healthz = 200", Duration::from_secs(180), || {
        http_status(&health) == Some(200)
    })
}

fn print_summary(s: &Value, dir: &Path) {
    println!("\ndemo: summary");
    println!(
        "  events   sent {}  accepted {}  rejected {}  unique valid {}  stored {}  ok {}",
        s["sent"], s["accepted"], s["rejected"], s["unique_valid"], s["stored"], s["ok"]
    );
    println!(
        "  ack ms   p50 {}  p90 {}  p99 {}  max {}",
        s["p50_ack_ms"], s["p90_ack_ms"], s["p99_ack_ms"], s["max_ack_ms"]
    );
    println!(
        "  rate     {} events/s; all stored {} ms after the last ack",
        rounded(&s["events_per_sec"]),
        rounded(&s["store_delay_ms"])
    );
    println!("  state and logs: {}", dir.display());
}

/// The relay's side of the run, from its `/metrics`: rows inserted, inserts,
/// and the insert rate while inserting (rows / time spent in inserts).
fn print_relay_summary(relay_port: u16) {
    let url = format!("http://127.0.0.1:{relay_port}/metrics");
    let text = match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => r.into_string().unwrap_or_default(),
        Err(e) => {
            println!("  relay    /metrics unavailable: {e}");
            return;
        }
    };
    let page = crate::prometheus::Metrics::parse_lossy(&text);
    let metric = |name: &str| -> f64 { page.get(name).unwrap_or(0.0) };
    let rows = metric("spoor_relay_rows_inserted_total");
    let inserts = metric("spoor_relay_insert_duration_seconds_count");
    let insert_secs = metric("spoor_relay_insert_duration_seconds_sum");
    let deduped = metric("spoor_relay_events_deduped_total");
    let rate = if insert_secs > 0.0 {
        rows / insert_secs
    } else {
        0.0
    };
    println!(
        "  relay    inserted {rows:.0} rows in {inserts:.0} inserts ({:.0} rows/insert), \
         {rate:.0} rows/s while inserting; {deduped:.0} duplicates dropped",
        if inserts > 0.0 { rows / inserts } else { 0.0 }
    );
}

/// A JSON number without the float noise, for the human-readable summary.
fn rounded(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() => format!("{f:.0}"),
        _ => v.to_string(),
    }
}

fn print_things_to_try(ports: Ports, read_token: &str, spoor_bin: &Path) {
    let Ports {
        nats_monitor: nats_monitor_port,
        ch_http: ch_http_port,
        ch_tcp: ch_tcp_port,
        edge: edge_port,
        relay: relay_port,
        ..
    } = ports;
    let q = |sql: &str| {
        format!("  clickhouse-client --port {ch_tcp_port} --database {DB} --query \"{sql}\"")
    };
    println!("\nQueries to try:");
    println!("{}", q("SELECT count() FROM events"));
    println!(
        "{}",
        q("SELECT event, count() AS n FROM events GROUP BY event ORDER BY n DESC")
    );
    println!("{}", q("SELECT country, browser, uniq(anonymous_id) AS devices FROM events GROUP BY country, browser ORDER BY devices DESC LIMIT 10"));
    println!(
        "{}",
        q("SELECT level, count() FROM (SELECT anonymous_id, windowFunnel(3600)(event_time, event = 'page_view', event = 'add_to_cart', event = 'purchase') AS level FROM events GROUP BY anonymous_id) GROUP BY level ORDER BY level")
    );
    println!("  curl -s 'http://127.0.0.1:{ch_http_port}/?database={DB}' --data-binary 'SELECT toStartOfMinute(event_time) AS m, count() FROM events GROUP BY m ORDER BY m'");
    println!("\nSend your own events:");
    println!("  curl -s http://127.0.0.1:{edge_port}/healthz");
    println!(
        "  curl -s -X POST http://127.0.0.1:{edge_port}/v1/batch -H 'X-Spoor-Write-Key: {WRITE_KEY}' -H 'Content-Type: application/json' \\\n    --data '{{\"batch\":[{{\"event\":\"page_view\",\"anonymous_id\":\"anon-try-1\",\"properties\":{{\"path\":\"/pricing\"}}}}]}}'"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let day = 86_400_000;
    let today = now_ms - now_ms.rem_euclid(day);
    println!("\nAsk the aggregator (the API is described at /openapi.json):");
    println!(
        "  curl -s http://127.0.0.1:{}/v1/projects/{PROJECT}/metrics -H 'Authorization: Bearer {read_token}' \\\n    --data '{{\"measure\":{{\"kind\":\"unique_users\"}},\"events\":[\"purchase\"],\"since_ms\":{},\"until_ms\":{},\"granularity\":\"hour\",\"group_by\":[\"country\"]}}'",
        ports.aggregator,
        today,
        today + day,
    );
    // Relative to the repository's root when it is inside it, as README shows it.
    let spoor = spoor_bin
        .strip_prefix(sh::root())
        .unwrap_or(spoor_bin)
        .display();
    println!("\nAsk the relays and ClickHouse with the operator CLI, as the ops role (TLS first, the demo's CA and ops nkey):");
    println!(
        "  export SPOOR_NATS_URL=tls://localhost:{} SPOOR_NATS_CA=.spoor/demo/pki/ca.pem SPOOR_NATS_NKEY_FILE=.spoor/demo/pki/ops.nk SPOOR_CLICKHOUSE_URL=http://127.0.0.1:{ch_http_port}",
        ports.nats
    );
    println!("  {spoor} dead-letters list");
    println!("  {spoor} reconcile --since 1h --relay http://127.0.0.1:{relay_port}");
    println!("  {spoor} debug device <anonymous id> --last 1h --project {PROJECT}");
    println!("\nLook inside:");
    println!("  curl -s http://127.0.0.1:{relay_port}/metrics");
    println!("  curl -s 'http://127.0.0.1:{nats_monitor_port}/jsz?streams=true'");
}

/// Any HTTP status from `url`, or None if nothing answered.
fn http_status(url: &str) -> Option<u16> {
    match ureq::get(url).timeout(Duration::from_secs(2)).call() {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None,
    }
}

/// Runs one statement over ClickHouse's HTTP interface.
fn clickhouse(url: &str, sql: &str) -> Result<String> {
    match ureq::post(url)
        .timeout(Duration::from_secs(10))
        .send_string(sql)
    {
        Ok(r) => Ok(r.into_string()?),
        Err(ureq::Error::Status(code, r)) => bail!(
            "clickhouse answered {code} to {sql:?}: {}",
            r.into_string().unwrap_or_default()
        ),
        Err(e) => Err(e.into()),
    }
}

/// The repository's server config template (no /etc/clickhouse-server:
/// loopback only, UTC, no interserver port) filled in with the demo's ports,
/// data and logs under `dir`, and logs a developer can read.
fn clickhouse_config(dir: &Path, ports: Ports) -> String {
    CLICKHOUSE_SERVER
        .replace("{{dir}}", &dir.display().to_string())
        .replace("{{http_port}}", &ports.ch_http.to_string())
        .replace("{{tcp_port}}", &ports.ch_tcp.to_string())
        .replace("{{log_level}}", "information")
        .replace("{{mark_cache_size}}", "268435456")
        .replace("{{max_concurrent_queries}}", "100")
}

/// The server config template shared with the test harness.
const CLICKHOUSE_SERVER: &str = include_str!("../../deploy/clickhouse/server.xml");

/// The users file shared with the test harness and deployments: the
/// relay's `default` user and the aggregator's read-only `spoor_readonly`.
const CLICKHOUSE_USERS: &str = include_str!("../../deploy/clickhouse/users.xml");
