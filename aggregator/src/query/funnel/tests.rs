use super::*;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

fn step(event: &str) -> FunnelStep {
    FunnelStep {
        event: event.into(),
        properties: vec![],
    }
}

fn base() -> FunnelRequest {
    FunnelRequest {
        project_id: "shop".into(),
        steps: vec![step("add_to_cart"), step("payment")],
        window_seconds: 3600,
        since_ms: T0 - DAY,
        until_ms: T0,
        breakdown: None,
        breakdown_limit: DEFAULT_BREAKDOWN_LIMIT,
    }
}

#[test]
fn validation_table() {
    type Case = (&'static str, fn(&mut FunnelRequest), Option<&'static str>);
    let cases: &[Case] = &[
        ("plain", |_| {}, None),
        (
            "no project",
            |r| r.project_id.clear(),
            Some("`project_id` is empty"),
        ),
        (
            "one step",
            |r| r.steps.truncate(1),
            Some("2 to 8 steps, got 1"),
        ),
        (
            "nine steps",
            |r| r.steps = vec![step("a"); 9],
            Some("2 to 8 steps, got 9"),
        ),
        ("eight steps", |r| r.steps = vec![step("a"); 8], None),
        (
            "empty event",
            |r| r.steps[1].event.clear(),
            Some("`steps.event` is empty"),
        ),
        (
            "control character",
            |r| r.steps[0].event = "add\u{0}cart".into(),
            Some("control character"),
        ),
        (
            "long event",
            |r| r.steps[0].event = "e".repeat(257),
            Some("257 bytes"),
        ),
        (
            "bad property name",
            |r| {
                r.steps[0].properties = vec![PropertyFilter {
                    name: "a b".into(),
                    value: "x".into(),
                }]
            },
            Some("property name"),
        ),
        (
            "too many filters in a step",
            |r| {
                r.steps[0].properties = vec![
                    PropertyFilter {
                        name: "a".into(),
                        value: "x".into(),
                    };
                    17
                ]
            },
            Some("at most 16 property filters in one step"),
        ),
        (
            "zero window",
            |r| r.window_seconds = 0,
            Some("`window_seconds`"),
        ),
        (
            "window too long",
            |r| r.window_seconds = 30 * 86_400 + 1,
            Some("30 days"),
        ),
        (
            "window of 30 days",
            |r| r.window_seconds = 30 * 86_400,
            None,
        ),
        (
            "inverted",
            |r| r.until_ms = r.since_ms,
            Some("empty or inverted"),
        ),
        (
            "range too long",
            |r| r.since_ms = r.until_ms - 90 * DAY - 1,
            Some("longer than 90 days"),
        ),
        (
            "range of 90 days",
            |r| r.since_ms = r.until_ms - 90 * DAY,
            None,
        ),
        (
            "breakdown limit 0",
            |r| r.breakdown_limit = 0,
            Some("`breakdown_limit`"),
        ),
        (
            "breakdown limit too big",
            |r| r.breakdown_limit = 101,
            Some("1 to 100"),
        ),
        (
            "hostile values are fine (bound)",
            |r| {
                r.steps[1].event = "payment' OR 1=1 --".into();
                r.steps[1].properties = vec![PropertyFilter {
                    name: "plan".into(),
                    value: "x\\' OR '1'='1".into(),
                }]
            },
            None,
        ),
    ];
    for (name, edit, want) in cases {
        let mut r = base();
        edit(&mut r);
        match (r.validate(), want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn tick_fits_int32_for_every_valid_request() {
    let mut r = base();
    assert_eq!(r.tick_ms(), 1);
    r.steps = vec![step("a"); 8];
    r.since_ms = r.until_ms - 3 * DAY;
    r.window_seconds = 86_400;
    assert_eq!(r.tick_ms(), 10);
    r.since_ms = r.until_ms - 90 * DAY;
    r.window_seconds = MAX_WINDOW_SECONDS;
    assert_eq!(r.tick_ms(), 100);
    let span = r.until_ms - r.since_ms + r.window_seconds * 1000;
    assert!((span / 100 + 1) * 8 <= i64::from(i32::MAX));
    r.steps.truncate(2);
    assert_eq!(r.tick_ms(), 10);
}

#[test]
fn sql_binds_every_caller_value() {
    let hostile = "x' OR '1'='1 -- \\";
    let mut r = base();
    r.steps[0].properties = vec![PropertyFilter {
        name: "plan".into(),
        value: hostile.into(),
    }];
    r.steps[1].event = hostile.into();
    let sql = r.sql().unwrap();
    assert!(!sql.text.contains(hostile) && !sql.text.contains("shop"));
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
    assert_eq!(
        sql.text,
        "SELECT count() AS entered_1, countIf(level >= 2) AS entered_2 FROM (\
         SELECT cityHash64(if(user_id != '', user_id, anonymous_id)) AS who, \
         windowFunnel(?)(toUInt32(intDiv(ts_ms - ?, ?) * 2 + 2 - step), step = 1, step = 2) AS level \
         FROM (SELECT * FROM (SELECT user_id, anonymous_id, ts_ms, multiIf(\
         event = ? AND visitParamExtractRaw(properties, ?) IN (?, ?) AND ts_ms < ?, 1, \
         event = ?, 2, 0) AS step FROM events WHERE project_id = ? \
         AND event_date >= toDate(toDateTime(intDiv(?, 1000)), 'UTC') \
         AND event_date <= toDate(toDateTime(intDiv(?, 1000)), 'UTC') \
         AND ts_ms >= ? AND ts_ms < ? AND event IN (?, ?)) WHERE step > 0) GROUP BY who) WHERE level > 0"
    );
    let window_end = T0 + 3_600_000;
    assert_eq!(
        sql.params,
        vec![
            Param::Int(3_600_000 * 2),
            Param::Int(T0 - DAY),
            Param::Int(1),
            Param::Str("add_to_cart".into()),
            Param::Str("plan".into()),
            Param::Str(hostile.into()),
            Param::Str(serde_json::to_string(hostile).unwrap()),
            Param::Int(T0),
            Param::Str(hostile.into()),
            Param::Str("shop".into()),
            Param::Int(T0 - DAY),
            Param::Int(window_end - 1),
            Param::Int(T0 - DAY),
            Param::Int(window_end),
            Param::Str("add_to_cart".into()),
            Param::Str(hostile.into()),
        ]
    );
}

#[test]
fn a_repeated_step_event_gives_one_row_per_step_it_matches() {
    let mut r = base();
    r.steps = vec![step("page_view"), step("add_to_cart"), step("page_view")];
    let sql = r.sql().unwrap();
    assert!(!sql.text.contains("multiIf"), "{}", sql.text);
    assert!(sql.text.contains(
        "arrayJoin(arrayFilter(x -> x > 0, [if(event = ? AND ts_ms < ?, 1, 0), \
         if(event = ?, 2, 0), if(event = ?, 3, 0)])) AS step"
    ));
    assert!(!sql.text.contains("event_id"), "read only for a breakdown");
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
}

#[test]
fn breakdown_adds_the_first_step_value_and_totals() {
    let mut r = base();
    r.breakdown = Some(Dimension::Country);
    r.breakdown_limit = 5;
    let sql = r.sql().unwrap();
    assert!(sql
        .text
        .starts_with("SELECT breakdown, count() AS entered_1"));
    assert!(sql
        .text
        .contains("argMinIf(breakdown_value, (ts_ms, event_id), step = 1) AS breakdown FROM"));
    assert!(sql
        .text
        .contains("ts_ms, event_id, country AS breakdown_value, multiIf("));
    assert!(sql
        .text
        .ends_with("GROUP BY breakdown WITH TOTALS ORDER BY entered_1 DESC, breakdown LIMIT ?"));
    assert_eq!(sql.params.last(), Some(&Param::Int(5)));
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
}

#[test]
fn steps_define_conversion_and_drop_off() {
    let steps = vec![step("view"), step("add_to_cart"), step("payment")];
    let got = funnel_steps(&steps, &[200, 50, 20]);
    let summary: Vec<_> = got
        .iter()
        .map(|s| {
            (
                s.entered,
                s.converted,
                s.dropped,
                s.conversion_rate,
                s.overall_conversion_rate,
                s.drop_off_rate,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (200, 50, 150, 1.0, 1.0, 0.75),
            (50, 20, 30, 0.25, 0.25, 0.6),
            (20, 20, 0, 0.4, 0.1, 0.0),
        ]
    );
    let empty = funnel_steps(&steps, &[0, 0, 0]);
    assert!(empty
        .iter()
        .all(|s| s.conversion_rate == 0.0 && s.drop_off_rate == 0.0));
}

#[test]
fn requests_read_from_json() {
    let r: FunnelRequest = serde_json::from_str(
        r#"{"steps":[{"event":"add_to_cart"},
                     {"event":"payment","properties":[{"name":"method","value":"card"}]}],
            "window_seconds":3600,"since_ms":1795305600000,"until_ms":1795392000000,
            "breakdown":"country"}"#,
    )
    .unwrap();
    assert_eq!(r.project_id, "");
    assert_eq!(r.breakdown, Some(Dimension::Country));
    assert_eq!(r.breakdown_limit, DEFAULT_BREAKDOWN_LIMIT);
    assert_eq!(r.steps[1].properties[0].name, "method");
}
