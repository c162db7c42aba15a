use super::*;
use crate::query::Dimension;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

fn base() -> SessionsRequest {
    SessionsRequest {
        project_id: "shop".into(),
        since_ms: T0 - 7 * DAY,
        until_ms: T0,
        timezone: "UTC".into(),
        filters: vec![],
    }
}

#[test]
fn validation_table() {
    type Case = (&'static str, fn(&mut SessionsRequest), Option<&'static str>);
    let cases: &[Case] = &[
        ("plain", |_| {}, None),
        (
            "no project",
            |r| r.project_id.clear(),
            Some("`project_id` is empty"),
        ),
        (
            "inverted",
            |r| r.since_ms = r.until_ms + 1,
            Some("empty or inverted"),
        ),
        (
            "range too long",
            |r| r.since_ms = r.until_ms - 90 * DAY - 1,
            Some("longer than 90 days"),
        ),
        (
            "bad timezone",
            |r| r.timezone = "UTC') OR 1=1".into(),
            Some("timezone"),
        ),
        (
            "too many filters",
            |r| {
                r.filters = vec![
                    DimensionFilter {
                        dimension: Dimension::Country,
                        value: "DE".into(),
                    };
                    17
                ]
            },
            Some("at most 16 filters"),
        ),
        (
            "empty filter value",
            |r| {
                r.filters = vec![DimensionFilter {
                    dimension: Dimension::Country,
                    value: String::new(),
                }]
            },
            Some("`filter value` is empty"),
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
fn sql_binds_every_caller_value() {
    let hostile = "DE' OR '1'='1 -- \\";
    let mut r = base();
    r.timezone = "Europe/Berlin".into();
    r.filters = vec![
        DimensionFilter {
            dimension: Dimension::Country,
            value: hostile.into(),
        },
        DimensionFilter {
            dimension: Dimension::PagePath,
            value: "/pricing".into(),
        },
    ];
    let sql = r.sql().unwrap();
    assert!(!sql.text.contains(hostile) && !sql.text.contains("Berlin"));
    assert!(!sql.text.contains("shop") && !sql.text.contains("/pricing"));
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
    assert!(sql.text.starts_with(
        "SELECT toString(toDate(toDateTime(intDiv(start, 1000)), ?)) AS day, count() AS sessions"
    ));
    assert!(sql.text.contains(
        "uniqExactIf(event_id, event = 'page_view') AS pages, \
         argMin(country, (ts_ms, event_id)) AS first_0, \
         argMin(page_path, (ts_ms, event_id)) AS first_1 FROM events WHERE"
    ));
    assert!(sql.text.contains(
        "AND session_id != '' GROUP BY anonymous_id, session_id \
         HAVING start >= ? AND start < ? AND first_0 = ? AND first_1 = ? UNION ALL SELECT"
    ));
    assert!(sql
        .text
        .contains("groupUniqArray((ts_ms, event_id, event = 'page_view', country, page_path))"));
    assert!(sql.text.contains("i = 1 OR gap > 1800000"));
    assert!(sql
        .text
        .contains("AND session_id = '' GROUP BY anonymous_id)"));
    assert!(sql
        .text
        .contains("argMin(e.4, (e.1, e.2)) AS first_0, argMin(e.5, (e.1, e.2)) AS first_1 FROM"));
    assert!(sql.text.ends_with(
        "GROUP BY anonymous_id, part HAVING start >= ? AND start < ? AND first_0 = ? \
         AND first_1 = ?) GROUP BY day WITH TOTALS ORDER BY day"
    ));
    // Each branch binds the same values: the scan window, then the range
    // and the filters.
    let branch = vec![
        Param::Str("shop".into()),
        Param::Int(r.since_ms - EDGE_MS),
        Param::Int(r.until_ms + EDGE_MS - 1),
        Param::Int(r.since_ms - EDGE_MS),
        Param::Int(r.until_ms + EDGE_MS),
        Param::Int(r.since_ms),
        Param::Int(r.until_ms),
        Param::Str(hostile.into()),
        Param::Str("/pricing".into()),
    ];
    let mut want = vec![Param::Str("Europe/Berlin".into())];
    want.extend(branch.clone());
    want.extend(branch);
    assert_eq!(sql.params, want);
}

#[test]
fn requests_read_from_json() {
    let r: SessionsRequest = serde_json::from_str(
        r#"{"since_ms":0,"until_ms":86400000,"filters":[{"dimension":"country","value":"DE"}]}"#,
    )
    .unwrap();
    assert_eq!(r.timezone, "UTC");
    assert_eq!(r.project_id, "");
    assert_eq!(r.filters[0].dimension, Dimension::Country);
}
