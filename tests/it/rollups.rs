//! The rollup tables on a real clickhouse-server (18.16 here): a seeded
//! random data set goes in through the relay's sink in several inserts (so
//! the materialized views fire per insert, as in production), the last one
//! late (event times a day before the rest). Then, for a few hundred random
//! requests, the planned answer (day, hour or minute rollup, or raw) and
//! every rollup that claims it can answer must equal the raw answer row for
//! row; each table must have been chosen a fair number of times; and the
//! late events must be counted in their own buckets.

use std::collections::{BTreeMap, BTreeSet};

use spoor_aggregator::query::{
    Dimension, DimensionFilter, Granularity, Measure, MetricsRequest, Source,
};
use spoor_aggregator::store::{run_metrics, MetricsRow};
use spoor_core::{Device, Geo};
use spoor_relay::sink::clickhouse::ClickHouseSink;
use spoor_store::EventRow;
use spoor_tests::clickhouse::ClickHouseServer;

use crate::support::{schema_database, SchemaDb};
use spoor_tests::fixtures::{batch, event};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// 2026-03-28T00:00:00Z. The main events fall in [T0, T0 + 3 days), which
/// holds Berlin's change to summer time (2026-03-29T01:00Z); the late ones
/// a day earlier, in [T0 - 1 day, T0 + 2 days).
const T0: i64 = 1_774_656_000_000;
const MAIN_EVENTS: usize = 3_600;
const MAIN_INSERTS: usize = 6;
const LATE_EVENTS: usize = 400;
const REQUESTS: usize = 200;

const PROJECTS: [&str; 4] = ["p1", "p1", "p2", "p3"];
const EVENTS: [&str; 4] = ["page_view", "click", "add_to_cart", "purchase"];
const COUNTRIES: [&str; 5] = ["DE", "FR", "US", "IN", ""];
const DEVICE_TYPES: [&str; 3] = ["desktop", "mobile", "tablet"];
const BROWSERS: [&str; 3] = ["Chrome", "Firefox", "Safari"];
const OSES: [&str; 4] = ["Windows", "macOS", "Android", "iOS"];
const KEPT: [Dimension; 5] = [
    Dimension::Event,
    Dimension::Country,
    Dimension::DeviceType,
    Dimension::Browser,
    Dimension::Os,
];

/// SplitMix64: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An integer in `[lo, hi)`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `percent`%.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The request's plan (`MetricsRequest::plan`, the smallest table that
/// answers exactly) run, with the table that answered.
async fn planned(
    client: &clickhouse::Client,
    request: &MetricsRequest,
) -> Result<(Source, Vec<MetricsRow>), Box<dyn std::error::Error>> {
    let plan = request.plan()?;
    Ok((plan.source, run_metrics(client, &plan.sql).await?))
}

/// One random event at `ts_ms`, with every dimension drawn from the pools:
/// a third without user_id (counted by device).
fn row(rng: &mut Rng, n: u128, ts_ms: i64) -> EventRow {
    let mut e = event(n);
    e.ts_ms = ts_ms;
    e.event = rng.pick(&EVENTS).into();
    e.user_id = if rng.percent(33) {
        String::new()
    } else {
        format!("u{}", rng.below(80))
    };
    e.anonymous_id = format!("d{}", rng.below(120));
    let mut b = batch(&format!("rollup-{n}"), vec![]);
    b.project_id = rng.pick(&PROJECTS).into();
    b.geo = Geo {
        country: rng.pick(&COUNTRIES).into(),
        ..Geo::default()
    };
    b.device = Device {
        browser: rng.pick(&BROWSERS).into(),
        os: rng.pick(&OSES).into(),
        device_type: rng.pick(&DEVICE_TYPES).into(),
        ..Device::default()
    };
    EventRow::new(&b, e)
}

/// Event times: half in four busy hours (several events per minute bucket,
/// one of them Berlin's missing hour), half spread over the three days.
fn main_time(rng: &mut Rng) -> i64 {
    const BUSY: [i64; 4] = [10 * HOUR, DAY + HOUR, DAY + 20 * HOUR, 2 * DAY + 5 * HOUR];
    if rng.percent(50) {
        T0 + rng.pick(&BUSY) + rng.range(0, HOUR)
    } else {
        T0 + rng.range(0, 3 * DAY)
    }
}

/// The main inserts, then the late one.
fn data_set() -> (Vec<Vec<EventRow>>, Vec<EventRow>) {
    let mut rng = Rng(0x5EED_0005);
    let main: Vec<EventRow> = (0..MAIN_EVENTS)
        .map(|n| {
            let ts = main_time(&mut rng);
            row(&mut rng, n as u128, ts)
        })
        .collect();
    let inserts = main
        .chunks(MAIN_EVENTS / MAIN_INSERTS)
        .map(<[EventRow]>::to_vec)
        .collect();
    let late = (0..LATE_EVENTS)
        .map(|n| {
            let ts = main_time(&mut rng) - DAY;
            row(&mut rng, (MAIN_EVENTS + n) as u128, ts)
        })
        .collect();
    (inserts, late)
}

struct Store {
    sink: ClickHouseSink,
    client: clickhouse::Client,
}

async fn store(prefix: &str) -> Store {
    let ch = ClickHouseServer::shared();
    let SchemaDb { sink, client, .. } = schema_database(ch, prefix).await;
    Store { sink, client }
}

/// A valid request: count or unique users, a range aligned to days, hours,
/// minutes or nothing, any granularity, one of four timezones, up to three
/// group-bys and two filters over the kept dimensions, up to two events.
fn random_request(rng: &mut Rng) -> MetricsRequest {
    let measure = if rng.percent(50) {
        Measure::Count
    } else {
        Measure::UniqueUsers
    };
    let timezone = match rng.below(100) {
        0..=49 => "UTC",
        50..=69 => "Europe/Berlin",
        70..=84 => "Asia/Kolkata",
        _ => "America/New_York",
    };
    let granularity = match rng.below(100) {
        0..=39 => Granularity::Day,
        40..=74 => Granularity::Hour,
        _ => Granularity::Minute,
    };
    // Ranges of up to four days (5,760 minute buckets) around the data.
    let (since_ms, until_ms) = match rng.below(100) {
        0..=34 => {
            let since = T0 + rng.range(-2, 4) * DAY;
            (since, since + rng.range(1, 5) * DAY)
        }
        35..=59 => {
            let since = T0 + rng.range(-30, 80) * HOUR;
            (since, since + rng.range(1, 97) * HOUR)
        }
        60..=84 => {
            let since = T0 + rng.range(-30 * 60, 80 * 60) * MIN;
            (since, since + rng.range(1, 4 * 24 * 60 + 1) * MIN)
        }
        _ => {
            let since = T0 + rng.range(-DAY - HOUR, 3 * DAY);
            (since, since + rng.range(1, 4 * DAY))
        }
    };
    let mut group_by = Vec::new();
    for _ in 0..rng.below(4) {
        let d = rng.pick(&KEPT);
        if !group_by.contains(&d) {
            group_by.push(d);
        }
    }
    let filters = match rng.below(100) {
        0..=49 => 0,
        50..=84 => 1,
        _ => 2,
    };
    let filters = (0..filters)
        .map(|_| {
            let dimension = rng.pick(&KEPT);
            let value = match dimension {
                Dimension::Event => rng.pick(&EVENTS),
                Dimension::Country => rng.pick(&COUNTRIES[..4]),
                Dimension::DeviceType => rng.pick(&DEVICE_TYPES),
                Dimension::Browser => rng.pick(&BROWSERS),
                _ => rng.pick(&OSES),
            };
            DimensionFilter {
                dimension,
                value: value.into(),
            }
        })
        .collect();
    let events = match rng.below(100) {
        0..=59 => vec![],
        60..=84 => vec![rng.pick(&EVENTS).to_string()],
        _ => vec![rng.pick(&EVENTS).to_string(), rng.pick(&EVENTS).to_string()],
    };
    MetricsRequest {
        project_id: if rng.percent(3) {
            "nobody"
        } else {
            rng.pick(&PROJECTS)
        }
        .into(),
        measure,
        events,
        since_ms,
        until_ms,
        granularity,
        timezone: timezone.into(),
        group_by,
        filters,
        properties: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_answers_equal_raw_answers() {
    let store = store("rollups_random").await;
    let (inserts, late) = data_set();
    for rows in inserts.iter().chain([&late]) {
        store.sink.insert(rows).await.unwrap();
    }
    let mut rng = Rng(0xA11_0C8);
    let mut chosen: BTreeMap<Source, usize> = BTreeMap::new();
    let mut compared: BTreeMap<Source, usize> = BTreeMap::new();
    let mut answered = 0;
    for i in 0..REQUESTS {
        let request = random_request(&mut rng);
        let raw = run_metrics(&store.client, &request.sql().unwrap())
            .await
            .unwrap();
        if !raw.is_empty() {
            answered += 1;
        }
        let (source, planned) = planned(&store.client, &request).await.unwrap();
        *chosen.entry(source).or_default() += 1;
        assert_eq!(
            planned, raw,
            "request {i} answered from {source:?} differs from raw: {request:?}"
        );
        // Every rollup that says it can answer must answer the same.
        for s in Source::ROLLUPS {
            if request.fit(s).is_ok() {
                *compared.entry(s).or_default() += 1;
                let got = run_metrics(&store.client, &request.sql_from(s).unwrap())
                    .await
                    .unwrap();
                assert_eq!(got, raw, "request {i} from {s:?} differs: {request:?}");
            }
        }
    }
    eprintln!(
        "{REQUESTS} requests: chosen {chosen:?}, compared {compared:?}, {answered} non-empty"
    );
    for s in [Source::Day, Source::Hour, Source::Minute, Source::Raw] {
        let n = chosen.get(&s).copied().unwrap_or(0);
        assert!(
            n >= REQUESTS / 20,
            "{s:?} answered only {n} of {REQUESTS} requests: {chosen:?}"
        );
    }
    assert!(
        answered >= REQUESTS / 2,
        "only {answered} non-empty answers"
    );
}

/// `YYYY-MM-DD hh:mm:ss` in UTC, as ClickHouse prints a UTC bucket.
fn utc(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap();
    t.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]"
    ))
    .unwrap()
}

/// Events (or users) of `p1` in `[since_ms, until_ms)` per UTC bucket of
/// `width` ms, from the rows.
fn expected(
    rows: &[&EventRow],
    (since_ms, until_ms): (i64, i64),
    width: i64,
    users: bool,
) -> BTreeMap<String, f64> {
    let mut who: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let mut count: BTreeMap<i64, f64> = BTreeMap::new();
    let inside = |r: &&&EventRow| r.ts_ms >= since_ms && r.ts_ms < until_ms;
    for r in rows
        .iter()
        .filter(|r| &*r.project_id == "p1")
        .filter(inside)
    {
        let bucket = r.ts_ms.div_euclid(width) * width;
        *count.entry(bucket).or_default() += 1.0;
        let key = if r.user_id.is_empty() {
            &r.anonymous_id
        } else {
            &r.user_id
        };
        who.entry(bucket).or_default().insert(key.clone());
    }
    if users {
        who.into_iter()
            .map(|(b, s)| (utc(b), s.len() as f64))
            .collect()
    } else {
        count.into_iter().map(|(b, n)| (utc(b), n)).collect()
    }
}

fn by_bucket(rows: Vec<MetricsRow>) -> BTreeMap<String, f64> {
    rows.into_iter().map(|r| (r.bucket, r.value)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_fold_into_their_own_buckets() {
    let store = store("rollups_late").await;
    let (inserts, late) = data_set();
    for rows in &inserts {
        store.sink.insert(rows).await.unwrap();
    }
    let request =
        |measure: Measure, granularity: Granularity, since_ms: i64, until_ms: i64| MetricsRequest {
            project_id: "p1".into(),
            measure,
            events: vec![],
            since_ms,
            until_ms,
            granularity,
            timezone: "UTC".into(),
            group_by: vec![],
            filters: vec![],
            properties: vec![],
        };
    const WHOLE: (i64, i64) = (T0 - DAY, T0 + 3 * DAY);
    let days = request(Measure::Count, Granularity::Day, WHOLE.0, WHOLE.1);
    let (source, before) = planned(&store.client, &days).await.unwrap();
    assert_eq!(source, Source::Day);
    assert_eq!(before.len(), 3, "{before:?}");
    assert_eq!(before[0].bucket, utc(T0));

    store.sink.insert(&late).await.unwrap();
    let main: Vec<&EventRow> = inserts.iter().flatten().collect();
    let all: Vec<&EventRow> = main.iter().copied().chain(&late).collect();
    let late_only: Vec<&EventRow> = late.iter().collect();

    // Days: the late day appears; the next two grow by their late events.
    let (_, after) = planned(&store.client, &days).await.unwrap();
    let want = expected(&all, WHOLE, DAY, false);
    assert_eq!(by_bucket(after.clone()), want);
    assert_eq!(after[0].bucket, utc(T0 - DAY));
    assert_eq!(
        after[0].value,
        expected(&late_only, WHOLE, DAY, false)[&utc(T0 - DAY)]
    );
    for day in 1..3 {
        assert!(after[day].value > before[day - 1].value, "{after:?}");
    }
    assert_eq!(after[3].value, before[2].value);

    // Hours and users per hour, from the hour table.
    let hours = request(Measure::Count, Granularity::Hour, WHOLE.0, WHOLE.1);
    let (source, got) = planned(&store.client, &hours).await.unwrap();
    assert_eq!(source, Source::Hour);
    assert_eq!(by_bucket(got), expected(&all, WHOLE, HOUR, false));
    let users = request(Measure::UniqueUsers, Granularity::Hour, WHOLE.0, WHOLE.1);
    let (source, got) = planned(&store.client, &users).await.unwrap();
    assert_eq!(source, Source::Hour);
    assert_eq!(by_bucket(got), expected(&all, WHOLE, HOUR, true));

    // Minutes of the late day, only late events there, from the minute table.
    let minutes = request(Measure::Count, Granularity::Minute, T0 - DAY, T0);
    let (source, got) = planned(&store.client, &minutes).await.unwrap();
    assert_eq!(source, Source::Minute);
    assert_eq!(
        by_bucket(got),
        expected(&late_only, (T0 - DAY, T0), MIN, false)
    );
}
