//! The aggregator's sessions on a real clickhouse-server (18.16 here):
//! sessions per day in a timezone with a half-hour offset, mean and median
//! duration and pages per session, compared with the same figures computed
//! here from the rows (sessions keyed by device and session id; a device's
//! session-less events split where the gap exceeds 30 minutes), plus
//! hand-made devices for gaps just under, at and over 30 minutes, a session
//! across midnight, sessions across the range's edges, and duplicates.

use std::collections::{BTreeMap, HashMap, HashSet};

use spoor_aggregator::query::sessions::{SessionsRequest, EDGE_MS, INACTIVITY_MS};
use spoor_aggregator::query::{Dimension, DimensionFilter};
use spoor_aggregator::store::sessions::{run_sessions, SessionStats, SessionsAnswer};
use spoor_aggregator::store::timeline::rfc3339_ms;
use spoor_store::EventRow;

use spoor_tests::fixtures::{row, shuffle, Rng, DAY, HOUR, MINUTE, T0};

use crate::support::store_with;

/// Asia/Kolkata: UTC+05:30 all year.
const TZ: &str = "Asia/Kolkata";
const OFFSET: i64 = 5 * HOUR + 30 * MINUTE;
/// Local midnight starting 2026-11-22 in Kolkata.
const SINCE: i64 = T0 - OFFSET;
const UNTIL: i64 = SINCE + 3 * DAY;

fn request(project: &str) -> SessionsRequest {
    SessionsRequest {
        project_id: project.into(),
        since_ms: SINCE,
        until_ms: UNTIL,
        timezone: TZ.into(),
        filters: vec![],
    }
}

/// 80 devices, each on one clock from 8 h before the range to 8 h after
/// it: runs of session-less events and of events with a session id
/// (which may be resumed after a long pause), gaps around 30 minutes,
/// page views and clicks, a random country per event.
fn generated() -> Vec<EventRow> {
    let mut rng = Rng(0x5e55);
    let gaps = [
        MINUTE,
        10 * MINUTE,
        INACTIVITY_MS - 1,
        INACTIVITY_MS,
        INACTIVITY_MS + 1,
        45 * MINUTE,
        3 * HOUR,
    ];
    let mut rows = Vec::new();
    for d in 0..80 {
        let device = format!("dev-{d}");
        let user = if d % 3 == 0 {
            String::new()
        } else {
            format!("u{d}")
        };
        let mut ts = SINCE - 8 * HOUR + rng.below(6 * HOUR as u64) as i64;
        let mut session = String::new();
        while ts < UNTIL + 8 * HOUR {
            if rng.below(6) == 0 {
                session = match rng.below(3) {
                    0 => String::new(),
                    _ => format!("s-{d}-{}", rng.below(4)),
                };
            }
            let name = *rng.pick(&["page_view", "page_view", "click"]);
            let mut r = row(&mut rng, "shop", ts, name, &user, &device);
            r.session_id = session.clone();
            r.country = (*rng.pick(&["IN", "DE", "US"])).into();
            rows.push(r);
            ts += *rng.pick(&gaps) + rng.below(3) as i64;
        }
    }
    rows
}

struct Session {
    start: i64,
    duration_ms: i64,
    pages: u64,
    country: String,
}

/// The sessions that start in the request's range, from the rows alone.
fn reference_sessions(rows: &[EventRow], q: &SessionsRequest) -> Vec<Session> {
    let mut seen = HashSet::new();
    let mut by_key: HashMap<(&str, &str), Vec<&EventRow>> = HashMap::new();
    for r in rows {
        let inside = r.ts_ms >= q.since_ms - EDGE_MS && r.ts_ms < q.until_ms + EDGE_MS;
        if *r.project_id == *q.project_id && inside && seen.insert(r.event_id) {
            by_key
                .entry((&r.anonymous_id, &r.session_id))
                .or_default()
                .push(r);
        }
    }
    let mut sessions = Vec::new();
    for ((_, session_id), mut events) in by_key {
        events.sort_by_key(|r| r.ts_ms);
        let mut runs: Vec<Vec<&EventRow>> = Vec::new();
        for r in events {
            let split = match runs.last().and_then(|run| run.last()) {
                None => true,
                Some(prev) => session_id.is_empty() && r.ts_ms - prev.ts_ms > INACTIVITY_MS,
            };
            if split {
                runs.push(vec![r]);
            } else {
                runs.last_mut().unwrap().push(r);
            }
        }
        for run in runs {
            let (first, last) = (run[0], run[run.len() - 1]);
            sessions.push(Session {
                start: first.ts_ms,
                duration_ms: last.ts_ms - first.ts_ms,
                pages: run.iter().filter(|r| r.event == "page_view").count() as u64,
                country: first.country.to_string(),
            });
        }
    }
    sessions.retain(|s| {
        s.start >= q.since_ms
            && s.start < q.until_ms
            && q.filters.iter().all(|f| {
                assert_eq!(
                    f.dimension,
                    Dimension::Country,
                    "the reference knows country"
                );
                s.country == f.value
            })
    });
    sessions
}

fn stats(sessions: &[&Session]) -> SessionStats {
    let n = sessions.len();
    let mut durations: Vec<i64> = sessions.iter().map(|s| s.duration_ms).collect();
    durations.sort();
    let median_ms = if n % 2 == 1 {
        durations[n / 2] as f64
    } else {
        (durations[n / 2 - 1] + durations[n / 2]) as f64 / 2.0
    };
    SessionStats {
        sessions: n as u64,
        avg_duration_seconds: durations.iter().sum::<i64>() as f64 / n as f64 / 1000.0,
        median_duration_seconds: median_ms / 1000.0,
        avg_pages_per_session: sessions.iter().map(|s| s.pages).sum::<u64>() as f64 / n as f64,
    }
}

/// Per local day (`YYYY-MM-DD`) and over the whole range.
fn reference(
    rows: &[EventRow],
    q: &SessionsRequest,
) -> (BTreeMap<String, SessionStats>, SessionStats) {
    let sessions = reference_sessions(rows, q);
    let mut by_day: BTreeMap<String, Vec<&Session>> = BTreeMap::new();
    for s in &sessions {
        by_day
            .entry(rfc3339_ms(s.start + OFFSET)[..10].to_string())
            .or_default()
            .push(s);
    }
    let all: Vec<&Session> = sessions.iter().collect();
    let days = by_day.into_iter().map(|(d, s)| (d, stats(&s))).collect();
    (days, stats(&all))
}

fn close(a: &SessionStats, b: &SessionStats) -> bool {
    let near = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
    a.sessions == b.sessions
        && near(a.avg_duration_seconds, b.avg_duration_seconds)
        && near(a.median_duration_seconds, b.median_duration_seconds)
        && near(a.avg_pages_per_session, b.avg_pages_per_session)
}

fn check(rows: &[EventRow], q: &SessionsRequest, got: &SessionsAnswer) {
    let (days, total) = reference(rows, q);
    assert!(
        close(&got.total, &total),
        "{q:?}\n got {:?}\nwant {total:?}",
        got.total
    );
    let got_days: Vec<&str> = got.days.iter().map(|d| d.day.as_str()).collect();
    let want_days: Vec<&str> = days.keys().map(String::as_str).collect();
    assert_eq!(got_days, want_days, "{q:?}");
    for d in &got.days {
        assert!(
            close(&d.stats, &days[&d.day]),
            "{}: {:?} vs {:?}",
            d.day,
            d.stats,
            days[&d.day]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_match_a_computation_over_the_same_rows() {
    let mut rng = Rng(3);
    let rows = generated();
    let mut written = rows.clone();
    // A few duplicates the ReplacingMergeTree has not merged yet.
    written.extend(rows.iter().step_by(13).cloned());
    shuffle(&mut rng, &mut written);
    let client = store_with("sessions", &written, 4).await;

    let q = request("shop");
    let got = run_sessions(&client, &q).await.unwrap();
    check(&rows, &q, &got);
    assert_eq!(got.days.len(), 3, "{got:#?}");
    assert!(got.total.sessions > 100, "{got:#?}");

    let mut q = request("shop");
    q.filters = vec![DimensionFilter {
        dimension: Dimension::Country,
        value: "IN".into(),
    }];
    let got = run_sessions(&client, &q).await.unwrap();
    check(&rows, &q, &got);
    assert!(got.total.sessions > 10);

    // One day in UTC (not a local day): the same definitions.
    let q = SessionsRequest {
        project_id: "shop".into(),
        since_ms: T0,
        until_ms: T0 + DAY,
        timezone: "UTC".into(),
        filters: vec![],
    };
    let got = run_sessions(&client, &q).await.unwrap();
    assert_eq!(got.days.len(), 1);
    assert_eq!(got.days[0].day, "2026-11-22");
    let (_, total) = reference(&rows, &q);
    assert!(close(&got.total, &total), "{:?} vs {total:?}", got.total);
}

/// Hand-made devices with known answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_gaps_midnight_and_edges() {
    let mut rng = Rng(11);
    let mut rows = Vec::new();
    let mut add = |ts: i64, name: &str, device: &str, session: &str, country: &str| {
        let mut r = row(&mut rng, "edge", ts, name, "", device);
        r.session_id = session.into();
        r.country = country.into();
        rows.push(r);
    };
    // 10:00 local on the first day: gaps of 29:59.999 and 30:00.000 stay in
    // one session, 30:00.001 starts the next.
    let l = SINCE + 10 * HOUR;
    add(l, "page_view", "gap", "", "DE");
    add(l + INACTIVITY_MS - 1, "page_view", "gap", "", "DE");
    add(l + 2 * INACTIVITY_MS - 1, "page_view", "gap", "", "DE");
    add(l + 3 * INACTIVITY_MS, "page_view", "gap", "", "DE");
    // 23:50 to 00:20 local: counts on the day it starts. A session-less
    // click in between is a session of its own.
    let midnight = SINCE + DAY;
    add(
        midnight - 10 * MINUTE,
        "page_view",
        "night",
        "s-night",
        "IN",
    );
    add(
        midnight + 20 * MINUTE,
        "page_view",
        "night",
        "s-night",
        "DE",
    );
    add(midnight - 5 * MINUTE, "click", "night", "", "DE");
    // Began before the range: not counted, although most of it is inside.
    add(SINCE - 10 * MINUTE, "page_view", "early", "", "DE");
    add(SINCE + 10 * MINUTE, "page_view", "early", "", "DE");
    // Begins in the range's last minutes and runs two hours past its end.
    add(UNTIL - 5 * MINUTE, "click", "late", "s-late", "DE");
    add(UNTIL + 2 * HOUR, "click", "late", "s-late", "DE");
    // Begins at the range's end: not counted.
    add(UNTIL, "page_view", "after", "", "DE");
    let mut written = rows.clone();
    written.extend(rows.iter().take(4).cloned());
    let client = store_with("sessions_edges", &written, 2).await;

    let q = request("edge");
    let got = run_sessions(&client, &q).await.unwrap();
    check(&rows, &q, &got);
    let days: Vec<(&str, u64)> = got
        .days
        .iter()
        .map(|d| (d.day.as_str(), d.stats.sessions))
        .collect();
    assert_eq!(days, [("2026-11-22", 4), ("2026-11-24", 1)]);
    let first = &got.days[0].stats;
    assert!((first.avg_duration_seconds - (3599.999 + 1800.0) / 4.0).abs() < 1e-9);
    assert_eq!(first.median_duration_seconds, 900.0);
    assert_eq!(first.avg_pages_per_session, 1.5);
    assert_eq!(got.days[1].stats.avg_duration_seconds, 7500.0);
    assert_eq!(got.total.sessions, 5);
    assert_eq!(got.total.median_duration_seconds, 1800.0);
    assert_eq!(got.total.avg_pages_per_session, 1.2);

    // Filters look at the session's first event.
    let mut q = request("edge");
    q.filters = vec![DimensionFilter {
        dimension: Dimension::Country,
        value: "IN".into(),
    }];
    let got = run_sessions(&client, &q).await.unwrap();
    assert_eq!(got.total.sessions, 1);
    assert_eq!(got.total.avg_duration_seconds, 1800.0);

    // Hostile values are bound; nothing matches, nothing breaks.
    let mut q = request("edge' OR '1'='1");
    q.filters = vec![DimensionFilter {
        dimension: Dimension::PagePath,
        value: "/x\\' OR 1=1 --".into(),
    }];
    let got = run_sessions(&client, &q).await.unwrap();
    assert_eq!(got.total, SessionStats::default());
    assert!(got.days.is_empty());
    let got = run_sessions(&client, &request("edge")).await.unwrap();
    assert_eq!(got.total.sessions, 5);
}
