use super::{bound, check, event_time_range, sql, DeviceQueryError};
use spoor_core::debug::{DeviceQuery, QueryError, Subject, MAX_LIMIT, MAX_TABLE_WINDOW_MS};

/// 2024-03-01T12:34:56.789Z
const T: i64 = 1_709_296_496_789;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn dev(id: &str) -> Subject {
    Subject::Device(id.into())
}

fn user(id: &str) -> Subject {
    Subject::User(id.into())
}

/// `subject` in project `proj`, received in `[since_ms, until_ms)`.
fn between(subject: Subject, since_ms: i64, until_ms: i64) -> DeviceQuery {
    DeviceQuery {
        subject,
        project_id: Some("proj".into()),
        since_ms,
        until_ms,
        limit: 1_000,
    }
}

/// The hour received up to `T`.
fn q(subject: Subject) -> DeviceQuery {
    between(subject, T - HOUR, T)
}

#[test]
fn input_is_checked_before_any_query() {
    let long = "d".repeat(257);
    let longest = "d".repeat(256);
    let cases: Vec<(DeviceQuery, Option<&str>)> = vec![
        (q(dev("dev-1")), None),
        (q(user("user-1")), None),
        (q(dev(&longest)), None),
        // Quotes and backslashes are data, bound by the crate, not rejected.
        (q(dev(r"it's\ a ` device")), None),
        // The tables take windows longer than the rings' day.
        (between(dev("d"), T - 7 * DAY, T), None),
        (between(dev("d"), T - MAX_TABLE_WINDOW_MS, T), None),
        (q(dev("")), Some("the id is empty")),
        (q(user("")), Some("the id is empty")),
        (
            q(dev(&long)),
            Some("the id is 257 bytes; ids are at most 256 bytes"),
        ),
        (
            q(dev("a\nb")),
            Some("the id contains a control character (at byte 1); ids are printable text"),
        ),
        (
            q(user("a\0")),
            Some("the id contains a control character (at byte 1); ids are printable text"),
        ),
        (
            q(dev("a\u{85}b")),
            Some("the id contains a control character (at byte 1); ids are printable text"),
        ),
        (
            DeviceQuery {
                project_id: Some(String::new()),
                ..q(dev("d"))
            },
            Some("the project id contains a control character or is empty"),
        ),
        (
            DeviceQuery {
                project_id: None,
                ..q(dev("d"))
            },
            Some("the device tables are keyed by project: the lookup needs a project"),
        ),
        (
            between(dev("d"), T, T),
            Some("the window is empty or reversed (since 1709296496789 >= until 1709296496789)"),
        ),
        (
            between(dev("d"), T, T - 1),
            Some("the window is empty or reversed (since 1709296496789 >= until 1709296496788)"),
        ),
        (
            between(dev("d"), T - MAX_TABLE_WINDOW_MS - 2, T),
            Some("the window is 7776000002 ms wide; at most 7776000000 ms (2160h) may be asked for"),
        ),
        (
            between(dev("d"), i64::MIN, i64::MAX),
            Some(
                "the window is 9223372036854775807 ms wide; at most 7776000000 ms (2160h) may be asked for",
            ),
        ),
        (
            DeviceQuery {
                limit: 0,
                ..q(dev("d"))
            },
            Some("`0` is not a limit between 1 and 10000"),
        ),
        (
            DeviceQuery {
                limit: MAX_LIMIT + 1,
                ..q(dev("d"))
            },
            Some("`10001` is not a limit between 1 and 10000"),
        ),
    ];
    for (query, expected) in cases {
        let got = check(&query).err().map(|e| e.to_string());
        assert_eq!(got.as_deref(), expected, "{query:?}");
        // What is checked never becomes SQL.
        assert_eq!(sql(&query).is_err(), expected.is_some(), "{query:?}");
    }
    assert!(matches!(
        check(&q(dev("a\tb"))),
        Err(DeviceQueryError::Invalid(QueryError::IdControlChar {
            at: 1
        }))
    ));
    assert!(check(&q(dev(""))).unwrap_err().is_bad_input());
    let no_project = DeviceQuery {
        project_id: None,
        ..q(dev("d"))
    };
    assert!(matches!(
        check(&no_project),
        Err(DeviceQueryError::NoProject)
    ));
    assert!(check(&no_project).unwrap_err().is_bad_input());
}

#[test]
fn event_times_widen_the_receive_window_by_what_the_edge_accepts() {
    let limits = spoor_core::Limits::default();
    assert_eq!(
        event_time_range(&q(dev("d"))),
        (T - HOUR - limits.max_past_ms, T + limits.max_future_ms)
    );
    // 30 days before, a day after.
    assert_eq!(
        event_time_range(&q(dev("d"))),
        (T - HOUR - 30 * DAY, T + DAY)
    );
}

#[test]
fn sql_prunes_days_of_the_widened_range_and_windows_on_receive_time() {
    // Received in the hour up to 2024-03-01T12:34:56.789Z: event times
    // from 2024-01-31T11:34 (30 days before) to 2024-03-02T12:34 (a day
    // after), so those days are read, and the receive time picks the rows.
    assert_eq!(
        sql(&q(dev("d"))).unwrap(),
        format!(
            "SELECT {} FROM events_by_device WHERE project_id = ? \
             AND event_date BETWEEN '2024-01-31' AND '2024-03-02' \
             AND anonymous_id = ? AND ts_ms >= ? AND ts_ms < ? \
             AND received_at_ms >= ? AND received_at_ms < ? \
             ORDER BY ts_ms DESC, event_id DESC LIMIT 1 BY event_id LIMIT 1000",
            super::COLUMNS
        )
    );
    // A window whose widened end is just past midnight reads that day; an
    // exclusive widened end at midnight does not.
    let midnight = 1_709_337_600_000; // 2024-03-02T00:00:00Z
    let user_sql = sql(&between(
        user("u"),
        midnight - DAY - 3 * HOUR,
        midnight - DAY + HOUR,
    ))
    .unwrap();
    assert!(
        user_sql.contains("event_date BETWEEN '2024-01-30' AND '2024-03-02'"),
        "{user_sql}"
    );
    assert!(
        user_sql.contains(
            "anonymous_id IN (SELECT DISTINCT anonymous_id FROM device_users \
             WHERE project_id = ? AND user_id = ? \
             AND event_date BETWEEN '2024-01-30' AND '2024-03-02' AND ts_ms >= ? AND ts_ms < ?)"
        ),
        "{user_sql}"
    );
    assert!(
        user_sql.contains("AND received_at_ms >= ? AND received_at_ms < ?"),
        "{user_sql}"
    );
    let to_midnight = sql(&between(dev("d"), midnight - DAY - HOUR, midnight - DAY)).unwrap();
    assert!(
        to_midnight.contains("BETWEEN '2024-01-30' AND '2024-03-01'"),
        "{to_midnight}"
    );
    // The limit is the query's.
    let five = DeviceQuery {
        limit: 5,
        ..q(dev("d"))
    };
    assert!(sql(&five).unwrap().ends_with("LIMIT 1 BY event_id LIMIT 5"));
    // Only the placeholders carry values: no id text is ever in the template.
    for subject in [dev("zzz"), user("zzz")] {
        let query = DeviceQuery {
            project_id: Some("qqq".into()),
            ..q(subject)
        };
        let text = sql(&query).unwrap();
        assert!(!text.contains("zzz") && !text.contains("qqq"), "{text}");
    }
}

#[test]
fn bound_query_escapes_hostile_ids_and_binds_both_clocks() {
    let client = clickhouse::Client::default();
    let hostile = r"x' OR 1=1 OR anonymous_id != '\";
    let query = bound(&client, &q(dev(hostile))).unwrap();
    let text = query.sql_display().to_string();
    assert!(
        text.contains(r"anonymous_id = 'x\' OR 1=1 OR anonymous_id != \'\\'"),
        "{text}"
    );
    let (ts_since, ts_until) = (T - HOUR - 30 * DAY, T + DAY);
    assert!(
        text.contains(&format!(
            "AND ts_ms >= {ts_since} AND ts_ms < {ts_until} \
             AND received_at_ms >= {} AND received_at_ms < {T} ",
            T - HOUR
        )),
        "{text}"
    );
    // A user's devices are found on the same widened event times.
    let text = bound(&client, &q(user("u-1")))
        .unwrap()
        .sql_display()
        .to_string();
    assert!(
        text.contains(&format!(
            "WHERE project_id = 'proj' AND user_id = 'u-1' \
             AND event_date BETWEEN '2024-01-31' AND '2024-03-02' \
             AND ts_ms >= {ts_since} AND ts_ms < {ts_until})"
        )),
        "{text}"
    );
    assert!(bound(&client, &q(dev("a\nb"))).is_err());
}
