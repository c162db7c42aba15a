use super::*;

const NOW: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z
const ID: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

fn device() -> TimelineRequest {
    TimelineRequest {
        project_id: "shop".into(),
        anonymous_id: Some("d-1".into()),
        ..TimelineRequest::default()
    }
}

#[test]
fn validation_table() {
    type Case = (&'static str, fn(&mut TimelineRequest), Option<&'static str>);
    let cases: &[Case] = &[
        ("plain", |_| {}, None),
        (
            "no project",
            |r| r.project_id.clear(),
            Some("`project_id` is empty"),
        ),
        (
            "neither id",
            |r| r.anonymous_id = None,
            Some("exactly one of"),
        ),
        (
            "both ids",
            |r| r.user_id = Some("u".into()),
            Some("exactly one of"),
        ),
        (
            "empty id",
            |r| r.anonymous_id = Some(String::new()),
            Some("`anonymous_id` is empty"),
        ),
        (
            "empty user",
            |r| {
                r.anonymous_id = None;
                r.user_id = Some(String::new());
            },
            Some("`user_id` is empty"),
        ),
        (
            "control character",
            |r| r.anonymous_id = Some("d\u{1b}[2J".into()),
            Some("control character"),
        ),
        (
            "long id",
            |r| r.anonymous_id = Some("d".repeat(257)),
            Some("257 bytes"),
        ),
        (
            "linked users of a user",
            |r| {
                r.anonymous_id = None;
                r.user_id = Some("u".into());
                r.with_linked_users = true;
            },
            Some("`with_linked_users`"),
        ),
        (
            "linked users of a device",
            |r| r.with_linked_users = true,
            None,
        ),
        ("limit 0", |r| r.limit = Some(0), Some("`limit`")),
        ("limit 1001", |r| r.limit = Some(1001), Some("1 to 1000")),
        ("limit 1000", |r| r.limit = Some(1000), None),
        (
            "inverted",
            |r| {
                r.since_ms = Some(NOW);
                r.until_ms = Some(NOW);
            },
            Some("empty or inverted"),
        ),
        (
            "since in the future, until defaulted",
            |r| r.since_ms = Some(NOW + 1),
            Some("empty or inverted"),
        ),
        (
            "range too long",
            |r| r.since_ms = Some(NOW - 90 * 86_400_000 - 1),
            Some("longer than 90 days"),
        ),
        ("cursor", |r| r.cursor = Some(format!("12:{ID}")), None),
        (
            "cursor upper case",
            |r| r.cursor = Some(format!("12:{}", ID.to_uppercase())),
            None,
        ),
        (
            "cursor without colon",
            |r| r.cursor = Some("12".into()),
            Some("`cursor`: not of the form"),
        ),
        (
            "cursor with a plus",
            |r| r.cursor = Some(format!("+12:{ID}")),
            Some("`cursor`: the time"),
        ),
        (
            "cursor too big",
            |r| r.cursor = Some(format!("99999999999999999999:{ID}")),
            Some("`cursor`: the time"),
        ),
        (
            "cursor overflows i64",
            |r| r.cursor = Some(format!("9999999999999999999:{ID}")),
            Some("out of range"),
        ),
        (
            "cursor with a quote",
            |r| r.cursor = Some("12:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5'".into()),
            Some("not a UUID"),
        ),
        (
            "cursor with trailing text",
            |r| r.cursor = Some(format!("12:{ID} OR 1=1")),
            Some("not a UUID"),
        ),
        (
            "cursor with two colons",
            |r| r.cursor = Some(format!("12:{ID}:1")),
            Some("not a UUID"),
        ),
    ];
    for (name, edit, want) in cases {
        let mut r = device();
        edit(&mut r);
        match (r.plan(NOW), want) {
            (Ok(_), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn cursor_round_trips() {
    let c = Cursor::parse(&format!("-5:{}", ID.to_uppercase())).unwrap();
    assert_eq!(c.ts_ms, -5);
    assert_eq!(c.event_id, ID);
    assert_eq!(Cursor::parse(&c.to_string()).unwrap(), c);
}

#[test]
fn defaults_are_the_last_hour_oldest_first() {
    let plan = device().plan(NOW).unwrap();
    assert_eq!((plan.since_ms, plan.until_ms), (NOW - 3_600_000, NOW));
    assert_eq!(plan.limit, 100);
    assert_eq!(plan.order, Order::OldestFirst);
    assert_eq!(
        plan.sql.text,
        format!(
            "SELECT {TIMELINE_COLUMNS} FROM events_by_device WHERE project_id = ? \
             AND event_date >= toDate(toDateTime(intDiv(?, 1000)), 'UTC') \
             AND event_date <= toDate(toDateTime(intDiv(?, 1000)), 'UTC') \
             AND ts_ms >= ? AND ts_ms < ? AND anonymous_id = ? \
             ORDER BY ts_ms ASC, event_id ASC LIMIT 1 BY event_id LIMIT ?"
        )
    );
    assert_eq!(plan.sql.params.last(), Some(&Param::Int(101)));
    let mut r = device();
    r.until_ms = Some(NOW - 7_200_000);
    let plan = r.plan(NOW).unwrap();
    assert_eq!(plan.since_ms, NOW - 3 * 3_600_000);
}

#[test]
fn user_timeline_binds_every_caller_value() {
    let hostile = "u' OR '1'='1 -- \\";
    let r = TimelineRequest {
        project_id: "shop".into(),
        user_id: Some(hostile.into()),
        cursor: Some(format!("1795391999000:{ID}")),
        order: Order::NewestFirst,
        limit: Some(10),
        ..TimelineRequest::default()
    };
    let sql = r.plan(NOW).unwrap().sql;
    assert!(!sql.text.contains(hostile) && !sql.text.contains("shop"));
    assert!(!sql.text.contains(ID));
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
    assert!(sql.text.contains(
        "(anonymous_id IN (SELECT anonymous_id FROM device_users WHERE project_id = ? AND"
    ));
    assert!(sql.text.contains(
        "AND user_id = ?) OR anonymous_id IN (SELECT anonymous_id FROM identity_links \
         WHERE project_id = ? AND user_id = ?)) AND (user_id = ? OR user_id = '') \
         AND (ts_ms < ? OR (ts_ms = ? AND event_id < toUUID(?))) \
         ORDER BY ts_ms DESC, event_id DESC LIMIT 1 BY event_id LIMIT ?"
    ));
    let tail = &sql.params[sql.params.len() - 8..];
    assert_eq!(
        tail,
        &[
            Param::Str(hostile.into()),
            Param::Str("shop".into()),
            Param::Str(hostile.into()),
            Param::Str(hostile.into()),
            Param::Int(1_795_391_999_000),
            Param::Int(1_795_391_999_000),
            Param::Str(ID.into()),
            Param::Int(11),
        ]
    );
}

#[test]
fn requests_read_from_json() {
    let r: TimelineRequest =
        serde_json::from_str(r#"{"user_id":"u-1","order":"newest_first","limit":5}"#).unwrap();
    assert_eq!(r.order, Order::NewestFirst);
    assert_eq!(r.limit, Some(5));
    let r: TimelineRequest = serde_json::from_str(r#"{"anonymous_id":"d-1"}"#).unwrap();
    assert_eq!(r.order, Order::OldestFirst);
}

/// A device's plan carries the query of its linked users, every caller
/// value bound; a user's has none.
#[test]
fn device_timeline_asks_for_its_linked_users() {
    let hostile = "d' OR '1'='1 -- \\";
    let mut r = device();
    r.anonymous_id = Some(hostile.into());
    let links = r.plan(NOW).unwrap().links_sql.unwrap();
    assert!(!links.text.contains(hostile) && !links.text.contains("shop"));
    assert_eq!(links.text.matches('?').count(), links.params.len());
    // The columns of LINKED_USER_COLUMNS, in order.
    assert!(links.text.starts_with(
        "SELECT user_id, min(first_ms) AS first_seen_ms, max(last_ms) AS last_seen_ms, \
         max(by_identity) AS identified, max(by_events) AS seen_signed_in FROM (SELECT user_id, \
         minMerge(first_seen_ms)"
    ));
    assert_eq!(
        LINKED_USER_COLUMNS,
        "user_id, first_seen_ms, last_seen_ms, identified, seen_signed_in"
    );
    assert!(links.text.contains(
        "FROM identity_links WHERE project_id = ? AND anonymous_id = ? GROUP BY user_id"
    ));
    assert!(links.text.contains(
        "FROM events_by_device WHERE project_id = ? AND anonymous_id = ? AND user_id != '' GROUP BY user_id"
    ));
    assert!(links
        .text
        .ends_with("GROUP BY user_id ORDER BY first_seen_ms, user_id LIMIT ?"));
    assert_eq!(
        links.params,
        vec![
            Param::Str("shop".into()),
            Param::Str(hostile.into()),
            Param::Str("shop".into()),
            Param::Str(hostile.into()),
            Param::Int(i64::from(MAX_LINKED_USERS) + 1),
        ]
    );
    let user = TimelineRequest {
        project_id: "shop".into(),
        user_id: Some("u".into()),
        ..TimelineRequest::default()
    };
    assert_eq!(user.plan(NOW).unwrap().links_sql, None);
}

/// `with_linked_users`: the device's events or its linked users' signed-in
/// events on the devices they were seen on in the window; every value
/// bound, in the text's order.
#[test]
fn a_device_with_its_linked_users_binds_every_value_in_order() {
    let hostile = "d' OR '1'='1 -- \\";
    let mut r = device();
    r.anonymous_id = Some(hostile.into());
    r.with_linked_users = true;
    let sql = r.plan(NOW).unwrap().sql;
    assert!(!sql.text.contains(hostile) && !sql.text.contains("shop"));
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
    let linked = "SELECT user_id FROM identity_links WHERE project_id = ? AND anonymous_id = ? \
                  UNION ALL SELECT user_id FROM events_by_device WHERE project_id = ? \
                  AND anonymous_id = ? AND user_id != ''";
    assert!(
        sql.text.contains(&format!(
            "AND ts_ms >= ? AND ts_ms < ? AND (anonymous_id = ? OR (anonymous_id IN \
             (SELECT anonymous_id FROM device_users WHERE project_id = ? \
             AND event_date >= toDate(toDateTime(intDiv(?, 1000)), 'UTC') \
             AND event_date <= toDate(toDateTime(intDiv(?, 1000)), 'UTC') \
             AND ts_ms >= ? AND ts_ms < ? AND user_id IN ({linked})) \
             AND user_id IN ({linked}))) ORDER BY"
        )),
        "{}",
        sql.text
    );
    let (since, until) = (NOW - 3_600_000, NOW);
    let s = |v: &str| Param::Str(v.into());
    let window = [
        s("shop"),
        Param::Int(since),
        Param::Int(until - 1),
        Param::Int(since),
        Param::Int(until),
    ];
    let linked = [s("shop"), s(hostile), s("shop"), s(hostile)];
    let mut want = window.to_vec();
    want.push(s(hostile));
    want.extend(window.clone());
    want.extend(linked.clone());
    want.extend(linked);
    want.push(Param::Int(101));
    assert_eq!(sql.params, want);
}
