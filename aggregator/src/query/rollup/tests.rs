use super::*;
use crate::query::{DimensionFilter, PropertyFilter};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// 2026-03-28T00:00:00Z. Berlin moves to summer time on 2026-03-29 at
/// 01:00 UTC, inside [T0, T0 + 3 days).
const T0: i64 = 1_774_656_000_000;
/// 2026-01-05T00:00:00Z, a winter Monday.
const JAN: i64 = 1_767_571_200_000;

fn base() -> MetricsRequest {
    MetricsRequest {
        project_id: "shop".into(),
        measure: Measure::Count,
        events: vec![],
        since_ms: T0,
        until_ms: T0 + 3 * DAY,
        granularity: Granularity::Day,
        timezone: "UTC".into(),
        group_by: vec![],
        filters: vec![],
        properties: vec![],
    }
}

fn source(r: &MetricsRequest) -> Source {
    r.plan().unwrap().source
}

/// (name, edit, source picked, why the smaller tables could not answer).
type Case = (
    &'static str,
    fn(&mut MetricsRequest),
    Source,
    &'static [(Source, Misfit)],
);

#[test]
fn the_smallest_table_that_answers_exactly_is_chosen() {
    let cases: &[Case] = &[
        ("utc days", |_| {}, Source::Day, &[]),
        (
            "unique users by the kept dimensions",
            |r| {
                r.measure = Measure::UniqueUsers;
                r.events = vec!["purchase".into()];
                r.group_by = vec![Dimension::Country, Dimension::DeviceType, Dimension::Os];
                r.filters = vec![DimensionFilter {
                    dimension: Dimension::Browser,
                    value: "Firefox".into(),
                }];
            },
            Source::Day,
            &[],
        ),
        (
            "Etc/UTC",
            |r| r.timezone = "Etc/UTC".into(),
            Source::Day,
            &[],
        ),
        ("GMT", |r| r.timezone = "GMT".into(), Source::Day, &[]),
        (
            "London in winter is UTC",
            |r| {
                r.timezone = "Europe/London".into();
                r.since_ms = JAN;
                r.until_ms = JAN + 7 * DAY;
            },
            Source::Day,
            &[],
        ),
        (
            "London across its spring change",
            |r| r.timezone = "Europe/London".into(),
            Source::Hour,
            &[(Source::Day, Misfit::Timezone)],
        ),
        (
            "hourly buckets",
            |r| r.granularity = Granularity::Hour,
            Source::Hour,
            &[(Source::Day, Misfit::Granularity)],
        ),
        (
            "minute buckets",
            |r| {
                r.granularity = Granularity::Minute;
                r.until_ms = T0 + DAY;
            },
            Source::Minute,
            &[
                (Source::Day, Misfit::Granularity),
                (Source::Hour, Misfit::Granularity),
            ],
        ),
        (
            "days over a range cut on hours",
            |r| {
                r.since_ms = T0 + 5 * HOUR;
                r.until_ms = T0 + 2 * DAY + 7 * HOUR;
            },
            Source::Hour,
            &[(Source::Day, Misfit::Unaligned)],
        ),
        (
            "only the end cut on an hour",
            |r| r.until_ms = T0 + 2 * DAY + HOUR,
            Source::Hour,
            &[(Source::Day, Misfit::Unaligned)],
        ),
        (
            "days over a range cut on minutes",
            |r| {
                r.since_ms = T0 + 5 * HOUR + 17 * MIN;
                r.until_ms = T0 + 2 * DAY;
            },
            Source::Minute,
            &[
                (Source::Day, Misfit::Unaligned),
                (Source::Hour, Misfit::Unaligned),
            ],
        ),
        (
            "a range cut on seconds",
            |r| r.since_ms = T0 + 30_000,
            Source::Raw,
            &[
                (Source::Day, Misfit::Unaligned),
                (Source::Hour, Misfit::Unaligned),
                (Source::Minute, Misfit::Unaligned),
            ],
        ),
        (
            "a range cut on milliseconds",
            |r| r.until_ms = T0 + DAY + 1,
            Source::Raw,
            &[(Source::Minute, Misfit::Unaligned)],
        ),
        (
            "Kolkata (+5:30) days",
            |r| r.timezone = "Asia/Kolkata".into(),
            Source::Minute,
            &[
                (Source::Day, Misfit::Timezone),
                (Source::Hour, Misfit::Timezone),
            ],
        ),
        (
            "Kolkata hours",
            |r| {
                r.timezone = "Asia/Kolkata".into();
                r.granularity = Granularity::Hour;
            },
            Source::Minute,
            &[(Source::Hour, Misfit::Timezone)],
        ),
        (
            "Kathmandu (+5:45)",
            |r| r.timezone = "Asia/Kathmandu".into(),
            Source::Minute,
            &[(Source::Hour, Misfit::Timezone)],
        ),
        (
            "Lord Howe in its summer (+11)",
            |r| {
                r.timezone = "Australia/Lord_Howe".into();
                r.granularity = Granularity::Hour;
            },
            Source::Hour,
            &[(Source::Day, Misfit::Granularity)],
        ),
        (
            "Lord Howe back to +10:30 (2026-04-04T15:00Z)",
            |r| {
                r.timezone = "Australia/Lord_Howe".into();
                r.granularity = Granularity::Hour;
                r.since_ms = T0 + 6 * DAY;
                r.until_ms = T0 + 9 * DAY;
            },
            Source::Minute,
            &[(Source::Hour, Misfit::Timezone)],
        ),
        (
            "Berlin days across the change to summer time",
            |r| r.timezone = "Europe/Berlin".into(),
            Source::Hour,
            &[(Source::Day, Misfit::Timezone)],
        ),
        (
            "Berlin hours across the change",
            |r| {
                r.timezone = "Europe/Berlin".into();
                r.granularity = Granularity::Hour;
            },
            Source::Hour,
            &[(Source::Day, Misfit::Granularity)],
        ),
        (
            "New York days",
            |r| r.timezone = "America/New_York".into(),
            Source::Hour,
            &[(Source::Day, Misfit::Timezone)],
        ),
        (
            "a property filter",
            |r| {
                r.properties = vec![PropertyFilter {
                    name: "plan".into(),
                    value: "pro".into(),
                }]
            },
            Source::Raw,
            &[
                (Source::Day, Misfit::Properties),
                (Source::Hour, Misfit::Properties),
                (Source::Minute, Misfit::Properties),
            ],
        ),
        (
            "a sum",
            |r| r.measure = Measure::Sum("price".into()),
            Source::Raw,
            &[
                (Source::Day, Misfit::Measure),
                (Source::Minute, Misfit::Measure),
            ],
        ),
        (
            "an average",
            |r| r.measure = Measure::Avg("price".into()),
            Source::Raw,
            &[(Source::Hour, Misfit::Measure)],
        ),
        (
            "grouped by a dimension not kept",
            |r| r.group_by = vec![Dimension::Country, Dimension::PagePath],
            Source::Raw,
            &[
                (Source::Day, Misfit::Dimension("page_path")),
                (Source::Minute, Misfit::Dimension("page_path")),
            ],
        ),
        (
            "filtered on a dimension not kept",
            |r| {
                r.filters = vec![DimensionFilter {
                    dimension: Dimension::City,
                    value: "Paris".into(),
                }]
            },
            Source::Raw,
            &[(Source::Hour, Misfit::Dimension("city"))],
        ),
    ];
    for (name, edit, want, misfits) in cases {
        let mut r = base();
        edit(&mut r);
        assert_eq!(source(&r), *want, "{name}");
        assert_eq!(r.fit(*want), Ok(()), "{name}");
        assert_eq!(r.fit(Source::Raw), Ok(()), "{name}");
        for (s, why) in *misfits {
            assert_eq!(r.fit(*s), Err(*why), "{name}: {s:?}");
        }
        // Every smaller table was refused, every larger one is no better.
        for s in Source::ROLLUPS.iter().filter(|s| **s < *want) {
            assert!(r.fit(*s).is_err(), "{name}: {s:?} could answer");
        }
    }
}

#[test]
fn offsets_change_only_on_bucket_edges() {
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let change = (T0 + DAY + HOUR) / 1000; // 2026-03-29T01:00:00Z
    let (since, until) = (T0 / 1000, (T0 + 3 * DAY) / 1000);
    assert!(offsets_fit(berlin, since, until, 3_600));
    assert!(offsets_fit(berlin, since, until, 60));
    assert!(!offsets_fit(berlin, since, until, 86_400));
    // Ranges that end at the change, start at it, or hold only its second.
    assert!(offsets_fit(berlin, since, change, 3_600));
    assert!(offsets_fit(berlin, change, until, 3_600));
    assert!(offsets_fit(berlin, change - 1, change + 1, 3_600));
    let utc: Tz = "UTC".parse().unwrap();
    assert!(offsets_fit(utc, since, since + 400 * 86_400, 86_400));
    let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
    assert!(offsets_fit(kolkata, since, until, 60));
    assert!(!offsets_fit(kolkata, since, until, 3_600));
    // Lord Howe moves from +11 to +10:30 on 2026-04-04 at 15:00 UTC: whole
    // hours before, whole minutes throughout.
    let lord_howe: Tz = "Australia/Lord_Howe".parse().unwrap();
    let back = since + 7 * 86_400 + 15 * 3_600;
    assert!(offsets_fit(lord_howe, since, back, 3_600));
    assert!(!offsets_fit(lord_howe, since, back + 1, 3_600));
    assert!(offsets_fit(lord_howe, since, since + 30 * 86_400, 60));
    // Out of chrono's range: no rollup, no panic.
    assert!(!offsets_fit(utc, i64::MIN / 2, i64::MIN / 2 + 60, 60));
}

#[test]
fn a_year_of_days_in_berlin_is_planned_quickly() {
    let mut r = base();
    r.timezone = "Europe/Berlin".into();
    r.since_ms = T0 - 200 * DAY;
    r.until_ms = T0 + 200 * DAY;
    let start = std::time::Instant::now();
    assert_eq!(source(&r), Source::Hour);
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn rollup_sql_has_the_raw_columns_and_binds_every_caller_value() {
    let hostile = "x' OR '1'='1 -- \\";
    let mut r = base();
    r.measure = Measure::UniqueUsers;
    r.granularity = Granularity::Hour;
    r.timezone = "Europe/Berlin".into();
    r.events = vec!["purchase".into(), hostile.into()];
    r.group_by = vec![Dimension::Country, Dimension::DeviceType];
    r.filters = vec![DimensionFilter {
        dimension: Dimension::Browser,
        value: hostile.into(),
    }];
    let plan = r.plan().unwrap();
    assert_eq!(plan.source, Source::Hour);
    let sql = plan.sql;
    assert!(
        !sql.text.contains(hostile) && !sql.text.contains("Berlin") && !sql.text.contains("shop")
    );
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
    assert_eq!(
        sql.text,
        "SELECT toStartOfHour(t, ?) AS bucket, country, device_type, \
         toFloat64(uniqExactMerge(users)) AS value \
         FROM (SELECT bucket AS t, country, device_type, users FROM events_rollup_hour \
         WHERE project_id = ? AND event_date >= toDate(toDateTime(?), 'UTC') \
         AND event_date <= toDate(toDateTime(?), 'UTC') \
         AND bucket >= toDateTime(?) AND bucket < toDateTime(?) \
         AND event IN (?, ?) AND browser = ?) \
         GROUP BY bucket, country, device_type ORDER BY bucket, country, device_type LIMIT 10000"
    );
    let (since_s, until_s) = (T0 / 1000, (T0 + 3 * DAY) / 1000);
    assert_eq!(
        sql.params,
        vec![
            Param::Str("Europe/Berlin".into()),
            Param::Str("shop".into()),
            Param::Int(since_s),
            Param::Int(until_s - 1),
            Param::Int(since_s),
            Param::Int(until_s),
            Param::Str("purchase".into()),
            Param::Str(hostile.into()),
            Param::Str(hostile.into()),
        ]
    );

    let count = base().sql_from(Source::Minute).unwrap();
    assert!(count.text.starts_with(
        "SELECT toStartOfDay(t, ?) AS bucket, toFloat64(countMerge(events)) AS value \
         FROM (SELECT bucket AS t, events FROM events_rollup_minute WHERE"
    ));
    assert_eq!(count.text.matches('?').count(), count.params.len());
}

#[test]
fn a_forced_source_answers_or_says_why_not() {
    let mut r = base();
    assert_eq!(r.sql_from(Source::Raw).unwrap(), r.sql().unwrap());
    assert_eq!(r.plan().unwrap().sql, r.sql_from(Source::Day).unwrap());
    for s in Source::ROLLUPS {
        assert!(r.sql_from(s).unwrap().text.contains(s.table()));
    }
    r.timezone = "Asia/Kolkata".into();
    let err = r.sql_from(Source::Hour).unwrap_err();
    assert_eq!(
        err,
        RequestError::Rollup {
            table: "events_rollup_hour",
            misfit: Misfit::Timezone
        }
    );
    assert!(err.to_string().contains("events_rollup_hour cannot answer"));
    // Invalid requests fail validation first, whatever the source.
    r.until_ms = r.since_ms;
    for s in [Source::Minute, Source::Raw] {
        assert!(matches!(r.sql_from(s), Err(RequestError::BadRange { .. })));
    }
    assert!(matches!(r.plan(), Err(RequestError::BadRange { .. })));
}

#[test]
fn timezones_are_checked_against_the_iana_database() {
    for ok in [
        "UTC",
        "Etc/UTC",
        "GMT",
        "Europe/Berlin",
        "Asia/Kolkata",
        "America/Argentina/Buenos_Aires",
        "Etc/GMT+3",
    ] {
        let mut r = base();
        r.timezone = ok.into();
        assert_eq!(r.validate(), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "Mars/Olympus_Mons",
        "Europe/Berlin ",
        "europe/berlin",
        "UTC'; DROP TABLE events --",
        "../../etc/passwd",
    ] {
        let mut r = base();
        r.timezone = bad.into();
        assert_eq!(
            r.validate(),
            Err(RequestError::BadTimezone(bad.into())),
            "{bad:?}"
        );
        assert!(r.plan().is_err());
    }
}

#[test]
fn the_service_counts_unique_users_on_raw_events_while_they_are_kept() {
    let mut r = base();
    r.measure = Measure::UniqueUsers;
    // The raw table still holds the range: raw events.
    let plan = r.plan_for_service(T0 - DAY).unwrap();
    assert_eq!(plan.source, Source::Raw);
    assert_eq!(plan.sql, r.sql().unwrap());
    // Past its retention: the rollup's exact answer.
    assert_eq!(r.plan_for_service(T0 + DAY).unwrap().source, Source::Day);
    // Counts always take the smallest rollup.
    r.measure = Measure::Count;
    assert_eq!(r.plan_for_service(T0 - DAY).unwrap().source, Source::Day);
    assert_eq!(r.plan_for_service(i64::MIN).unwrap(), r.plan().unwrap());
}
