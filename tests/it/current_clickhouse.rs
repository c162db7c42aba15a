//! Spoor's SQL on current ClickHouse as well as on 18.16: the same seeded
//! events go into the test's 18.16 server (the relay's schema and sink) and
//! into chdb-core, current ClickHouse in process (`tests/chdb/run.py`, one
//! Python process for everything: the relay's schema statements, the rows
//! dumped from 18.16 as TabSeparated and inserted in the same batches, so
//! the materialized views fire there too, then every query). Every query
//! shape Spoor renders then runs on both, with its values bound by the
//! `clickhouse` crate exactly as the services send them, and the answers
//! must be equal (numbers within 1e-9, text exact, row order included) and
//! non-empty where there is data: metrics from each rollup and the raw
//! table (group-bys, filters, sums, averages, the campaign columns,
//! Asia/Kolkata and a DST change), funnels with a breakdown and property
//! filters, device and user timelines with a cursor (and a user's through
//! an identity link, and the users a device is linked to), what the
//! identity views made of Segment's and the web SDK's identify, alias and
//! group events, sessions in a timezone, the freshness query, the relay's
//! device lookups and its retention listing and partition drops.
//!
//! A missing chdb-core fails the test with the set-up command to run; it is
//! never skipped.
//!
//! Why chdb-core and not a second server: no current ClickHouse server can be
//! installed through a package registry on the build machines, while
//! chdb-core (PyPI) embeds a current ClickHouse in a Python process: no
//! ports, no config, no daemon, about 3 s for everything. What it cannot
//! check: the HTTP interface and server-side settings of a current server
//! (chdb is clickhouse-local); the services' client code runs against 18.16
//! only. The releases differ in the `WITH TOTALS` row's key column (18.16
//! prints a `Date`'s default `0000-00-00`, current releases an empty string);
//! the readers ignore that column.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use spoor_aggregator::query::funnel::{FunnelRequest, FunnelStep};
use spoor_aggregator::query::sessions::SessionsRequest;
use spoor_aggregator::query::timeline::{Order, TimelineRequest};
use spoor_aggregator::query::{
    freshness_sql, Dimension, DimensionFilter, Granularity, Measure, MetricsRequest, Param,
    PropertyFilter, Source, Sql,
};
use spoor_aggregator::store::fetch_with_totals;
use spoor_core::debug::{DeviceQuery, Subject};
use spoor_store::retention::{
    drop_partition_sql, parse_partition, partitions_sql, PartitionKey, RetainedTable,
    RETAINED_TABLES,
};
use spoor_store::{schema, EventRow};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::tools::{self, spawn_tied, stop_child};

use crate::support::{schema_database, SchemaDb};
use spoor_tests::fixtures::{row, shuffle, Rng, DAY, HOUR, MINUTE};

/// 2026-03-28T00:00:00Z. Events fall in about [T0 - 6 h, T0 + 3 days +
/// 6 h), across Berlin's change to summer time (2026-03-29T01:00Z); late
/// ones in [T0 - 1 day, T0), inserted last.
const T0: i64 = 1_774_656_000_000;
/// "Now" for the freshness query and the timelines.
const NOW: i64 = T0 + 3 * DAY + 12 * HOUR;
/// Kolkata's midnight (UTC+05:30) starting 2026-03-28.
const KOLKATA_MIDNIGHT: i64 = T0 - 5 * HOUR - 30 * MINUTE;
/// Where the timelines start.
const TIMELINE_SINCE: i64 = T0 - DAY;
/// Events of a burst on one millisecond; the timelines' pages are shorter.
const BURST: usize = 24;
const PAGE: u32 = 15;
const DEVICES: u64 = 140;
const LATE_EVENTS: usize = 300;
const MAIN_INSERTS: usize = 3;
/// How long the chdb process may take, set-up included.
const CHDB_TIMEOUT: Duration = Duration::from_secs(180);
/// The database the chdb session creates.
const CHDB_DATABASE: &str = "spoor";

const COUNTRIES: [&str; 5] = ["DE", "FR", "US", "IN", ""];
const REGIONS: [&str; 4] = ["BE", "BY", "KA", ""];
const DEVICE_TYPES: [&str; 3] = ["desktop", "mobile", "tablet"];
const BROWSERS: [&str; 3] = ["Chrome", "Firefox", "Safari"];
const OSES: [&str; 4] = ["Windows", "macOS", "Android", "iOS"];
const PATHS: [&str; 4] = ["/", "/pricing", "/cart", "/p/1"];
/// Gaps between a device's events: ties on the millisecond, around the
/// 30-minute inactivity limit, hours.
const GAPS: [i64; 9] = [
    0,
    1_000,
    MINUTE,
    10 * MINUTE,
    30 * MINUTE - 1,
    30 * MINUTE,
    30 * MINUTE + 1,
    45 * MINUTE,
    3 * HOUR,
];

fn project_of(device: u64) -> &'static str {
    match device % 10 {
        9 => "other",
        8 => "blog",
        _ => "shop",
    }
}

/// Every third device is anonymous; the others carry a user id that
/// devices 90 apart share (one user, two devices).
fn user_of(device: u64) -> String {
    if device.is_multiple_of(3) {
        String::new()
    } else {
        format!("u{}", device % 90)
    }
}

/// One event of `device` at `ts_ms`, with random context and properties.
fn event_row(rng: &mut Rng, device: u64, ts_ms: i64, name: &str, session: &str) -> EventRow {
    let mut r = row(
        rng,
        project_of(device),
        ts_ms,
        name,
        &user_of(device),
        &format!("d{device}"),
    );
    r.session_id = session.into();
    r.received_at_ms = ts_ms + rng.below(5_000) as i64;
    r.country = rng.pick(&COUNTRIES).to_string().into();
    r.region = rng.pick(&REGIONS).to_string().into();
    r.device_type = rng.pick(&DEVICE_TYPES).to_string().into();
    r.browser = rng.pick(&BROWSERS).to_string().into();
    r.os = rng.pick(&OSES).to_string().into();
    r.page_path = rng.pick(&PATHS).to_string();
    // Campaigns by device and event time (no draw from `rng`, so the rest
    // of the data set stays as it was).
    let utm = (device + (ts_ms / HOUR) as u64) % 4;
    r.utm_source = ["", "newsletter", "ads", "ads"][utm as usize].into();
    r.utm_medium = ["", "email", "cpc", "cpc"][utm as usize].into();
    r.utm_campaign = ["", "winter", "spring", "winter"][utm as usize].into();
    r.utm_term = ["", "", "boots", ""][utm as usize].into();
    r.utm_content = ["", "hero", "", ""][utm as usize].into();
    r.properties = match name {
        "add_to_cart" => format!("{{\"plan\":\"{}\"}}", rng.pick(&["pro", "free"])),
        "payment" => format!(
            "{{\"method\":\"{}\",\"amount\":{}.{}}}",
            rng.pick(&["card", "paypal"]),
            rng.below(100),
            rng.below(100)
        ),
        "page_view" => format!("{{\"n\":{}}}", rng.below(5)),
        _ => "{}".into(),
    };
    r
}

/// The main inserts (shuffled, so out of time order) and the late one, each
/// with its own batch id.
fn data_set() -> Vec<(String, Vec<EventRow>)> {
    let mut rng = Rng(0xC0DE_C4DB);
    let funnel = ["view_item", "add_to_cart", "checkout", "payment"];
    let mut main = Vec::new();
    for d in 0..DEVICES {
        let mut ts = T0 - 6 * HOUR + rng.below((3 * DAY) as u64) as i64;
        let mut session = String::new();
        let mut stage = 0;
        for _ in 0..10 + rng.below(30) {
            if rng.below(5) == 0 {
                session = match rng.below(3) {
                    0 => String::new(),
                    _ => format!("s-{d}-{}", rng.below(4)),
                };
            }
            let name = match rng.below(10) {
                0..=5 => {
                    let name = funnel[stage];
                    stage = (stage + 1) % funnel.len();
                    name
                }
                6..=8 => "page_view",
                _ => "click",
            };
            main.push(event_row(&mut rng, d, ts, name, &session));
            ts += *rng.pick(&GAPS) + rng.below(2) as i64;
        }
    }
    // Bursts on one millisecond, so ties are broken by event id: where the
    // device timeline starts (its first page ends inside the burst), where
    // the user timeline (newest first) starts, and step-1 events of
    // session-less sessions for the funnel's breakdown and the sessions'
    // first-event filters.
    for (device, ts, name) in [
        (5, TIMELINE_SINCE, "click"),
        (91, NOW - 1, "page_view"),
        (12, T0 + 12 * HOUR, "view_item"),
    ] {
        for i in 0..BURST {
            let mut r = event_row(&mut rng, device, ts, name, "");
            if device == 91 && i % 2 == 0 {
                r.user_id = String::new();
            }
            main.push(r);
        }
    }
    // Identity calls for the identity views: Segment's (with a decoy
    // `traits` in the context) and the web SDK's identify and alias, and
    // Segment's groups. The alias of `u-stitch` comes after the timelines'
    // window, so only `identity_links` links d12 to that user.
    for (device, ts, name, user, properties) in [
        (
            3,
            T0 + HOUR,
            "identify",
            "u-seg",
            r#"{"$segment":{"type":"identify","messageId":"m-1","traits":{"plan":"free"},"context":{"traits":{"plan":"ctx"}}}}"#,
        ),
        (
            3,
            T0 + 2 * HOUR,
            "identify",
            "u-seg",
            r#"{"$segment":{"type":"identify","messageId":"m-2","traits":{"plan":"pro"},"context":{"traits":{"plan":"ctx"}}}}"#,
        ),
        (
            3,
            T0 + 3 * HOUR,
            "identify",
            "u-seg",
            r#"{"$segment":{"type":"identify","messageId":"m-3","traits":{},"context":{"traits":{"plan":"ctx"}}}}"#,
        ),
        (6, T0 + 3 * HOUR, "identify", "u-web", r#"{"plan":"x"}"#),
        (
            6,
            T0 + 4 * HOUR,
            "alias",
            "u-web2",
            r#"{"previous_id":"u-web"}"#,
        ),
        (
            12,
            NOW + HOUR,
            "alias",
            "u-stitch",
            r#"{"$segment":{"type":"alias","messageId":"m-4","previousId":"d12"}}"#,
        ),
        (
            3,
            T0 + HOUR,
            "group",
            "u-seg",
            r#"{"$segment":{"type":"group","messageId":"m-5","groupId":"acme","traits":{"name":"Acme"}}}"#,
        ),
        (
            3,
            T0 + 5 * HOUR,
            "group",
            "u-seg",
            r#"{"$segment":{"type":"group","messageId":"m-6","groupId":42,"traits":{"name":"Forty-two"}}}"#,
        ),
    ] {
        let mut r = event_row(&mut rng, device, ts, name, "");
        r.user_id = user.into();
        r.properties = properties.into();
        main.push(r);
    }
    shuffle(&mut rng, &mut main);
    let per_insert = main.len().div_ceil(MAIN_INSERTS);
    let mut inserts: Vec<(String, Vec<EventRow>)> = main
        .chunks(per_insert)
        .enumerate()
        .map(|(i, rows)| (format!("main-{i}"), rows.to_vec()))
        .collect();
    let late = (0..LATE_EVENTS)
        .map(|_| {
            let d = rng.below(DEVICES);
            let ts = T0 - DAY + rng.below(DAY as u64) as i64;
            let name = *rng.pick(&["page_view", "view_item", "add_to_cart", "click"]);
            let mut r = event_row(&mut rng, d, ts, name, "");
            r.received_at_ms = T0 + 3 * DAY + rng.below(HOUR as u64) as i64;
            r
        })
        .collect();
    inserts.push(("late".into(), late));
    for (batch, rows) in &mut inserts {
        for r in rows {
            r.batch_id = batch.as_str().into();
        }
    }
    inserts
}

/// What the test does with a statement's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Rows and totals must be equal on both, and rows non-empty.
    Rows,
    /// The retention listing: equal once each partition is parsed (18.16
    /// prints a day unquoted, current releases quote it).
    Partitions,
    /// DDL: must succeed on both.
    Executes,
}

struct Statement {
    name: String,
    sql: Sql,
    check: Check,
}

/// `sql` with its values bound by the `clickhouse` crate, as the services
/// send it.
fn bound(sql: &Sql) -> String {
    let mut query = clickhouse::Client::default().query(&sql.text);
    for p in &sql.params {
        query = match p {
            Param::Str(s) => query.bind(s.as_str()),
            Param::Int(i) => query.bind(*i),
        };
    }
    let text = query.sql_display().to_string();
    assert!(!text.starts_with("invalid SQL"), "{text}: {sql:?}");
    text
}

fn metrics(
    project: &str,
    measure: Measure,
    (since_ms, until_ms): (i64, i64),
    granularity: Granularity,
    timezone: &str,
    group_by: Vec<Dimension>,
) -> MetricsRequest {
    MetricsRequest {
        project_id: project.into(),
        measure,
        events: vec![],
        since_ms,
        until_ms,
        granularity,
        timezone: timezone.into(),
        group_by,
        filters: vec![],
        properties: vec![],
    }
}

fn property(name: &str, value: &str) -> PropertyFilter {
    PropertyFilter {
        name: name.into(),
        value: value.into(),
    }
}

fn step(event: &str, properties: Vec<PropertyFilter>) -> FunnelStep {
    FunnelStep {
        event: event.into(),
        properties,
    }
}

/// Metrics requests, each with the table the planner must pick: every
/// rollup, the raw table, timezones with whole-hour, half-hour and changing
/// offsets.
fn metrics_requests() -> Vec<(&'static str, MetricsRequest, Source)> {
    use Dimension::*;
    let whole = (T0 - DAY, T0 + 4 * DAY);
    let mut by_day = metrics(
        "shop",
        Measure::UniqueUsers,
        whole,
        Granularity::Day,
        "UTC",
        vec![DeviceType],
    );
    by_day.events = vec!["view_item".into(), "payment".into()];
    by_day.filters = vec![DimensionFilter {
        dimension: Browser,
        value: "Chrome".into(),
    }];
    let mut sums = metrics(
        "shop",
        Measure::Sum("amount".into()),
        whole,
        Granularity::Day,
        "UTC",
        vec![Country],
    );
    sums.events = vec!["payment".into()];
    let mut averages = metrics(
        "shop",
        Measure::Avg("amount".into()),
        whole,
        Granularity::Hour,
        "America/New_York",
        vec![],
    );
    averages.properties = vec![property("method", "card")];
    let mut plans = metrics(
        "shop",
        Measure::UniqueUsers,
        whole,
        Granularity::Day,
        "Asia/Kolkata",
        vec![PagePath, Browser],
    );
    plans.properties = vec![property("plan", "pro")];
    let mut campaigns = metrics(
        "shop",
        Measure::Count,
        whole,
        Granularity::Day,
        "UTC",
        vec![UtmSource, UtmCampaign, UtmTerm],
    );
    campaigns.filters = vec![DimensionFilter {
        dimension: UtmMedium,
        value: "cpc".into(),
    }];
    vec![
        (
            "metrics: count by day, event and country (day rollup)",
            metrics(
                "shop",
                Measure::Count,
                whole,
                Granularity::Day,
                "UTC",
                vec![Event, Country],
            ),
            Source::Day,
        ),
        (
            "metrics: users by day and device type, two events, a browser (day rollup)",
            by_day,
            Source::Day,
        ),
        (
            "metrics: count by hour and os in Berlin across the DST change (hour rollup)",
            metrics(
                "shop",
                Measure::Count,
                (T0 + 10 * HOUR, T0 + 2 * DAY + 10 * HOUR),
                Granularity::Hour,
                "Europe/Berlin",
                vec![Os],
            ),
            Source::Hour,
        ),
        (
            "metrics: users by hour, country and event in Kolkata (minute rollup)",
            metrics(
                "shop",
                Measure::UniqueUsers,
                (T0 + 30 * MINUTE, T0 + 2 * DAY + 30 * MINUTE),
                Granularity::Hour,
                "Asia/Kolkata",
                vec![Country, Event],
            ),
            Source::Minute,
        ),
        (
            "metrics: count by minute (minute rollup)",
            metrics(
                "blog",
                Measure::Count,
                (T0 + DAY, T0 + DAY + 6 * HOUR),
                Granularity::Minute,
                "UTC",
                vec![],
            ),
            Source::Minute,
        ),
        (
            "metrics: count by Kolkata day and region (raw)",
            metrics(
                "shop",
                Measure::Count,
                whole,
                Granularity::Day,
                "Asia/Kolkata",
                vec![Region],
            ),
            Source::Raw,
        ),
        (
            "metrics: sum of payment amounts by country (raw)",
            sums,
            Source::Raw,
        ),
        (
            "metrics: average card payment by New York hour (raw)",
            averages,
            Source::Raw,
        ),
        (
            "metrics: users with plan=pro by Kolkata day, path and browser (raw)",
            plans,
            Source::Raw,
        ),
        (
            "metrics: cpc events by day, utm source, campaign and term (raw)",
            campaigns,
            Source::Raw,
        ),
    ]
}

/// Every statement of the comparison except the timelines' second pages
/// (their cursors come from the first pages) and the retention steps.
fn statements(db_1816: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut add = |name: String, sql: Sql, check: Check| out.push(Statement { name, sql, check });
    let plain = |text: &str| Sql {
        text: text.into(),
        params: vec![],
    };

    // The rows and what the views made of them.
    for text in [
        "SELECT count(), uniqExact(event_id), sum(ts_ms) FROM events",
        "SELECT count(), sum(ts_ms) FROM events_by_device",
        "SELECT count(), sum(ts_ms) FROM device_users",
        "SELECT countMerge(events), uniqExactMerge(users), maxMerge(last_received_ms) FROM events_rollup_minute",
        "SELECT countMerge(events), uniqExactMerge(users) FROM events_rollup_hour",
        "SELECT countMerge(events), uniqExactMerge(users) FROM events_rollup_day",
        "SELECT project_id, user_id, anonymous_id, minMerge(first_seen_ms), maxMerge(last_seen_ms) \
         FROM identity_links GROUP BY project_id, user_id, anonymous_id \
         ORDER BY project_id, user_id, anonymous_id",
        "SELECT project_id, user_id, argMaxMerge(traits), maxMerge(updated_ms) FROM user_traits \
         GROUP BY project_id, user_id ORDER BY project_id, user_id",
        "SELECT project_id, group_id, argMaxMerge(traits), maxMerge(updated_ms) FROM group_traits \
         GROUP BY project_id, group_id ORDER BY project_id, group_id",
    ] {
        add(format!("rows: {text}"), plain(text), Check::Rows);
    }

    for (name, request, source) in metrics_requests() {
        let plan = request.plan().unwrap();
        assert_eq!(plan.source, source, "{name}: {request:?}");
        add(name.into(), plan.sql, Check::Rows);
    }
    // One request every table can answer, from each of them.
    let everywhere = metrics(
        "shop",
        Measure::Count,
        (T0 - DAY, T0 + 3 * DAY),
        Granularity::Day,
        "UTC",
        vec![Dimension::Event, Dimension::Browser, Dimension::Os],
    );
    for source in [Source::Day, Source::Hour, Source::Minute, Source::Raw] {
        add(
            format!("metrics: count by day, event, browser and os from {source:?}"),
            everywhere.sql_from(source).unwrap(),
            Check::Rows,
        );
    }

    let checkout = FunnelRequest {
        project_id: "shop".into(),
        steps: vec![
            step("view_item", vec![]),
            step("add_to_cart", vec![property("plan", "pro")]),
            step("checkout", vec![]),
            step("payment", vec![property("method", "card")]),
        ],
        window_seconds: 6 * 3600,
        since_ms: T0 - DAY,
        until_ms: T0 + 3 * DAY,
        breakdown: Some(Dimension::Country),
        breakdown_limit: 3,
    };
    add(
        "funnel: four steps, property filters, by country, top 3".into(),
        checkout.sql().unwrap(),
        Check::Rows,
    );
    let short = FunnelRequest {
        steps: vec![step("view_item", vec![]), step("payment", vec![])],
        window_seconds: 86_400,
        breakdown: None,
        ..checkout
    };
    add(
        "funnel: two steps, no breakdown".into(),
        short.sql().unwrap(),
        Check::Rows,
    );

    for (name, project, timezone, since, filters) in [
        (
            "sessions: per Kolkata day",
            "shop",
            "Asia/Kolkata",
            KOLKATA_MIDNIGHT,
            vec![],
        ),
        (
            "sessions: per Berlin day, first event from Germany on /pricing",
            "shop",
            "Europe/Berlin",
            T0 - HOUR,
            vec![
                DimensionFilter {
                    dimension: Dimension::Country,
                    value: "DE".into(),
                },
                DimensionFilter {
                    dimension: Dimension::PagePath,
                    value: "/pricing".into(),
                },
            ],
        ),
        ("sessions: per UTC day", "blog", "UTC", T0 - DAY, vec![]),
    ] {
        let request = SessionsRequest {
            project_id: project.into(),
            since_ms: since,
            until_ms: since + 3 * DAY,
            timezone: timezone.into(),
            filters,
        };
        add(name.into(), request.sql().unwrap(), Check::Rows);
    }

    add(
        "freshness: the last two days".into(),
        freshness_sql("shop", Some(NOW)),
        Check::Rows,
    );
    add(
        "freshness: every day".into(),
        freshness_sql("blog", None),
        Check::Rows,
    );

    // The relay's device lookups (their own binding, same crate).
    let client = clickhouse::Client::default();
    for (name, subject) in [
        (
            "relay device lookup: a device",
            Subject::Device("d5".into()),
        ),
        ("relay device lookup: a user", Subject::User("u1".into())),
    ] {
        // Received over the whole data set (the late events too).
        let query = DeviceQuery {
            subject,
            project_id: Some("shop".into()),
            since_ms: T0 - DAY,
            until_ms: T0 + 4 * DAY,
            limit: 1_000,
        };
        let text = spoor_store::device::bound(&client, &query)
            .unwrap()
            .sql_display()
            .to_string();
        add(name.into(), plain(&text), Check::Rows);
    }

    // A user whose only link to d12 is an alias after the window.
    add(
        "timeline: a user through an identity link".into(),
        timeline((Some("u-stitch"), None), Order::OldestFirst, 1000, None),
        Check::Rows,
    );
    // The users a device is linked to: d12 by its own events (u12) and by
    // u-stitch's alias; d3 by identifies (u-seg) and its events.
    for device in ["d12", "d3"] {
        let links = TimelineRequest {
            project_id: "shop".into(),
            anonymous_id: Some(device.into()),
            since_ms: Some(TIMELINE_SINCE),
            ..TimelineRequest::default()
        }
        .plan(NOW)
        .unwrap()
        .links_sql
        .unwrap();
        add(
            format!("timeline: the users device {device} is linked to"),
            links,
            Check::Rows,
        );
    }
    // d1 with its linked user's (u1's) signed-in events on d91 too.
    let wide = TimelineRequest {
        project_id: "shop".into(),
        anonymous_id: Some("d1".into()),
        since_ms: Some(T0 - DAY),
        with_linked_users: true,
        limit: Some(1000),
        ..TimelineRequest::default()
    };
    add(
        "timeline: a device with its linked users' events".into(),
        wide.plan(NOW).unwrap().sql,
        Check::Rows,
    );

    // The retention listing, bound to each side's database.
    let tables: Vec<&RetainedTable> = RETAINED_TABLES.iter().collect();
    let listing = |db: &str| Sql {
        text: partitions_sql(&tables),
        params: vec![Param::Str(db.into())],
    };
    add(
        format!("retention: partitions of {db_1816}"),
        listing(db_1816),
        Check::Partitions,
    );
    out
}

fn timeline(
    who: (Option<&str>, Option<&str>),
    order: Order,
    limit: u32,
    cursor: Option<String>,
) -> Sql {
    TimelineRequest {
        project_id: "shop".into(),
        user_id: who.0.map(Into::into),
        anonymous_id: who.1.map(Into::into),
        since_ms: Some(TIMELINE_SINCE),
        until_ms: None,
        limit: Some(limit),
        cursor,
        order,
        with_linked_users: false,
    }
    .plan(NOW)
    .unwrap()
    .sql
}

/// An answer: rows and `WITH TOTALS` row.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    data: Vec<Vec<Value>>,
    totals: Option<Vec<Value>>,
}

/// A 64-bit integer cell (ClickHouse may quote them in JSON), exactly.
fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Text equal, numbers equal (integers exactly, quoted or not; floats
/// within 1e-9, relative above 1), arrays element by element.
fn same_cell(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_cell(p, q))
        }
        (Value::Null, Value::Null) => true,
        (Value::Number(_), _) | (_, Value::Number(_)) => {
            if let (Some(x), Some(y)) = (as_i64(a), as_i64(b)) {
                return x == y;
            }
            match (as_f64(a), as_f64(b)) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                _ => false,
            }
        }
        _ => a == b,
    }
}

fn same_row(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_cell(x, y))
}

/// Rows equal in order; `WITH TOTALS` rows equal but for their first
/// column. That is the grouping key in every Spoor query with totals (the
/// funnel's breakdown, the sessions' day), which ClickHouse fills with a
/// default that differs between releases (for the sessions' day, 18.16
/// prints `0000-00-00` and current releases an empty string) and which
/// the readers ignore.
fn same_answer(a: &Answer, b: &Answer) -> bool {
    a.data.len() == b.data.len()
        && a.data.iter().zip(&b.data).all(|(x, y)| same_row(x, y))
        && match (&a.totals, &b.totals) {
            (Some(x), Some(y)) => {
                x.len() == y.len() && same_row(&x[1.min(x.len())..], &y[1.min(y.len())..])
            }
            (None, None) => true,
            _ => false,
        }
}

/// The retention listing as (table, parsed partition, max_day); an
/// unparsable partition fails.
fn partitions(answer: &Answer) -> BTreeSet<(String, PartitionKey, i64)> {
    answer
        .data
        .iter()
        .map(|row| {
            let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
            let table = text(0);
            let granularity = RETAINED_TABLES
                .iter()
                .find(|t| t.name == table)
                .unwrap_or_else(|| panic!("not a retained table: {row:?}"))
                .granularity;
            let key = parse_partition(granularity, &text(1), &text(2))
                .unwrap_or_else(|| panic!("unparsable partition: {row:?}"));
            (table, key, as_i64(&row[3]).unwrap())
        })
        .collect()
}

/// What chdb answered to one statement.
fn chdb_answer(result: &Value) -> Result<Option<Answer>, String> {
    if let Some(e) = result.get("error") {
        return Err(e.as_str().unwrap_or_default().to_string());
    }
    let Some(ok) = result.get("ok").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let rows = |v: &Value| -> Vec<Vec<Value>> {
        v.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Some(Answer {
        data: rows(&ok["data"]),
        totals: ok.get("totals").and_then(Value::as_array).cloned(),
    }))
}

/// Everything chdb is given.
#[derive(serde::Serialize)]
struct ChdbJob<'a> {
    path: String,
    database: &'a str,
    schema: Vec<String>,
    inserts: Vec<String>,
    queries: Vec<String>,
}

/// Runs `tests/chdb/run.py` once on `job` and returns its JSON answer.
/// Fails, naming the set-up command, when chdb-core is missing.
fn run_chdb(job: &ChdbJob) -> Value {
    let chdb = tools::chdb_dir().unwrap_or_else(|e| panic!("{e:#}"));
    let script = tools::workspace_root().join("tests/chdb/run.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .env("PYTHONPATH", &chdb)
        .env("TZ", "UTC")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied(cmd, Signal::SIGKILL).unwrap_or_else(|e| {
        panic!(
            "starting python3 {} (chdb-core needs python3): {e}; {}",
            script.display(),
            tools::SETUP_HINT
        )
    });
    let input = serde_json::to_vec(job).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let reader = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + CHDB_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            stop_child(&mut child, Duration::from_secs(1), false);
            panic!("chdb took longer than {CHDB_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let written = writer.join().unwrap();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        status.success(),
        "{} failed ({status}): {stderr}",
        script.display()
    );
    written.unwrap();
    serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "chdb's answer is not JSON ({e}): {}; stderr: {stderr}",
            String::from_utf8_lossy(&stdout)
        )
    })
}

/// A short form of an answer for failure messages.
fn brief(answer: &Result<Option<Answer>, String>) -> String {
    let text = format!("{answer:?}");
    if text.chars().count() > 1_500 {
        format!("{}…", text.chars().take(1_500).collect::<String>())
    } else {
        text
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoor_sql_answers_the_same_on_18_16_and_current_clickhouse() {
    // Fail at once, before any work, when chdb-core is missing.
    tools::chdb_dir().unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();

    // 18.16: the relay's schema and sink.
    let ch = ClickHouseServer::shared();
    let SchemaDb {
        name: db,
        sink,
        client,
        ..
    } = schema_database(ch, "current_clickhouse").await;
    let inserts = data_set();
    for (_, rows) in &inserts {
        sink.insert(rows).await.unwrap();
    }
    let total: usize = inserts.iter().map(|(_, rows)| rows.len()).sum();

    // The same rows for chdb, in the same batches, as 18.16 stored them.
    let dumps: Vec<String> = inserts
        .iter()
        .map(|(batch, rows)| {
            let tsv = ch
                .query(&format!(
                    "SELECT * FROM {db}.events WHERE batch_id = '{batch}' FORMAT TabSeparated"
                ))
                .unwrap();
            assert_eq!(tsv.lines().count(), rows.len(), "batch {batch}");
            tsv
        })
        .collect();

    // The timelines' first pages on 18.16 give the second pages' cursors.
    let mut statements = statements(&db);
    for (name, who, order) in [
        ("timeline: a device", (None, Some("d5")), Order::OldestFirst),
        ("timeline: a user", (Some("u1"), None), Order::NewestFirst),
    ] {
        let first = timeline(who, order, PAGE, None);
        let (rows, _) = fetch_with_totals(&client, &first).await.unwrap();
        let last = rows.last().unwrap_or_else(|| panic!("{name}: no events"));
        let ts_ms = as_i64(&last[2]).unwrap();
        let burst = match order {
            Order::OldestFirst => TIMELINE_SINCE,
            Order::NewestFirst => NOW - 1,
        };
        assert_eq!(
            ts_ms, burst,
            "{name}: the first page ends outside the burst"
        );
        let cursor = format!("{ts_ms}:{}", last[0].as_str().unwrap());
        for (page, sql) in [
            ("first page", first),
            ("next page", timeline(who, order, PAGE, Some(cursor))),
        ] {
            statements.push(Statement {
                name: format!("{name}, {page}"),
                sql,
                check: Check::Rows,
            });
        }
    }

    // Retention last: drop the late day of `events` and a month of the day
    // rollup, then count what is left.
    let late_day = PartitionKey::Day(u16::try_from((T0 - DAY) / DAY).unwrap());
    let march = PartitionKey::Month {
        year: 2026,
        month: 3,
    };
    for (table, key) in [("events", late_day), ("events_rollup_day", march)] {
        statements.push(Statement {
            name: format!("retention: drop {key} of {table}"),
            sql: Sql {
                text: drop_partition_sql(table, key),
                params: vec![],
            },
            check: Check::Executes,
        });
    }
    statements.push(Statement {
        name: "retention: what is left".into(),
        sql: Sql {
            text: "SELECT (SELECT count() FROM events), (SELECT count() FROM events_rollup_day)"
                .into(),
            params: vec![],
        },
        check: Check::Rows,
    });

    // chdb: the chdb listing binds its own database name.
    let scratch = tempfile::tempdir().unwrap();
    let queries = statements
        .iter()
        .map(|s| match s.check {
            Check::Partitions => bound(&Sql {
                text: s.sql.text.clone(),
                params: vec![Param::Str(CHDB_DATABASE.into())],
            }),
            _ => bound(&s.sql),
        })
        .collect();
    let job = ChdbJob {
        path: scratch.path().join("chdb").display().to_string(),
        database: CHDB_DATABASE,
        schema: schema::SCHEMA_FILES
            .iter()
            .flat_map(|(_, sql)| schema::split_statements(sql))
            .collect(),
        inserts: dumps,
        queries,
    };
    let chdb_started = Instant::now();
    let chdb = run_chdb(&job);
    let chdb_secs = chdb_started.elapsed().as_secs_f64();
    let version = chdb["version"].as_str().unwrap_or_default().to_string();
    assert_eq!(chdb["timezone"], "UTC", "chdb's timezone");
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 24,
        "chdb runs ClickHouse {version}, not a current release"
    );
    let results = chdb["results"].as_array().unwrap();
    assert_eq!(results.len(), statements.len());

    // 18.16, statement by statement, and the comparison.
    let mut failures = Vec::new();
    for (s, result) in statements.iter().zip(results) {
        let old: Result<Option<Answer>, String> = match s.check {
            Check::Executes => client
                .query(&s.sql.text)
                .execute()
                .await
                .map(|()| None)
                .map_err(|e| e.to_string()),
            _ => fetch_with_totals(&client, &s.sql)
                .await
                .map(|(data, totals)| Some(Answer { data, totals }))
                .map_err(|e| e.to_string()),
        };
        let new = chdb_answer(result);
        let fine = match (s.check, &old, &new) {
            (Check::Executes, Ok(None), Ok(None)) => true,
            (Check::Rows, Ok(Some(a)), Ok(Some(b))) => same_answer(a, b) && !a.data.is_empty(),
            (Check::Partitions, Ok(Some(a)), Ok(Some(b))) => {
                !a.data.is_empty() && partitions(a) == partitions(b)
            }
            _ => false,
        };
        if !fine {
            failures.push(format!(
                "{}\n  SQL: {}\n  18.16: {}\n  {version}: {}",
                s.name,
                bound(&s.sql),
                brief(&old),
                brief(&new)
            ));
        }
    }
    eprintln!(
        "{} statements over {total} events agree on 18.16 and ClickHouse {version} \
         (chdb {chdb_secs:.1} s, whole test {:.1} s)",
        statements.len() - failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} statements differ between 18.16 and ClickHouse {version}:\n\n{}",
        failures.len(),
        statements.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_missing_chdb_names_the_setup_command() {
    let err = tools::chdb_dir_in(Some("/nonexistent/chdb".into())).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("cargo xtask setup"), "{text}");
    assert!(text.contains("SPOOR_CHDB_PATH=/nonexistent/chdb"), "{text}");
}
