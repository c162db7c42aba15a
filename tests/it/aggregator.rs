//! The aggregator's metrics SQL on a real clickhouse-server (18.16 here):
//! rows written by the relay's sink, then counts, unique users and sums by
//! bucket and group compared with the same numbers computed here from the
//! rows themselves; hostile values find nothing and break nothing.

use std::collections::{BTreeMap, BTreeSet};

use spoor_aggregator::query::{
    Dimension, DimensionFilter, Granularity, Measure, MetricsRequest, PropertyFilter,
};
use spoor_aggregator::store::run_metrics;
use spoor_core::Geo;
use spoor_store::EventRow;
use spoor_tests::clickhouse::ClickHouseServer;

use crate::support::{schema_database, SchemaDb};
use spoor_tests::fixtures::{batch, event};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
/// 2026-11-22T00:00:00Z
const T0: i64 = 1_795_305_600_000;

/// 400 events over one day: every 4th a purchase with a price, users by
/// n % 37 (every 5th without user_id, counted by device), two countries.
fn rows() -> Vec<EventRow> {
    let mut out = Vec::new();
    for n in 0..400u128 {
        let mut e = event(n);
        e.ts_ms = T0 + (n as i64) * (DAY / 400);
        e.event = if n % 4 == 0 { "purchase" } else { "page_view" }.into();
        e.user_id = if n % 5 == 0 {
            String::new()
        } else {
            format!("u{}", n % 37)
        };
        e.anonymous_id = format!("d{}", n % 53);
        e.properties = if n % 4 == 0 {
            format!(
                "{{\"price\":{},\"plan\":\"{}\"}}",
                n % 10,
                if n % 8 == 0 { "pro" } else { "free" }
            )
        } else {
            "{}".into()
        };
        let mut b = batch(&format!("agg-{n}"), vec![]);
        b.project_id = "shop".into();
        b.geo = Geo {
            country: if n % 3 == 0 { "DE" } else { "FR" }.into(),
            ..Geo::default()
        };
        out.push(EventRow::new(&b, e));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_a_computation_over_the_same_rows() {
    let ch = ClickHouseServer::shared();
    let SchemaDb { sink, client, .. } = schema_database(ch, "agg_metrics").await;
    let rows = rows();
    sink.insert(&rows).await.unwrap();
    let request = |measure: Measure| MetricsRequest {
        project_id: "shop".into(),
        measure,
        events: vec![],
        since_ms: T0,
        until_ms: T0 + DAY,
        granularity: Granularity::Hour,
        timezone: "UTC".into(),
        group_by: vec![],
        filters: vec![],
        properties: vec![],
    };

    // Events per hour.
    let got = run_metrics(&client, &request(Measure::Count).sql().unwrap())
        .await
        .unwrap();
    let mut want: BTreeMap<i64, f64> = BTreeMap::new();
    for r in &rows {
        *want.entry((r.ts_ms - T0) / HOUR).or_default() += 1.0;
    }
    assert_eq!(got.len(), 24);
    assert_eq!(
        got.iter().map(|r| r.value).collect::<Vec<_>>(),
        want.values().copied().collect::<Vec<_>>()
    );
    assert_eq!(got[0].bucket, "2026-11-22 00:00:00");

    // "How many users completed checkout that day?" by country, daily.
    let mut q = request(Measure::UniqueUsers);
    q.events = vec!["purchase".into()];
    q.granularity = Granularity::Day;
    q.group_by = vec![Dimension::Country];
    let got = run_metrics(&client, &q.sql().unwrap()).await.unwrap();
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.event == "purchase") {
        let who = if r.user_id.is_empty() {
            r.anonymous_id.clone()
        } else {
            r.user_id.clone()
        };
        want.entry(r.country.to_string()).or_default().insert(who);
    }
    let got: BTreeMap<String, f64> = got
        .into_iter()
        .map(|r| (r.groups[0].clone(), r.value))
        .collect();
    let want: BTreeMap<String, f64> = want.into_iter().map(|(k, v)| (k, v.len() as f64)).collect();
    assert_eq!(got, want);

    // Revenue of pro plans, in Berlin's days.
    let mut q = request(Measure::Sum("price".into()));
    q.granularity = Granularity::Day;
    q.timezone = "Europe/Berlin".into();
    q.properties = vec![PropertyFilter {
        name: "plan".into(),
        value: "pro".into(),
    }];
    let got = run_metrics(&client, &q.sql().unwrap()).await.unwrap();
    let want: f64 = rows
        .iter()
        .filter(|r| r.properties.contains("\"plan\":\"pro\""))
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.properties).unwrap()["price"]
                .as_f64()
                .unwrap()
        })
        .sum();
    assert_eq!(got.iter().map(|r| r.value).sum::<f64>(), want);
    assert!(
        got.iter().all(|r| r.bucket.ends_with("00:00:00")),
        "{got:?}"
    );

    // Hostile values are bound: they match nothing and the table is intact.
    let hostile = "FR' OR '1'='1";
    let mut q = request(Measure::Count);
    q.filters = vec![DimensionFilter {
        dimension: Dimension::Country,
        value: hostile.into(),
    }];
    q.properties = vec![PropertyFilter {
        name: "plan".into(),
        value: "x\\' OR 1=1 --".into(),
    }];
    assert!(run_metrics(&client, &q.sql().unwrap())
        .await
        .unwrap()
        .is_empty());
    let total = run_metrics(&client, &request(Measure::Count).sql().unwrap())
        .await
        .unwrap();
    assert_eq!(total.iter().map(|r| r.value).sum::<f64>(), 400.0);
}
