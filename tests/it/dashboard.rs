//! The dashboard in a real browser: rows inserted with the relay's sink into
//! a fresh database on the shared clickhouse-server, the aggregator served
//! in-process, and tests/browser/dashboard.mjs driving the page in headless
//! chromium (Debian's, through playwright-core). The script checks what the
//! page shows against numbers computed here from the same rows, asks for one
//! more event mid-run to see the page refresh itself, and leaves screenshots
//! in target/test-artifacts/dashboard/.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use spoor_core::{Device, Geo};
use spoor_store::EventRow;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::tools::{self, Tool};

use crate::aggregator_api::{config, reqwest_client, serve, SHOP_TOKEN};
use crate::support::{schema_database, SchemaDb};
use spoor_tests::fixtures::{batch, event};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const DEVICE_TYPES: [&str; 3] = ["desktop", "mobile", "tablet"];
/// The device whose timeline the browser looks up.
const TIMELINE_DEVICE: &str = "dev-timeline";
/// The funnel the browser builds, and its conversion window.
const FUNNEL: [&str; 2] = ["add_to_cart", "payment"];
const FUNNEL_WINDOW_MS: i64 = HOUR;
/// Timeline events per page in the dashboard (app.js TIMELINE_PAGE).
const TIMELINE_PAGE: usize = 50;
/// The longest the browser script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

use crate::support::now_ms;

/// Builds rows with unique event ids.
struct Rows {
    rows: Vec<EventRow>,
}

impl Rows {
    fn add(&mut self, ts_ms: i64, name: &str, device: &str, user: &str, properties: &str) {
        let n = self.rows.len() as u128;
        let mut e = event(n + 1_000_000);
        e.ts_ms = ts_ms;
        e.event = name.into();
        e.anonymous_id = device.into();
        e.user_id = user.into();
        e.properties = properties.into();
        let mut b = batch(&format!("dash-{n}"), vec![]);
        b.project_id = "shop".into();
        b.received_at_ms = ts_ms + 50;
        let k = device.bytes().map(usize::from).sum::<usize>();
        b.device = Device {
            browser: ["Chrome", "Firefox", "Safari"][k % 3].into(),
            os: ["Linux", "Android", "iOS"][k % 3].into(),
            device_type: DEVICE_TYPES[k % 3].into(),
            ..Device::default()
        };
        b.geo = Geo {
            country: ["DE", "FR", "US", "NL"][self.rows.len() % 4].into(),
            ..Geo::default()
        };
        self.rows.push(EventRow::new(&b, e));
    }
}

/// Events of the last hour, the last day and three days ago from twelve
/// devices (every other one with a user id), a small add_to_cart → payment
/// funnel, and one device with a long history for the timeline. No event
/// lies near the edge of the 60-minute or 24-hour windows, so the page and
/// this test agree on them whenever each computes its window.
fn rows(now: i64) -> Vec<EventRow> {
    let mut r = Rows { rows: Vec::new() };
    let device = |i: i64| format!("d{}", i % 12);
    let user = |i: i64| {
        if i % 12 % 2 == 0 {
            format!("u{}", i % 12)
        } else {
            String::new()
        }
    };
    for i in 0..80 {
        let name = ["page_view", "page_view", "page_view", "view_item", "search"][i as usize % 5];
        r.add(
            now - 29 * MINUTE + i * 18_000,
            name,
            &device(i),
            &user(i),
            "{}",
        );
    }
    for i in 0..120 {
        let name = ["page_view", "view_item", "page_view", "search", "signup"][i as usize % 5];
        let props = format!(r#"{{"page":{}}}"#, i % 7);
        r.add(
            now - 20 * HOUR + i * 7 * MINUTE,
            name,
            &device(i),
            &user(i),
            &props,
        );
    }
    for i in 0..20 {
        r.add(
            now - 3 * DAY + i * MINUTE,
            "page_view",
            &device(i),
            &user(i),
            "{}",
        );
    }
    // The funnel: ten devices put something in the cart; four of them pay
    // five minutes later, one paid only before (which does not count).
    for k in 0..10 {
        let d = format!("f{k}");
        let at = now - 3 * HOUR + k * 2 * MINUTE;
        let price = format!(r#"{{"price":{},"plan":"pro"}}"#, 10 + k);
        r.add(at, "add_to_cart", &d, "", &price);
        if k < 4 {
            r.add(at + 5 * MINUTE, "payment", &d, "", &price);
        }
        if k == 5 {
            r.add(at - 10 * MINUTE, "payment", &d, "", &price);
        }
    }
    // The timeline device: 57 events over two and a half days.
    for i in 0..57 {
        let name = ["page_view", "view_item", "add_to_cart", "search"][i as usize % 4];
        let props = format!(r#"{{"step":{i},"plan":"free"}}"#);
        let at = if i < 27 {
            now - 60 * HOUR + i * 40 * MINUTE
        } else {
            now - 20 * HOUR + (i - 27) * 25 * MINUTE
        };
        r.add(at, name, TIMELINE_DEVICE, "", &props);
    }
    let rows = r.rows;
    for row in &rows {
        for edge in [now - HOUR, now - DAY] {
            assert!(
                (row.ts_ms - edge).abs() > 30 * MINUTE,
                "a generated event lies near a window's edge"
            );
        }
        assert!(row.ts_ms < now - 4 * MINUTE);
    }
    rows
}

/// Users (user id, else device) who entered the two-step funnel in
/// `since..` and who then reached step 2, strictly later and within the
/// window: the funnel's definition (aggregator/src/query/funnel.rs).
fn funnel_counts(rows: &[EventRow], since: i64) -> (usize, usize) {
    let who = |r: &EventRow| {
        if r.user_id.is_empty() {
            r.anonymous_id.clone()
        } else {
            r.user_id.clone()
        }
    };
    let firsts: Vec<&EventRow> = rows
        .iter()
        .filter(|r| r.event == FUNNEL[0] && r.ts_ms >= since)
        .collect();
    let entered: BTreeSet<String> = firsts.iter().map(|r| who(r)).collect();
    let converted: BTreeSet<String> = firsts
        .iter()
        .filter(|first| {
            rows.iter().any(|r| {
                r.event == FUNNEL[1]
                    && who(r) == who(first)
                    && r.ts_ms > first.ts_ms
                    && r.ts_ms - first.ts_ms <= FUNNEL_WINDOW_MS
            })
        })
        .map(|r| who(r))
        .collect();
    (entered.len(), converted.len())
}

/// Cargo's target directory: $CARGO_TARGET_DIR or the workspace's `target/`.
fn target_dir() -> PathBuf {
    let root = tools::workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

/// Sums the API's count answer over its rows, per first group (or "").
async fn api_counts(url: &str, body: serde_json::Value) -> BTreeMap<String, f64> {
    let answer: serde_json::Value = reqwest_client()
        .post(format!("{url}/v1/projects/shop/metrics"))
        .bearer_auth(SHOP_TOKEN)
        .header("X-Spoor-Lane", "dashboard")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    let rows = answer["rows"].as_array();
    for row in rows.unwrap_or_else(|| panic!("metrics answered {answer}")) {
        let group = row["groups"][0].as_str().unwrap_or("").to_string();
        *out.entry(group).or_default() += row["value"].as_f64().unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_data_in_a_browser() {
    let started = Instant::now();
    // Tools first: a missing one fails here, naming the set-up command.
    let node = Tool::Node.path().unwrap_or_else(|e| panic!("{e:#}"));
    let chromium = Tool::Chromium.path().unwrap_or_else(|e| panic!("{e:#}"));
    tools::playwright_core_dir().unwrap_or_else(|e| panic!("{e:#}"));

    let ch = ClickHouseServer::shared();
    let SchemaDb { name: db, sink, .. } = schema_database(ch, "dashboard").await;
    let now = now_ms();
    let rows = rows(now);
    sink.insert(&rows).await.unwrap();
    let served = serve(config(ch, &db)).await;

    // What the page must show, from the rows themselves.
    let live_total = rows.iter().filter(|r| r.ts_ms >= now - HOUR).count();
    let mut top: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.ts_ms >= now - DAY) {
        *top.entry(r.event.clone()).or_default() += 1;
    }
    let series_groups: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r.ts_ms >= now - DAY)
        .map(|r| &*r.device_type)
        .collect();

    let (entered, converted) = funnel_counts(&rows, now - DAY);
    let mut timeline: Vec<&EventRow> = rows
        .iter()
        .filter(|r| r.anonymous_id == TIMELINE_DEVICE)
        .collect();
    timeline.sort_by_key(|r| (r.ts_ms, r.event_id));
    let timeline: Vec<(i64, &str)> = timeline
        .iter()
        .map(|r| (r.ts_ms, r.event.as_str()))
        .collect();
    assert!(
        timeline.len() > TIMELINE_PAGE,
        "the timeline needs two pages"
    );

    // The API gives the same numbers for the windows the page asks for.
    let end = now / MINUTE * MINUTE + MINUTE;
    let live = api_counts(
        &served.url,
        serde_json::json!({"measure": {"kind": "count"}, "since_ms": end - HOUR,
            "until_ms": end, "granularity": "minute"}),
    )
    .await;
    assert_eq!(live.values().sum::<f64>(), live_total as f64);
    let by_event = api_counts(
        &served.url,
        serde_json::json!({"measure": {"kind": "count"}, "since_ms": end - DAY,
            "until_ms": end, "granularity": "day", "group_by": ["event"]}),
    )
    .await;
    let want: BTreeMap<String, f64> = top.iter().map(|(k, v)| (k.clone(), *v as f64)).collect();
    assert_eq!(by_event, want);

    let artifacts = target_dir().join("test-artifacts/dashboard");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let args = serde_json::json!({
        "url": served.url,
        "project": "shop",
        "token": SHOP_TOKEN,
        "chromium": chromium,
        "artifacts": artifacts,
        "timezone": "Europe/Berlin",
        "expect": {
            "live_total": live_total,
            "top": top,
            "series_groups": series_groups,
            "funnel": {
                "steps": FUNNEL,
                "window_minutes": FUNNEL_WINDOW_MS / MINUTE,
                // Per step: users who reached it, and who went on (for the
                // last step, those who completed).
                "entered": [entered, converted],
                "converted": [converted, converted],
            },
            "timeline": {
                "kind": "anonymous_id",
                "id": TIMELINE_DEVICE,
                "events": timeline,
                "page": TIMELINE_PAGE,
            },
        },
    });

    let root = tools::workspace_root();
    let mut cmd = Command::new(node);
    cmd.arg(root.join("tests/browser/dashboard.mjs"))
        .arg(args.to_string())
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so chromium goes with it at the end.
        .process_group(0);
    let script_started = Instant::now();
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
    let mut timed_out = false;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) => {
                transcript.push_str(&line);
                transcript.push('\n');
                if line == "spoor-dashboard: insert" {
                    let mut one = Rows { rows: Vec::new() };
                    one.add(now_ms(), "page_view", "d-late", "", "{}");
                    one.rows[0].event_id = uuid::Uuid::new_v4();
                    sink.insert(&one.rows).await.unwrap();
                    stdin.write_all(b"inserted\n").unwrap();
                    stdin.flush().unwrap();
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
    // Whatever is left of the group (chromium's helpers) goes now.
    tools::stop_child(&mut child, Duration::from_secs(5), true);
    let stderr = errors.join().unwrap_or_default();
    let script_secs = script_started.elapsed().as_secs_f64();
    let passed = !timed_out && status.is_some_and(|s| s.success());
    assert!(
        passed,
        "the dashboard's browser script failed ({}):\n--- stdout\n{transcript}--- stderr\n{stderr}\n\
         screenshots: {}",
        if timed_out {
            format!("no result after {SCRIPT_TIMEOUT:?}")
        } else {
            format!("{status:?}")
        },
        artifacts.display()
    );
    eprintln!(
        "{transcript}dashboard: browser script {script_secs:.1} s, whole test {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        artifacts.display()
    );
}
