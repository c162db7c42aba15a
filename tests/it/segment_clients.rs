//! Segment's own client libraries against the real pipeline (the edge's
//! WASM build in workerd → nats-server → spoor-relay → clickhouse-server),
//! driven by the node scripts in `tests/segment_clients/`:
//!
//! - `@segment/analytics-node` with `host` set to the edge sends one
//!   message of every type (track, page, screen, identify, group, alias);
//!   each is answered `200` and stored with its id (`messageId` → `event_id`,
//!   the library's own non-UUID ids through the stable hash), name, user and
//!   anonymous ids, context columns, traits and times; a second client's
//!   resend of the same `messageId` is stored once.
//! - `@segment/analytics-next`, bundled for the page with esbuild and loaded
//!   in headless chromium with `integrations["Segment.io"].apiHost` set to
//!   the edge and the CDN's settings passed to `load` (nothing is fetched
//!   from Segment): its page, identify and track calls are answered `200`
//!   and stored with the page's url, title and the browser from its
//!   User-Agent, posted one by one (`/v1/p`, `/v1/i`, `/v1/t`) or as one
//!   batch (`/v1/b`, its batching delivery strategy); and calls the edge's
//!   rate limit refuses with 429 are retried (with `X-Retry-Count`, which
//!   the edge's CORS answer must allow) and stored once each.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use spoor_core::route::derived_event_id;
use spoor_core::timestamp::parse_rfc3339_ms;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::NatsServer;
use spoor_tests::tools::{self, Tool};

use crate::support::{eventually, Relay};
use crate::web_sdk::Site;

const WRITE_KEY: &str = "wk_clients";
const PROJECT: &str = "clients";
/// The longest a client script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// nats-server, a fresh database, the relay in-process and the edge in workerd.
struct Stack {
    // Field order is drop order: the edge before NATS.
    edge: Edge,
    relay: Option<Relay>,
    _nats: NatsServer,
    ch: &'static ClickHouseServer,
    db: String,
}

impl Stack {
    /// With `edge_vars` on top of the write key.
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

    /// Every stored row of the project (a row stored twice is listed twice).
    fn rows(&self) -> Vec<Value> {
        let sql = format!(
            "SELECT toString(event_id) AS event_id, event_id_derived, event, user_id, anonymous_id, \
             properties, toString(ts_ms) AS ts, toString(received_at_ms) AS received, \
             page_url, page_path, page_referrer, page_title, app_name, app_version, library_name, \
             library_version, locale, screen_width, screen_height, browser, os, os_version, \
             device_type, utm_source, utm_medium, utm_campaign, utm_term, utm_content \
             FROM {}.events WHERE project_id = '{PROJECT}' FORMAT JSONEachRow",
            self.db
        );
        let text = tokio::task::block_in_place(|| self.ch.query(&sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut row: Value = serde_json::from_str(l).unwrap();
                row["properties"] =
                    serde_json::from_str(row["properties"].as_str().unwrap()).unwrap();
                row
            })
            .collect()
    }

    /// Waits until `n` rows are stored, then gives them by event id, failing
    /// if any id is stored twice or the relay inserted more than `n` rows.
    async fn stored(&self, n: usize) -> BTreeMap<String, Value> {
        eventually(&format!("{n} rows stored"), || async {
            (self.rows().len() >= n).then_some(())
        })
        .await;
        // A late duplicate would arrive with the others' flush; look once more.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rows = self.rows();
        let mut by_id = BTreeMap::new();
        for row in rows {
            let id = row["event_id"].as_str().unwrap().to_string();
            if let Some(first) = by_id.insert(id.clone(), row) {
                panic!("event {id} is stored twice (first {first})");
            }
        }
        assert_eq!(by_id.len(), n, "stored: {by_id:#?}");
        // Inserted once each, too: a second copy merged away by the
        // ReplacingMergeTree would not show in the rows.
        let relay = self.relay.as_ref().unwrap();
        assert_eq!(
            relay.metric("spoor_relay_rows_inserted_total").await,
            n as f64,
            "rows the relay inserted"
        );
        by_id
    }

    async fn stop(mut self) {
        self.relay.take().unwrap().shutdown().await;
    }
}

/// Runs `node <script> <args>` from the workspace root and returns the JSON
/// of its `segment-clients: sent ` line; fails with its output when it
/// fails or takes longer than `SCRIPT_TIMEOUT`.
fn run_node(script: &str, args: &Value, edge: &Edge) -> Value {
    let node = Tool::Node.path().unwrap_or_else(|e| panic!("{e:#}"));
    let root = tools::workspace_root();
    let mut cmd = Command::new(node);
    cmd.arg(root.join("tests/segment_clients").join(script))
        .arg(args.to_string())
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a browser it started goes with it.
        .process_group(0);
    let mut child = tools::spawn_tied(cmd, Signal::SIGTERM).expect("starting node");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    tools::stop_child(&mut child, Duration::from_secs(5), true);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let sent = stdout
        .lines()
        .find_map(|l| l.strip_prefix("segment-clients: sent "));
    match (status, sent) {
        (Some(s), Some(sent)) if s.success() => {
            eprintln!("{stdout}");
            serde_json::from_str(sent).unwrap()
        }
        _ => panic!(
            "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- edge log\n{}",
            status.map_or_else(
                || format!("no result after {SCRIPT_TIMEOUT:?}"),
                |s| s.to_string()
            ),
            edge.log()
        ),
    }
}

/// The event id the edge gives a message: its `messageId` when that is a
/// UUID, else the stable hash of it.
fn event_id_of(message: &Value) -> String {
    let id = message["messageId"].as_str().expect("a messageId");
    match uuid::Uuid::try_parse(id) {
        Ok(u) => u.to_string(),
        Err(_) => derived_event_id(PROJECT, format!("messageId:{id}").as_bytes()).to_string(),
    }
}

fn ms(v: &Value) -> i64 {
    v.as_str().unwrap().parse().unwrap()
}

/// The edge's answer to a Segment request: 200, success, `n` accepted,
/// nothing rejected.
fn assert_answer(status: &Value, body: &Value, accepted: u64) {
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(body.as_str().unwrap()).unwrap();
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["accepted"], accepted, "{v}");
    assert!(v.get("rejected").is_none_or(|r| r == &json!([])), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_node_events_of_every_type_are_stored_once_with_their_fields() {
    tools::npm_package_dir("@segment/analytics-node").unwrap_or_else(|e| panic!("{e:#}"));
    let stack = Stack::start("segment_clients_node", &[]).await;
    let sent = tokio::task::block_in_place(|| {
        run_node(
            "analytics_node.mjs",
            &json!({"host": stack.edge.url(), "write_key": WRITE_KEY}),
            &stack.edge,
        )
    });
    let (started, finished) = (
        sent["started_ms"].as_i64().unwrap(),
        sent["finished_ms"].as_i64().unwrap(),
    );

    // Two requests: the six calls in one batch, then the resend alone, both
    // to `{host}/v1/batch` and both answered 200.
    let requests = sent["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for (r, n) in requests.iter().zip([6, 1]) {
        assert_eq!(
            r["url"].as_str(),
            Some(format!("{}/v1/batch", stack.edge.url()).as_str())
        );
        assert_eq!(r["messages"], n);
        assert_answer(&r["status"], &r["body"], n);
    }

    let calls = &sent["calls"];
    let stored = stack.stored(6).await;
    let row = |call: &str| {
        let id = event_id_of(&calls[call]);
        stored
            .get(&id)
            .unwrap_or_else(|| panic!("the {call} ({id}) is not stored: {stored:#?}"))
    };
    // Explicit messageIds (UUIDs) are the event ids as they are.
    assert_eq!(
        row("track")["event_id"],
        calls["track"]["messageId"],
        "messageId → event_id"
    );
    assert_eq!(event_id_of(&calls["resend"]), event_id_of(&calls["track"]));
    for call in ["track", "page", "screen", "identify", "group", "alias"] {
        let r = row(call);
        assert_eq!(r["event_id_derived"], 0, "{call}: the id is the client's");
        assert_eq!(
            r["properties"]["$segment"]["type"], call,
            "{call}: its type is kept"
        );
        assert_eq!(
            r["properties"]["$segment"]["messageId"], calls[call]["messageId"],
            "{call}: its messageId is kept"
        );
        assert_eq!(
            (&r["library_name"], &r["library_version"]),
            (
                &calls[call]["context"]["library"]["name"],
                &calls[call]["context"]["library"]["version"]
            ),
            "{call}: the library's context"
        );
        assert_eq!(r["library_name"], "@segment/analytics-node");
        // The library stamps each message's `timestamp`, which is taken as it is.
        assert_eq!(
            ms(&r["ts"]),
            parse_rfc3339_ms(calls[call]["timestamp"].as_str().unwrap()).unwrap(),
            "{call}: the message's timestamp"
        );
        let received = ms(&r["received"]);
        assert!(
            (started..=finished + 1000).contains(&received),
            "{call}: received at {received}, outside the run {started}..{finished}"
        );
    }

    // The library's own messageId (`node-next-…`) maps to a stable UUID.
    let alias_id = calls["alias"]["messageId"].as_str().unwrap();
    assert!(uuid::Uuid::try_parse(alias_id).is_err(), "{alias_id}");

    let t = row("track");
    assert_eq!(t["event"], "Order Completed");
    assert_eq!(
        (&t["user_id"], &t["anonymous_id"]),
        (&json!("u-node"), &json!("a-node"))
    );
    assert_eq!(ms(&t["ts"]), started - 60_000, "the given timestamp");
    assert_eq!(
        (&t["properties"]["total"], &t["properties"]["currency"]),
        (&json!(79.5), &json!("EUR"))
    );
    assert_eq!(
        (&t["page_url"], &t["page_path"], &t["page_title"]),
        (
            &json!("https://shop.example/done"),
            &json!("/done"),
            &json!("Done")
        )
    );
    assert_eq!(t["page_referrer"], "https://shop.example/cart");
    assert_eq!(t["locale"], "de-DE");
    let seg = &t["properties"]["$segment"];
    // context.campaign is the utm_* columns, and leaves $segment.context.
    assert_eq!(
        (&t["utm_source"], &t["utm_campaign"], &t["utm_medium"]),
        (&json!("newsletter"), &json!("winter"), &json!(""))
    );
    assert_eq!(seg["context"].get("campaign"), None);
    assert_eq!(seg["context"]["ip"], "203.0.113.0", "only the IP's prefix");

    let p = row("page");
    assert_eq!(p["event"], "page_view");
    assert_eq!(
        (&p["user_id"], &p["anonymous_id"]),
        (&json!(""), &json!("a-node"))
    );
    assert_eq!(
        (&p["properties"]["name"], &p["properties"]["category"]),
        (&json!("Shoes"), &json!("Catalog"))
    );
    assert_eq!(p["properties"]["path"], "/shoes");

    let s = row("screen");
    assert_eq!(s["event"], "screen_view");
    assert_eq!(
        (&s["user_id"], &s["anonymous_id"]),
        (&json!("u-node"), &json!(""))
    );
    assert_eq!(
        (&s["properties"]["name"], &s["properties"]["items"]),
        (&json!("Cart"), &json!(2))
    );
    assert_eq!(
        (&s["app_name"], &s["app_version"]),
        (&json!("Spoor Shop"), &json!("3.2.1"))
    );
    assert_eq!(
        (&s["os"], &s["os_version"], &s["device_type"]),
        (&json!("Android"), &json!("14"), &json!("mobile"))
    );
    assert_eq!(
        (&s["screen_width"], &s["screen_height"]),
        (&json!(1080), &json!(2205))
    );
    assert_eq!(
        s["properties"]["$segment"]["context"]["device"]["model"],
        "Pixel 8"
    );

    let i = row("identify");
    assert_eq!(i["event"], "identify");
    assert_eq!(
        (&i["user_id"], &i["anonymous_id"]),
        (&json!("u-node"), &json!("a-node"))
    );
    assert_eq!(
        i["properties"]["$segment"]["traits"],
        json!({"email": "node@example.com", "plan": "pro"})
    );

    let g = row("group");
    assert_eq!(g["event"], "group");
    assert_eq!(g["user_id"], "u-node");
    assert_eq!(g["properties"]["$segment"]["groupId"], "org-42");
    assert_eq!(
        g["properties"]["$segment"]["traits"],
        json!({"name": "Acme Inc", "seats": 12})
    );

    let a = row("alias");
    assert_eq!(a["event"], "alias");
    assert_eq!(a["user_id"], "u-node");
    assert_eq!(a["properties"]["$segment"]["previousId"], "a-node");

    stack.stop().await;
}

/// analytics-next bundled for a page by esbuild (from node_modules) as one
/// script defining `window.AnalyticsBrowser`.
fn analytics_next_bundle(dir: &Path) -> Vec<u8> {
    tools::npm_package_dir("@segment/analytics-next").unwrap_or_else(|e| panic!("{e:#}"));
    tools::npm_package_dir("esbuild").unwrap_or_else(|e| panic!("{e:#}"));
    let node = Tool::Node.path().unwrap_or_else(|e| panic!("{e:#}"));
    let out = dir.join("analytics-next.js");
    let build = format!(
        "import {{ build }} from 'esbuild';
         await build({{
           stdin: {{ contents: \"import {{ AnalyticsBrowser }} from '@segment/analytics-next'; \
                     window.AnalyticsBrowser = AnalyticsBrowser;\", resolveDir: process.cwd() }},
           bundle: true, format: 'iife', platform: 'browser', target: 'es2020',
           outfile: {out:?}, logLevel: 'warning',
         }});"
    );
    let status = Command::new(node)
        .args(["--input-type=module", "-e", &build])
        .current_dir(tools::workspace_root())
        .output()
        .expect("running node");
    assert!(
        status.status.success(),
        "bundling @segment/analytics-next with esbuild failed ({}):\n{}{}",
        tools::SETUP_HINT,
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read(out).unwrap()
}

/// Serves a page that loads analytics-next and runs `scenario` of
/// `analytics_next.mjs` in chromium against `stack`'s edge.
fn run_analytics_next(stack: &Stack, scenario: &str) -> Value {
    let chromium = Tool::Chromium.path().unwrap_or_else(|e| panic!("{e:#}"));
    tools::playwright_core_dir().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let site = Site::serve(vec![
        (
            "/index.html",
            "text/html",
            b"<!doctype html><title>Winter Shoes</title><link rel=icon href=\"data:,\">\
              <script src=\"/analytics-next.js\"></script>"
                .to_vec(),
        ),
        (
            "/analytics-next.js",
            "text/javascript",
            analytics_next_bundle(dir.path()),
        ),
    ]);
    // apiHost is a host and path without the scheme; the calls go to
    // `{protocol}://{apiHost}/p`, `/i`, `/t`.
    let api_host = format!("{}/v1", stack.edge.url().trim_start_matches("http://"));
    tokio::task::block_in_place(|| {
        run_node(
            "analytics_next.mjs",
            &json!({
                "scenario": scenario,
                "site": site.url(),
                "api_host": api_host,
                "write_key": WRITE_KEY,
                "chromium": chromium,
            }),
            &stack.edge,
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_next_in_chromium_stores_page_identify_and_track() {
    let stack = Stack::start("segment_clients_next", &[]).await;
    let sent = run_analytics_next(&stack, "calls");
    // Each call on its own path, one message each.
    let stored =
        assert_page_identify_track(&stack, &sent, &[("/v1/i", 1), ("/v1/p", 1), ("/v1/t", 1)])
            .await;
    let p = &stored[&event_id_of(&sent["calls"]["page"])];
    assert_eq!(p["user_id"], "", "the page was sent before identify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_next_batching_posts_one_batch_to_b_and_it_is_stored() {
    let stack = Stack::start("segment_clients_batching", &[]).await;
    let sent = run_analytics_next(&stack, "batching");
    assert_page_identify_track(&stack, &sent, &[("/v1/b", 3)]).await;
}

/// The edge answered `paths` (each with its accepted count) and stored
/// the page, identify and track calls of `sent` with their fields; gives
/// the stored rows by event id.
async fn assert_page_identify_track(
    stack: &Stack,
    sent: &Value,
    paths: &[(&str, u64)],
) -> BTreeMap<String, Value> {
    let (started, finished) = (
        sent["started_ms"].as_i64().unwrap(),
        sent["finished_ms"].as_i64().unwrap(),
    );
    let answers = sent["answers"].as_array().unwrap();
    let mut answered: Vec<(&str, &Value, &Value)> = answers
        .iter()
        .map(|a| (a["path"].as_str().unwrap(), &a["status"], &a["body"]))
        .collect();
    answered.sort_by_key(|a| a.0);
    assert_eq!(
        answered.iter().map(|a| a.0).collect::<Vec<_>>(),
        paths.iter().map(|p| p.0).collect::<Vec<_>>(),
        "{answers:#?}"
    );
    for ((_, status, body), (_, n)) in answered.iter().zip(paths) {
        assert_answer(status, body, *n);
    }

    let calls = &sent["calls"];
    let page = &sent["page"];
    let anonymous_id = sent["anonymous_id"].as_str().unwrap();
    let stored = stack.stored(3).await;
    let row = |call: &str| {
        let id = event_id_of(&calls[call]);
        stored
            .get(&id)
            .unwrap_or_else(|| panic!("the {call} ({id}) is not stored: {stored:#?}"))
    };
    for call in ["page", "identify", "track"] {
        let r = row(call);
        // analytics.js's ids (`ajs-next-…`) are no UUIDs: the stable hash.
        assert_eq!(
            r["properties"]["$segment"]["messageId"], calls[call]["messageId"],
            "{call}"
        );
        assert_eq!(r["event_id_derived"], 0, "{call}");
        assert_eq!(r["anonymous_id"], anonymous_id, "{call}");
        assert_eq!(
            (&r["page_url"], &r["page_title"]),
            (&page["url"], &json!("Winter Shoes")),
            "{call}: the page's context"
        );
        assert_eq!(r["page_path"], "/index.html", "{call}");
        assert_eq!(r["library_name"], "analytics.js", "{call}");
        assert_eq!(
            r["library_version"], calls[call]["context"]["library"]["version"],
            "{call}"
        );
        // analytics.js's context.campaign, from the page's utm_ parameters.
        assert_eq!(
            r["utm_source"], "newsletter",
            "{call}: the page's utm_ parameters"
        );
        assert_eq!(
            r["properties"]["$segment"]["context"].get("campaign"),
            None,
            "{call}: the campaign is in the columns"
        );
        // The browser comes from the page's own User-Agent.
        assert_eq!(r["browser"], "Chrome", "{call}: {}", page["userAgent"]);
        // The page's clock is the edge's: the skew rule keeps the time.
        let ts = ms(&r["ts"]);
        assert!(
            (started..=finished).contains(&ts),
            "{call}: ts {ts} outside the run {started}..{finished}"
        );
    }
    let p = row("page");
    assert_eq!(p["event"], "page_view");
    assert_eq!(
        p["user_id"],
        calls["page"]["userId"].as_str().unwrap_or(""),
        "the page's user, as sent"
    );
    assert_eq!(
        (
            &p["properties"]["name"],
            &p["properties"]["category"],
            &p["properties"]["section"]
        ),
        (&json!("Shoes"), &json!("Catalog"), &json!("winter"))
    );
    let i = row("identify");
    assert_eq!(i["event"], "identify");
    assert_eq!(i["user_id"], "u-next");
    assert_eq!(
        i["properties"]["$segment"]["traits"],
        json!({"email": "next@example.com", "plan": "pro"})
    );
    let t = row("track");
    assert_eq!(t["event"], "Signed Up");
    assert_eq!(t["user_id"], "u-next", "identify's user carries on");
    assert_eq!(
        (&t["properties"]["plan"], &t["properties"]["seats"]),
        (&json!("pro"), &json!(3))
    );
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_next_retries_after_429_and_every_track_is_stored_once() {
    // A bucket of one event: of three tracks posted at once, two meet a 429
    // and come back after Retry-After with X-Retry-Count, a header the
    // browser sends cross-origin only when the edge's CORS answer allows it.
    let stack = Stack::start(
        "segment_clients_retry",
        &[
            ("RATE_LIMIT_EVENTS_PER_SEC", "1"),
            ("RATE_LIMIT_BURST", "1"),
        ],
    )
    .await;
    let sent = run_analytics_next(&stack, "retry");
    let answers = sent["answers"].as_array().unwrap();
    assert!(answers.iter().any(|a| a["status"] == 429), "{answers:#?}");
    let calls = &sent["calls"];
    let stored = stack.stored(3).await;
    for n in 1..=3 {
        let call = &calls[format!("track {n}")];
        let r = stored
            .get(&event_id_of(call))
            .unwrap_or_else(|| panic!("track {n} is not stored: {stored:#?}"));
        assert_eq!(r["event"], "Retried");
        assert_eq!(r["properties"]["n"], n);
    }
    stack.stop().await;
}
