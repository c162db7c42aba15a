use super::*;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

fn base() -> MetricsRequest {
    MetricsRequest {
        project_id: "shop".into(),
        measure: Measure::Count,
        events: vec![],
        since_ms: T0 - DAY,
        until_ms: T0,
        granularity: Granularity::Hour,
        timezone: "UTC".into(),
        group_by: vec![],
        filters: vec![],
        properties: vec![],
    }
}

#[test]
fn validation_table() {
    type Case = (&'static str, fn(&mut MetricsRequest), Option<&'static str>);
    let cases: &[Case] = &[
        ("plain", |_| {}, None),
        (
            "empty project",
            |r| r.project_id.clear(),
            Some("`project_id` is empty"),
        ),
        (
            "control char",
            |r| r.events = vec!["a\nb".into()],
            Some("control character"),
        ),
        (
            "inverted",
            |r| r.until_ms = r.since_ms,
            Some("empty or inverted"),
        ),
        (
            "too long",
            |r| r.since_ms = r.until_ms - 401 * DAY,
            Some("longer than 400 days"),
        ),
        (
            "too many buckets",
            |r| {
                r.granularity = Granularity::Minute;
                r.since_ms = r.until_ms - 8 * DAY;
            },
            Some("buckets"),
        ),
        (
            "four groups",
            |r| {
                r.group_by = vec![
                    Dimension::Country,
                    Dimension::Browser,
                    Dimension::Os,
                    Dimension::DeviceType,
                ]
            },
            Some("at most 3"),
        ),
        (
            "repeated group",
            |r| r.group_by = vec![Dimension::Country, Dimension::Country],
            Some("twice"),
        ),
        (
            "bad tz",
            |r| r.timezone = "UTC'; DROP".into(),
            Some("timezone"),
        ),
        (
            "tz ok",
            |r| r.timezone = "America/Argentina/Buenos_Aires".into(),
            None,
        ),
        (
            "bad property name",
            |r| r.measure = Measure::Sum("price') OR 1=1 --".into()),
            Some("property name"),
        ),
        (
            "hostile value is fine (bound)",
            |r| {
                r.properties = vec![PropertyFilter {
                    name: "plan".into(),
                    value: "x' OR '1'='1".into(),
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
fn sql_binds_every_caller_value() {
    let hostile = "x' OR '1'='1 -- \\";
    let mut r = base();
    r.measure = Measure::UniqueUsers;
    r.events = vec!["purchase".into(), hostile.into()];
    r.timezone = "Europe/Berlin".into();
    r.group_by = vec![Dimension::Country, Dimension::DeviceType];
    r.filters = vec![DimensionFilter {
        dimension: Dimension::Browser,
        value: hostile.into(),
    }];
    r.properties = vec![PropertyFilter {
        name: "plan".into(),
        value: hostile.into(),
    }];
    let sql = r.sql().unwrap();
    assert!(
        !sql.text.contains(hostile) && !sql.text.contains("Berlin") && !sql.text.contains("shop")
    );
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
    assert_eq!(
        sql.text,
        "SELECT toStartOfHour(event_time, ?) AS bucket, country, device_type, \
         toFloat64(uniqExact(if(user_id != '', user_id, anonymous_id))) AS value FROM events \
         WHERE project_id = ? AND event_date >= toDate(toDateTime(intDiv(?, 1000)), 'UTC') \
         AND event_date <= toDate(toDateTime(intDiv(?, 1000)), 'UTC') AND ts_ms >= ? AND ts_ms < ? \
         AND event IN (?, ?) AND browser = ? AND visitParamExtractRaw(properties, ?) IN (?, ?) \
         GROUP BY bucket, country, device_type ORDER BY bucket, country, device_type LIMIT 10000"
    );
    assert_eq!(sql.params[0], Param::Str("Europe/Berlin".into()));
    assert_eq!(sql.params[1], Param::Str("shop".into()));
    assert_eq!(sql.params[2], Param::Int(T0 - DAY));
    assert_eq!(sql.params[3], Param::Int(T0 - 1));
    assert_eq!(
        sql.params.last(),
        Some(&Param::Str(serde_json::to_string(hostile).unwrap()))
    );
}

#[test]
fn sum_and_avg_bind_the_property_in_text_order() {
    let mut r = base();
    r.measure = Measure::Avg("price".into());
    let sql = r.sql().unwrap();
    assert!(sql
        .text
        .contains("avgIf(visitParamExtractFloat(properties, ?), visitParamHas(properties, ?))"));
    assert_eq!(
        &sql.params[..3],
        &[
            Param::Str("UTC".into()),
            Param::Str("price".into()),
            Param::Str("price".into())
        ]
    );
    r.measure = Measure::Sum("price".into());
    let sql = r.sql().unwrap();
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
}

#[test]
fn requests_read_from_json() {
    let r: MetricsRequest = serde_json::from_str(
        r#"{"project_id":"shop","measure":{"kind":"unique_users"},"events":["purchase"],
            "since_ms":1795305600000,"until_ms":1795392000000,"granularity":"day"}"#,
    )
    .unwrap();
    assert_eq!(r.timezone, "UTC");
    assert!(r.validate().is_ok());
    let sum: MetricsRequest = serde_json::from_str(
        r#"{"project_id":"shop","measure":{"kind":"sum","property":"price"},
            "since_ms":0,"until_ms":86400000,"granularity":"hour","group_by":["country"]}"#,
    )
    .unwrap();
    assert_eq!(sum.measure, Measure::Sum("price".into()));
}

/// The campaign columns are dimensions like the others: grouped and
/// filtered on `events` (the rollups do not keep them), the value bound.
#[test]
fn campaign_dimensions_group_and_filter_on_events() {
    let r: MetricsRequest = serde_json::from_str(&format!(
        r#"{{"project_id":"shop","measure":{{"kind":"count"}},"since_ms":{},"until_ms":{},
            "granularity":"day","group_by":["utm_source","utm_medium"],
            "filters":[{{"dimension":"utm_campaign","value":"winter"}},
                       {{"dimension":"utm_term","value":"boots"}},
                       {{"dimension":"utm_content","value":"hero"}}]}}"#,
        T0 - DAY,
        T0
    ))
    .unwrap();
    assert!(r.validate().is_ok());
    let plan = r.plan().unwrap();
    assert_eq!(plan.source, Source::Raw, "the rollups keep no campaign");
    let sql = &plan.sql;
    assert!(
        sql.text.contains(
            "toStartOfDay(event_time, ?) AS bucket, utm_source, utm_medium, toFloat64(count()) AS value FROM events"
        ),
        "{}",
        sql.text
    );
    assert!(
        sql.text
            .contains("AND utm_campaign = ? AND utm_term = ? AND utm_content = ? GROUP BY bucket, utm_source, utm_medium"),
        "{}",
        sql.text
    );
    assert!(!sql.text.contains("winter"));
    assert!(sql.params.contains(&Param::Str("winter".into())));
    assert_eq!(sql.text.matches('?').count(), sql.params.len());
}
