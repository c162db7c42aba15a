//! The web SDK (`sdk/web`): its script-tag build stays under 3 KB gzipped,
//! and in headless chromium (Debian's, through playwright-core, driven by
//! tests/browser/web_sdk.mjs) against the real pipeline (the edge in workerd
//! → nats-server → the relay → clickhouse-server) every event a page tracks
//! is stored once:
//!
//! - through an offline spell with a reload in the middle (the localStorage
//!   queue survives, its oldest events are dropped and counted when full,
//!   and the dropped ones are indeed not stored);
//! - when the page is closed right after tracking (the pagehide path, a
//!   keepalive request), with sessions, identify, alias and reset as stored,
//!   a page clock two hours slow put right by `sent_at`, and a second tab
//!   whose writes keep the first tab's events in the shared queue;
//! - through a 429 storm from a low rate limit, waited out by Retry-After
//!   (and a 401 and an invalid event, which are final and counted),
//!   with the ES module build and the UUID fallback.
//!
//! The page comes from a small static server here on another port than the
//! edge, so every request is cross-origin, as it is on a real site.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::NatsServer;
use spoor_tests::tools::{self, Tool};

use crate::support::Relay;

const WRITE_KEY: &str = "wk_web";
const PROJECT: &str = "web";
/// The size the issue allows the script-tag build, minified and gzipped.
const GZIP_BUDGET: usize = 3 * 1024;
/// The longest a browser scenario may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);
/// How far apart an event's corrected time and its arrival may be (it
/// waited in the page's queue), and its timestamps after removing the skew.
const CLOCK_SLACK_MS: i64 = 60_000;
/// How long the stored events may take to show up in ClickHouse.
const STORE_WAIT: Duration = Duration::from_secs(60);

/// The SDK, built once per test run by `sdk/web/build.mjs` into a temp dir
/// (never into the checkout's `sdk/web/dist`, which a developer may be using).
fn sdk_build() -> &'static Path {
    static BUILD: OnceLock<tempfile::TempDir> = OnceLock::new();
    BUILD
        .get_or_init(|| {
            let node = Tool::Node.path().unwrap_or_else(|e| panic!("{e:#}"));
            let dir = tempfile::Builder::new()
                .prefix("spoor-web-sdk-")
                .tempdir()
                .unwrap();
            let out = Command::new(node)
                .arg(tools::workspace_root().join("sdk/web/build.mjs"))
                .arg(dir.path())
                .output()
                .expect("running node");
            assert!(
                out.status.success(),
                "building the web SDK failed (esbuild comes from npm; {}):\n{}{}",
                tools::SETUP_HINT,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .path()
}

#[test]
fn script_tag_build_is_under_3_kb_minified_and_gzipped() {
    let js = std::fs::read(sdk_build().join("spoor.js")).unwrap();
    assert!(
        String::from_utf8_lossy(&js).starts_with("var spoor="),
        "the IIFE defines the global `spoor`"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&js).unwrap();
    let gzipped = gz.finish().unwrap().len();
    eprintln!(
        "web sdk: spoor.js {} bytes minified, {gzipped} gzipped (budget {GZIP_BUDGET})",
        js.len()
    );
    assert!(
        gzipped < GZIP_BUDGET,
        "spoor.js is {gzipped} bytes gzipped, over the {GZIP_BUDGET}-byte budget"
    );
    let esm = std::fs::read_to_string(sdk_build().join("spoor.mjs")).unwrap();
    assert!(esm.contains("export{"), "spoor.mjs is an ES module");
}

/// Reads an event back from the SDK's queue in localStorage, as it was
/// queued (the browser script records what each call queued).
const REC: &str = r#"<script>window.rec = (id) => {
  const e = JSON.parse(localStorage.getItem('spoor.q')).find((e) => e.event_id === id);
  return { event_id: id, event: e.event, user_id: e.user_id || '', anonymous_id: e.anonymous_id,
           session_id: e.session_id, properties: e.properties };
};</script>"#;

/// The pages: the SDK initialised with the options in the URL's fragment.
fn site_files() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let init = "spoor.init(JSON.parse(decodeURIComponent(location.hash.slice(1))));";
    let index = format!(
        "<!doctype html><title>Spoor SDK test</title><link rel=icon href=\"data:,\">{REC}\
         <script src=\"/spoor.js\"></script><script>{init}</script>"
    );
    let esm = format!(
        "<!doctype html><title>Spoor SDK test (ESM)</title><link rel=icon href=\"data:,\">{REC}\
         <script type=\"module\">import * as spoor from '/spoor.mjs'; window.spoor = spoor; {init}</script>"
    );
    let build = sdk_build();
    vec![
        ("/index.html", "text/html", index.into_bytes()),
        ("/esm.html", "text/html", esm.into_bytes()),
        (
            "/spoor.js",
            "text/javascript",
            std::fs::read(build.join("spoor.js")).unwrap(),
        ),
        (
            "/spoor.mjs",
            "text/javascript",
            std::fs::read(build.join("spoor.mjs")).unwrap(),
        ),
    ]
}

/// A static HTTP server on 127.0.0.1 for the test's pages: a thread per
/// connection (chromium opens idle sockets ahead of need), one answer per
/// connection, no caching. Stopped on drop.
pub(crate) struct Site {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Files = Arc<Vec<(&'static str, &'static str, Vec<u8>)>>;

impl Site {
    pub(crate) fn serve(files: Vec<(&'static str, &'static str, Vec<u8>)>) -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let files: Files = Arc::new(files);
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let files = files.clone();
                    std::thread::spawn(move || answer(conn, &files));
                }
            }
        });
        Site {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut conn: TcpStream, files: &Files) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let (status, ctype, body): (&str, &str, &[u8]) =
        match files.iter().find(|(name, ..)| *name == path) {
            Some((_, ctype, body)) => ("200 OK", ctype, body),
            None => ("404 Not Found", "text/plain", b"not found"),
        };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(body);
}

/// nats-server, a fresh database, the relay in-process and the edge in
/// workerd with `edge_vars` on top of the write key.
struct Stack {
    // Field order is drop order: the edge before NATS.
    edge: Edge,
    relay: Option<Relay>,
    _nats: NatsServer,
    ch: &'static ClickHouseServer,
    db: String,
}

impl Stack {
    async fn start(name: &str, edge_vars: &[(&str, &str)]) -> Stack {
        let nats = NatsServer::start().unwrap();
        let ch = ClickHouseServer::shared();
        let db = ch.fresh_database(name);
        let relay = Relay::start(crate::support::project_relay_config(
            &nats, ch, &db, PROJECT,
        ))
        .await;
        let mut edge_config = EdgeConfig::for_nats(&nats)
            .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
            .var("PARTITIONS", "4");
        for (k, v) in edge_vars {
            edge_config = edge_config.var(*k, *v);
        }
        let edge = Edge::start(&edge_config).unwrap();
        Stack {
            edge,
            relay: Some(relay),
            _nats: nats,
            ch,
            db,
        }
    }

    /// The project's stored rows, by event id.
    fn rows(&self) -> (u64, BTreeMap<String, Value>) {
        let sql = format!(
            "SELECT toString(event_id) AS event_id, event, user_id, anonymous_id, session_id, \
             properties, ts_ms, client_ts_ms, sent_at_ms, received_at_ms, library_name, page_path \
             FROM {}.events WHERE project_id = '{PROJECT}' FORMAT JSONEachRow",
            self.db
        );
        let text = tokio::task::block_in_place(|| self.ch.query(&sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
        let mut count = 0;
        let mut rows = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let row: Value = serde_json::from_str(line).unwrap();
            count += 1;
            rows.insert(row["event_id"].as_str().unwrap().to_string(), row);
        }
        (count, rows)
    }

    async fn stop(mut self) {
        self.relay.take().unwrap().shutdown().await;
    }
}

/// Runs `scenario` of the browser script against `stack`, then checks that
/// ClickHouse holds exactly the events the script expects stored (each
/// once, with the fields the page queued) and none of those it expects
/// absent. Answers the script only after that, so a request the browser
/// still carries for a closed page is not cut short.
async fn run_scenario(scenario: &str, stack: &Stack) {
    let node = Tool::Node.path().unwrap_or_else(|e| panic!("{e:#}"));
    let chromium = Tool::Chromium.path().unwrap_or_else(|e| panic!("{e:#}"));
    tools::playwright_core_dir().unwrap_or_else(|e| panic!("{e:#}"));
    let site = Site::serve(site_files());
    let args = json!({
        "scenario": scenario,
        "site": site.url(),
        "edge": stack.edge.url(),
        "write_key": WRITE_KEY,
        "chromium": chromium,
    });
    let root = tools::workspace_root();
    let mut cmd = Command::new(node);
    cmd.arg(root.join("tests/browser/web_sdk.mjs"))
        .arg(args.to_string())
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so chromium goes with it at the end.
        .process_group(0);
    // SIGTERM on our death: playwright closes the browser on SIGTERM.
    let mut child = tools::spawn_tied(cmd, Signal::SIGTERM).expect("starting node");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = tokio::time::Instant::now() + SCRIPT_TIMEOUT;
    let mut transcript = String::new();
    let mut checked = None;
    let mut timed_out = false;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) => {
                // The expect line lists every event: keep its start.
                transcript.extend(line.chars().take(400));
                transcript.push('\n');
                if let Some(expect) = line.strip_prefix("spoor-web-sdk: expect ") {
                    let expect: Value = serde_json::from_str(expect).unwrap();
                    let outcome = check_stored(stack, &expect).await;
                    let _ = stdin.write_all(b"checked\n");
                    let _ = stdin.flush();
                    checked = Some(outcome);
                }
            }
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    let mut status = None;
    for _ in 0..300 {
        status = child.try_wait().unwrap();
        if status.is_some() || timed_out {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tools::stop_child(&mut child, Duration::from_secs(5), true);
    let stderr = errors.join().unwrap_or_default();
    let passed = !timed_out && status.is_some_and(|s| s.success());
    assert!(
        passed,
        "the web SDK's browser script ({scenario}) failed ({}):\n--- stdout\n{transcript}--- stderr\n{stderr}\n--- edge log\n{}",
        if timed_out {
            format!("no result after {SCRIPT_TIMEOUT:?}")
        } else {
            format!("{status:?}")
        },
        stack.edge.log()
    );
    match checked {
        Some(Ok(())) => eprintln!("{transcript}"),
        Some(Err(e)) => panic!("{e}\n--- browser script\n{transcript}"),
        None => panic!("the browser script expected nothing:\n{transcript}"),
    }
}

/// Waits until the project's rows are exactly the expected events, then
/// compares their fields with what the page queued.
async fn check_stored(stack: &Stack, expect: &Value) -> Result<(), String> {
    let stored = expect["stored"].as_array().unwrap();
    let want: BTreeSet<String> = stored
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let absent: BTreeSet<String> = expect["absent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    if want.len() != stored.len() {
        return Err(format!("the page queued a repeated event id: {stored:?}"));
    }
    let deadline = tokio::time::Instant::now() + STORE_WAIT;
    while (stack.rows().0 as usize) < want.len() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "only {} of {} events stored after {STORE_WAIT:?}",
                stack.rows().0,
                want.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late copies (a resend, a second request) would land within the relay's flush.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (count, rows) = stack.rows();
    let got: BTreeSet<String> = rows.keys().cloned().collect();
    if count as usize != want.len() || got != want {
        return Err(format!(
            "stored {count} rows, ids {got:?}; want each of {want:?} once"
        ));
    }
    if let Some(id) = absent.iter().find(|id| got.contains(*id)) {
        return Err(format!("{id} was dropped from the queue but is stored"));
    }
    let skew = expect["skew_ms"].as_i64().unwrap();
    for e in stored {
        let row = &rows[e["event_id"].as_str().unwrap()];
        for field in ["event", "user_id", "anonymous_id", "session_id"] {
            if row[field] != e[field] {
                return Err(format!("{field}: stored {row}, queued {e}"));
            }
        }
        let props: Value = serde_json::from_str(row["properties"].as_str().unwrap()).unwrap();
        let queued = if e["properties"].is_null() {
            json!({})
        } else {
            e["properties"].clone()
        };
        if props != queued {
            return Err(format!("properties: stored {row}, queued {e}"));
        }
        // The page's clock may be off by `skew_ms`; its sent_at moves the
        // event back onto the edge's clock, within the test's lifetime.
        let ms = |f: &str| {
            row[f]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .or(row[f].as_i64())
        };
        let (ts, client, sent, received) = (
            ms("ts_ms"),
            ms("client_ts_ms"),
            ms("sent_at_ms"),
            ms("received_at_ms"),
        );
        let within = |a: Option<i64>, b: Option<i64>, off: i64| {
            a.zip(b)
                .is_some_and(|(a, b)| (a - b - off).abs() < CLOCK_SLACK_MS)
        };
        if !(within(ts, received, 0)
            && within(client, received, skew)
            && within(sent, received, skew))
        {
            return Err(format!(
                "time: a page clock off by {skew} ms must be corrected to the edge's: {row}"
            ));
        }
        if row["library_name"] != json!("spoor-web")
            || row["page_path"]
                .as_str()
                .is_none_or(|p| !p.ends_with(".html"))
        {
            return Err(format!(
                "the client time, sent_at, library and page reach the row: {row}"
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tracked_offline_survive_a_reload_and_are_stored_once_back_online() {
    let stack = Stack::start("web_sdk_offline", &[]).await;
    run_scenario("offline", &stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_page_closed_at_once_are_sent_on_pagehide_and_stored() {
    let stack = Stack::start("web_sdk_pagehide", &[]).await;
    run_scenario("pagehide", &stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_waited_out_by_retry_after_and_every_event_stored_once() {
    // 50 events/s with bursts of 50: a batch of 100 passes only a full
    // bucket and leaves it in debt, so of the page's 400 events (batches of
    // 10, then up to 100, sent back to back) at least the last three
    // batches meet a 429 first.
    let stack = Stack::start(
        "web_sdk_storm",
        &[
            ("RATE_LIMIT_EVENTS_PER_SEC", "50"),
            ("RATE_LIMIT_BURST", "50"),
        ],
    )
    .await;
    run_scenario("storm", &stack).await;
    stack.stop().await;
}
