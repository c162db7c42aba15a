use super::{DeviceQuery, DeviceQueryError, IdProblem, Who, MAX_LIMIT, MAX_WINDOW_MS};
use spoor_core::debug::{self as ring, Subject};

/// 2024-03-01T12:34:56.789Z
const T: i64 = 1_709_296_496_789;
const HOUR: i64 = 3_600_000;

fn q(who: Who<'_>) -> DeviceQuery<'_> {
    DeviceQuery::new("proj", who, T - HOUR, T)
}

#[test]
fn input_is_checked_before_any_query() {
    let long = "d".repeat(257);
    let longest = "d".repeat(256);
    let cases: Vec<(DeviceQuery<'_>, Option<&str>)> = vec![
        (q(Who::Device("dev-1")), None),
        (q(Who::User("user-1")), None),
        (q(Who::Device(&longest)), None),
        // Quotes and backslashes are data, bound by the crate, not rejected.
        (q(Who::Device(r"it's\ a ` device")), None),
        (q(Who::Device("")), Some("`anonymous_id` is empty")),
        (q(Who::User("")), Some("`user_id` is empty")),
        (
            q(Who::Device(&long)),
            Some("`anonymous_id` is 257 bytes; the limit is 256"),
        ),
        (
            q(Who::Device("a\nb")),
            Some("`anonymous_id` holds control characters"),
        ),
        (
            q(Who::User("a\0")),
            Some("`user_id` holds control characters"),
        ),
        (
            q(Who::Device("a\u{85}b")),
            Some("`anonymous_id` holds control characters"),
        ),
        (
            DeviceQuery::new("", Who::Device("d"), 0, 1),
            Some("`project_id` is empty"),
        ),
        (
            DeviceQuery::new("proj", Who::Device("d"), T, T),
            Some("the window is empty or inverted: since 1709296496789 ms must be before until 1709296496789 ms"),
        ),
        (
            DeviceQuery::new("proj", Who::Device("d"), T, T - 1),
            Some("the window is empty or inverted: since 1709296496789 ms must be before until 1709296496788 ms"),
        ),
        (
            DeviceQuery::new("proj", Who::Device("d"), T - MAX_WINDOW_MS - 1, T),
            Some("the window is longer than 90 days, more than any table keeps"),
        ),
        (
            DeviceQuery::new("proj", Who::Device("d"), i64::MIN, i64::MAX),
            Some("the window is longer than 90 days, more than any table keeps"),
        ),
        (
            DeviceQuery {
                limit: 0,
                ..q(Who::Device("d"))
            },
            Some("limit 0 is outside 1..=10000"),
        ),
        (
            DeviceQuery {
                limit: MAX_LIMIT + 1,
                ..q(Who::Device("d"))
            },
            Some("limit 10001 is outside 1..=10000"),
        ),
    ];
    for (query, expected) in cases {
        let got = query.check().err().map(|e| e.to_string());
        assert_eq!(got.as_deref(), expected, "{query:?}");
    }
    assert!(matches!(
        q(Who::Device("a\tb")).check(),
        Err(DeviceQueryError::InvalidId {
            field: "anonymous_id",
            reason: IdProblem::ControlCharacters
        })
    ));
    assert!(q(Who::Device("")).check().unwrap_err().is_bad_input());
}

#[test]
fn sql_prunes_days_and_binds_every_value() {
    assert_eq!(
        q(Who::Device("d")).sql(),
        format!(
            "SELECT {} FROM events_by_device WHERE project_id = ? \
             AND event_date BETWEEN '2024-03-01' AND '2024-03-01' \
             AND anonymous_id = ? AND ts_ms >= ? AND ts_ms < ? \
             ORDER BY ts_ms DESC, event_id DESC LIMIT 1 BY event_id LIMIT 1000",
            super::COLUMNS
        )
    );
    // A window across midnight reads both days; an exclusive end at
    // midnight does not read the next day.
    let midnight = 1_709_337_600_000; // 2024-03-02T00:00:00Z
    let user = DeviceQuery::new("p", Who::User("u"), midnight - 3 * HOUR, midnight + HOUR).sql();
    assert!(
        user.contains("event_date BETWEEN '2024-03-01' AND '2024-03-02'"),
        "{user}"
    );
    assert!(
        user.contains(
            "anonymous_id IN (SELECT DISTINCT anonymous_id FROM device_users \
             WHERE project_id = ? AND user_id = ? \
             AND event_date BETWEEN '2024-03-01' AND '2024-03-02' AND ts_ms >= ? AND ts_ms < ?)"
        ),
        "{user}"
    );
    let to_midnight = DeviceQuery::new("p", Who::Device("d"), midnight - HOUR, midnight).sql();
    assert!(
        to_midnight.contains("BETWEEN '2024-03-01' AND '2024-03-01'"),
        "{to_midnight}"
    );
    // Only the placeholders carry values: no id text is ever in the template.
    for who in [Who::Device("zzz"), Who::User("zzz")] {
        let sql = DeviceQuery::new("qqq", who, T - HOUR, T).sql();
        assert!(!sql.contains("zzz") && !sql.contains("qqq"), "{sql}");
    }
}

#[test]
fn bound_query_escapes_hostile_ids() {
    let client = clickhouse::Client::default();
    let hostile = r"x' OR 1=1 OR anonymous_id != '\";
    let bound = q(Who::Device(hostile)).bound(&client).unwrap();
    let sql = bound.sql_display().to_string();
    assert!(
        sql.contains(r"anonymous_id = 'x\' OR 1=1 OR anonymous_id != \'\\'"),
        "{sql}"
    );
    assert!(q(Who::Device("a\nb")).bound(&client).is_err());
}

#[test]
fn the_rest_of_a_ring_request_is_read_with_the_same_numbers() {
    let asked = ring::DeviceQuery::new(
        Subject::User("u-1".into()),
        Some("proj".into()),
        HOUR,
        T,
        5_000,
    )
    .unwrap();
    // The rings hold the last 20 minutes: the table reads the rest.
    let q = DeviceQuery::beyond_rings(&asked, T - 20 * 60_000).unwrap();
    assert_eq!(q.project_id, "proj");
    assert_eq!(q.who, Who::User("u-1"));
    assert_eq!((q.since_ms, q.until_ms), (T - HOUR, T - 20 * 60_000));
    assert_eq!(q.limit, 5_000);
    assert!(q.check().is_ok());
    // Rings reaching past the end of the window leave the whole of it.
    let all = DeviceQuery::beyond_rings(&asked, i64::MAX).unwrap();
    assert_eq!(
        (all.since_ms, all.until_ms),
        (asked.since_ms, asked.until_ms)
    );
    // Rings covering the whole window, or no project: nothing to read.
    assert!(DeviceQuery::beyond_rings(&asked, T - HOUR).is_none());
    let anywhere = ring::DeviceQuery {
        project_id: None,
        ..asked.clone()
    };
    assert!(DeviceQuery::beyond_rings(&anywhere, T - 20 * 60_000).is_none());
    let device = ring::DeviceQuery {
        subject: Subject::Device("d-1".into()),
        ..asked
    };
    assert_eq!(
        DeviceQuery::beyond_rings(&device, T).unwrap().who,
        Who::Device("d-1")
    );
}
