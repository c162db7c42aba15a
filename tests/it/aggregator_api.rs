//! The aggregator's HTTP API on a real clickhouse-server (18.16), served
//! in-process on a free port with the harness's read-only ClickHouse user:
//! tokens per project, hostile parameters answered with 400s, lanes that
//! keep the dashboard answering while ad-hoc queries pile up, timeouts and
//! row limits, freshness on every answer.

use std::time::Duration;

use spoor_aggregator::config::{ClickHouseRead, Config, Tokens};
use spoor_tests::clickhouse::{ClickHouseServer, READONLY_USER};
use tokio::sync::oneshot;

/// Read tokens used by these tests and the dashboard test.
pub(crate) const SHOP_TOKEN: &str = "shop-read-token-0123456789";
pub(crate) const OTHER_TOKEN: &str = "other-read-token-0123456789";

/// An aggregator served in-process until dropped.
pub(crate) struct Served {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A config reading `database` as the harness's read-only user, with
/// tokens for `shop` and `other`.
pub(crate) fn config(ch: &ClickHouseServer, database: &str) -> Config {
    Config::new(
        ClickHouseRead {
            connection: ClickHouseConfig {
                url: ch.http_url(),
                database: database.to_string(),
                user: Some(READONLY_USER.to_string()),
                password: None,
            },
            allow_writable_user: false,
        },
        Tokens::parse(&format!("shop={SHOP_TOKEN},other={OTHER_TOKEN}")).unwrap(),
    )
}

/// Starts the service on a free port and waits until /healthz answers.
pub(crate) async fn serve(config: Config) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        spoor_aggregator::service::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("aggregator failed to start");
    });
    let client = reqwest_client();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() {
                return Served {
                    url,
                    stop: Some(stop),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the aggregator at {url} never became healthy");
}

pub(crate) fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use spoor_store::ClickHouseConfig;
use spoor_store::EventRow;

use crate::support::{schema_database, SchemaDb};
use spoor_tests::fixtures::shop_rows;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

use crate::support::now_ms;

/// A database with the schema applied, as ClickHouse's default user.
async fn database(ch: &ClickHouseServer, prefix: &str) -> (String, ClickHouseConfig) {
    let db = schema_database(ch, prefix).await;
    (db.name, db.write)
}

/// `shop_rows(now)` stored in a fresh database, and an aggregator over it.
async fn shop(ch: &ClickHouseServer, prefix: &str) -> (SchemaDb, Vec<EventRow>, i64, Served) {
    let db = schema_database(ch, prefix).await;
    let now = now_ms();
    let rows = shop_rows(now);
    db.sink.insert(&rows).await.unwrap();
    let served = serve(config(ch, &db.name)).await;
    (db, rows, now, served)
}

fn user_key(r: &EventRow) -> String {
    if r.user_id.is_empty() {
        r.anonymous_id.clone()
    } else {
        r.user_id.clone()
    }
}

async fn post(url: &str, token: Option<&str>, lane: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest_client().post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(l) = lane {
        req = req.header("X-Spoor-Lane", l);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not JSON ({e}) with status {status}: {text}"));
    (status, value)
}

fn values(answer: &Value) -> Vec<(String, Vec<String>, f64)> {
    answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {answer}"))
        .iter()
        .map(|r| {
            (
                r["bucket"].as_str().unwrap().to_string(),
                r["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_str().unwrap().to_string())
                    .collect(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_the_example_questions_with_freshness() {
    let ch = ClickHouseServer::shared();
    let (_, rows, now, served) = shop(ch, "agg_api_questions").await;
    let metrics = format!("{}/v1/projects/shop/metrics", served.url);

    // "How many users completed checkout yesterday?" (UTC days.)
    let today = now - now.rem_euclid(DAY);
    let (status, answer) = post(
        &metrics,
        Some(SHOP_TOKEN),
        None,
        &json!({
            "measure": {"kind": "unique_users"},
            "events": ["purchase"],
            "since_ms": today - DAY,
            "until_ms": today,
            "granularity": "day",
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let want: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.event == "purchase" && r.ts_ms >= today - DAY && r.ts_ms < today)
        .map(user_key)
        .collect();
    let got = values(&answer);
    assert_eq!(got.len(), 1, "{answer}");
    assert_eq!(got[0].2, want.len() as f64);
    assert!(want.len() > 5, "the data set should have buyers yesterday");

    // "Page views per hour over the last 7 days by device."
    let until = now - now.rem_euclid(HOUR) + HOUR;
    let since = until - 7 * DAY;
    let (status, answer) = post(
        &metrics,
        Some(SHOP_TOKEN),
        None,
        &json!({
            "measure": {"kind": "count"},
            "events": ["page_view"],
            "since_ms": since,
            "until_ms": until,
            "granularity": "hour",
            "group_by": ["device_type"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let mut want: BTreeMap<(i64, String), f64> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.event == "page_view" && r.ts_ms >= since)
    {
        *want
            .entry((
                r.ts_ms - r.ts_ms.rem_euclid(HOUR),
                r.device_type.to_string(),
            ))
            .or_default() += 1.0;
    }
    let got = values(&answer);
    assert_eq!(got.len(), want.len(), "{answer}");
    let total: f64 = got.iter().map(|g| g.2).sum();
    assert_eq!(total, want.values().sum::<f64>());
    let devices: BTreeSet<&str> = got.iter().map(|g| g.1[0].as_str()).collect();
    assert_eq!(devices, BTreeSet::from(["desktop", "mobile", "tablet"]));
    assert_eq!(answer["truncated"], false);

    // Freshness: the newest stored event was received 59.5 s before `now`.
    let freshness = answer["freshness_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no freshness in {answer}"));
    let elapsed = (now_ms() - now) as f64 / 1000.0;
    assert!(
        freshness >= 59.0 && freshness <= 60.0 + elapsed + 1.0,
        "freshness {freshness}"
    );
    let fresh: Value = reqwest_client()
        .get(format!("{}/v1/projects/shop/freshness", served.url))
        .bearer_auth(SHOP_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        fresh["freshness_seconds"].as_f64().unwrap() >= 59.0,
        "{fresh}"
    );
    // A project without events has no freshness, not a made-up one.
    let (status, empty) = post(
        &format!("{}/v1/projects/other/metrics", served.url),
        Some(OTHER_TOKEN),
        None,
        &json!({"measure": {"kind": "count"}, "since_ms": since, "until_ms": until, "granularity": "day"}),
    )
    .await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["freshness_seconds"], Value::Null);
    assert_eq!(empty["rows"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_tokens_open_only_their_own_project() {
    let ch = ClickHouseServer::shared();
    let (_, _, now, served) = shop(ch, "agg_api_tokens").await;
    let body = json!({"measure": {"kind": "count"}, "since_ms": now - DAY, "until_ms": now, "granularity": "day"});
    let shop = format!("{}/v1/projects/shop/metrics", served.url);
    for (token, want, code) in [
        (None, 401, "unauthorized"),
        (Some("not-a-known-token-at-all"), 401, "unauthorized"),
        (Some(OTHER_TOKEN), 403, "forbidden"),
    ] {
        let (status, answer) = post(&shop, token, None, &body).await;
        assert_eq!(status, want, "{token:?}: {answer}");
        assert_eq!(answer["error"], code);
        assert!(answer.get("rows").is_none());
    }
    let (status, answer) = post(&shop, Some(SHOP_TOKEN), None, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(!values(&answer).is_empty());
    // The other project's token sees its own (empty) project only.
    let (status, answer) = post(
        &format!("{}/v1/projects/other/metrics", served.url),
        Some(OTHER_TOKEN),
        None,
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_parameters_get_a_clear_400_and_change_nothing() {
    let ch = ClickHouseServer::shared();
    let (SchemaDb { name: db, .. }, rows, now, served) = shop(ch, "agg_api_hostile").await;
    let metrics = format!("{}/v1/projects/shop/metrics", served.url);
    let base = json!({"measure": {"kind": "count"}, "since_ms": now - DAY, "until_ms": now, "granularity": "hour"});
    let with = |patch: Value| {
        let mut b = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown measure",
            with(json!({"measure": {"kind": "drop_table"}})),
            "measure",
        ),
        (
            "sql in a timezone",
            with(json!({"timezone": "UTC') FROM system.tables --"})),
            "timezone",
        ),
        (
            "unknown timezone",
            with(json!({"timezone": "Mars/Olympus_Mons"})),
            "timezone",
        ),
        (
            "quote in a property name",
            with(json!({"measure": {"kind": "sum", "property": "price') OR 1=1 --"}})),
            "property name",
        ),
        (
            "unknown dimension",
            with(json!({"group_by": ["events; DROP TABLE events"]})),
            "group_by",
        ),
        (
            "four group-bys",
            with(json!({"group_by": ["country", "browser", "os", "device_type"]})),
            "group_by",
        ),
        (
            "repeated group-by",
            with(json!({"group_by": ["country", "country"]})),
            "twice",
        ),
        (
            "inverted range",
            with(json!({"since_ms": now, "until_ms": now - DAY})),
            "range",
        ),
        (
            "too many buckets",
            with(json!({"since_ms": now - 30 * DAY, "granularity": "minute"})),
            "buckets",
        ),
        (
            "range over 400 days",
            with(json!({"since_ms": now - 500 * DAY, "granularity": "day"})),
            "400 days",
        ),
        (
            "control character",
            with(json!({"events": ["page\u{0}view"]})),
            "control",
        ),
        (
            "oversized value",
            with(json!({"filters": [{"dimension": "country", "value": "x".repeat(300)}]})),
            "at most",
        ),
        (
            "too many filters",
            with(
                json!({"properties": (0..20).map(|i| json!({"name": format!("p{i}"), "value": "v"})).collect::<Vec<_>>()}),
            ),
            "at most",
        ),
        (
            "string as a number",
            with(json!({"since_ms": "yesterday"})),
            "since_ms",
        ),
        (
            "not JSON",
            Value::String("{\"measure\":".into()),
            "request body",
        ),
    ];
    for (what, body, expect) in &cases {
        let req = reqwest_client().post(&metrics).bearer_auth(SHOP_TOKEN);
        let req = match body {
            Value::String(raw) => req.body(raw.clone()),
            other => req.json(other),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{what}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(expect),
            "{what}: {message:?} should mention {expect:?}"
        );
    }
    // Values that look like SQL are bound, so they are simply not found.
    let (status, answer) = post(
        &metrics,
        Some(SHOP_TOKEN),
        None,
        &with(json!({
            "filters": [{"dimension": "country", "value": "DE' OR '1'='1"}],
            "properties": [{"name": "price", "value": "1' OR 1=1 --"}],
            "events": ["page_view'); DROP TABLE events; --"],
        })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"], json!([]));
    // Bad lane, bad project names, oversized bodies, wrong methods.
    let resp = reqwest_client()
        .post(&metrics)
        .bearer_auth(SHOP_TOKEN)
        .header("X-Spoor-Lane", "vip")
        .json(&base)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = reqwest_client()
        .post(format!("{}/v1/projects/sh%00op/metrics", served.url))
        .bearer_auth(SHOP_TOKEN)
        .json(&base)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = reqwest_client()
        .post(&metrics)
        .bearer_auth(SHOP_TOKEN)
        .body(vec![b' '; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let resp = reqwest_client()
        .get(&metrics)
        .bearer_auth(SHOP_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    // Nothing changed.
    let count = ch
        .query(&format!("SELECT count() FROM {db}.events"))
        .unwrap();
    assert_eq!(count.trim(), rows.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_clickhouse_user_that_can_write() {
    let ch = ClickHouseServer::shared();
    let (db, _) = database(ch, "agg_api_user").await;
    let mut c = config(ch, &db);
    c.clickhouse.connection.user = None; // the server's default user, which can write
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = spoor_aggregator::service::run(c.clone(), listener, async {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            spoor_aggregator::service::StartError::WritableUser { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("read-only"), "{err}");
    // Allowed explicitly, it starts.
    c.clickhouse.allow_writable_user = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    spoor_aggregator::service::run(c, listener, async {})
        .await
        .unwrap();
}

/// `n` synthetic events of project `shop` over the last 30 days, written by
/// ClickHouse itself (the views fire as for the relay's inserts): enough
/// rows that a raw property sum takes a while on this machine.
fn insert_synthetic(ch: &ClickHouseServer, db: &str, n: u64, now: i64) {
    ch.query(&format!(
        "INSERT INTO {db}.events (project_id, event_date, event_time, ts_ms, event_id, event, \
         user_id, anonymous_id, received_at_ms, properties, page_path, country, city, device_type) \
         SELECT 'shop', toDate(toDateTime(intDiv(t, 1000)), 'UTC'), toDateTime(intDiv(t, 1000)), t, \
                generateUUIDv4(), ['page_view', 'add_to_cart', 'purchase'][number % 3 + 1], \
                concat('u', toString(number % 5000)), concat('d', toString(number % 7000)), t, \
                concat('{{\"price\":', toString(number % 100), ',\"sku\":\"', toString(number % 997), '\"}}'), \
                concat('/p/', toString(number % 3000)), ['DE', 'FR', 'US'][number % 3 + 1], \
                concat('c', toString(number % 400)), ['desktop', 'mobile'][number % 2 + 1] \
         FROM (SELECT number, {now} - (number * 2592000000 / {n}) AS t FROM system.numbers LIMIT {n})"
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_hoc_queries_cannot_starve_the_dashboard() {
    let ch = ClickHouseServer::shared();
    let (db, _) = database(ch, "agg_api_lanes").await;
    let now = now_ms();
    insert_synthetic(ch, &db, 400_000, now);
    let mut c = config(ch, &db);
    c.adhoc.concurrency = 1;
    c.adhoc.queue_wait = Duration::from_millis(20);
    c.dashboard.concurrency = 4;
    c.dashboard.queue_wait = Duration::from_secs(5);
    let served = serve(c).await;
    let metrics = format!("{}/v1/projects/shop/metrics", served.url);
    // Heavy: a raw property sum over 30 days, grouped by city and page.
    let heavy = json!({
        "measure": {"kind": "sum", "property": "price"},
        "since_ms": now - 30 * DAY, "until_ms": now + 1, "granularity": "day",
        "group_by": ["city", "page_path"],
    });
    let light = json!({
        "measure": {"kind": "count"},
        "since_ms": now - HOUR, "until_ms": now + 1, "granularity": "minute",
    });
    let mut adhoc = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (url, heavy) = (metrics.clone(), heavy.clone());
        adhoc.spawn(async move { post(&url, Some(SHOP_TOKEN), None, &heavy).await });
    }
    // While the ad-hoc lane is full, the dashboard keeps answering.
    let mut dashboard_statuses = Vec::new();
    for _ in 0..5 {
        let (status, answer) = post(&metrics, Some(SHOP_TOKEN), Some("dashboard"), &light).await;
        assert!(!values(&answer).is_empty() || status != 200, "{answer}");
        dashboard_statuses.push(status);
    }
    let mut adhoc_statuses = BTreeMap::<u16, usize>::new();
    while let Some(r) = adhoc.join_next().await {
        let (status, answer) = r.unwrap();
        if status == 503 {
            assert_eq!(answer["error"], "busy", "{answer}");
        } else {
            assert_eq!(status, 200, "{answer}");
        }
        *adhoc_statuses.entry(status).or_default() += 1;
    }
    assert_eq!(dashboard_statuses, vec![200; 5]);
    assert!(
        adhoc_statuses.get(&503).copied().unwrap_or(0) >= 1
            && adhoc_statuses.get(&200).copied().unwrap_or(0) >= 1,
        "one ad-hoc slot: some heavy queries run, the rest are refused: {adhoc_statuses:?}"
    );
    let exported: String = reqwest_client()
        .get(format!("{}/metrics", served.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        exported.contains("spoor_aggregator_lane_busy_total{lane=\"adhoc\"}"),
        "{exported}"
    );
    assert!(
        !exported.contains("lane_busy_total{lane=\"dashboard\"}"),
        "{exported}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_stop_at_their_time_and_row_limits() {
    let ch = ClickHouseServer::shared();
    let (db, _) = database(ch, "agg_api_limits").await;
    let now = now_ms();
    insert_synthetic(ch, &db, 100_000, now);
    let mut c = config(ch, &db);
    c.adhoc.timeout = Duration::from_millis(1);
    c.max_result_rows = 50;
    let served = serve(c).await;
    let metrics = format!("{}/v1/projects/shop/metrics", served.url);
    let heavy = json!({
        "measure": {"kind": "sum", "property": "price"},
        "since_ms": now - 30 * DAY, "until_ms": now + 1, "granularity": "day",
        "group_by": ["page_path"],
    });
    let (status, answer) = post(&metrics, Some(SHOP_TOKEN), None, &heavy).await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["error"], "timeout");
    // The dashboard lane's own limit (5 s) lets it through, but 30 days by
    // 3,000 pages is more rows than the 50 allowed.
    let (status, answer) = post(&metrics, Some(SHOP_TOKEN), Some("dashboard"), &heavy).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "too_many_rows");
    // Under the limit it answers.
    let small = json!({
        "measure": {"kind": "count"},
        "since_ms": now - 30 * DAY, "until_ms": now + 1, "granularity": "day",
    });
    let (status, answer) = post(&metrics, Some(SHOP_TOKEN), Some("dashboard"), &small).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(values(&answer).iter().map(|v| v.2).sum::<f64>(), 100_000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnels_timelines_and_sessions_over_http() {
    let ch = ClickHouseServer::shared();
    let (SchemaDb { client, .. }, rows, now, served) = shop(ch, "agg_api_fts").await;
    let url = |name: &str| format!("{}/v1/projects/shop/{name}", served.url);

    // "What is the drop-off between add_to_cart and purchase?" The API's
    // answer is the library's answer for the same request (the library is
    // checked against an independent computation in tests/it/funnels.rs).
    let body = json!({
        "steps": [{"event": "add_to_cart"}, {"event": "purchase"}],
        "window_seconds": 86_400, "since_ms": now - 7 * DAY, "until_ms": now,
    });
    let (status, answer) = post(&url("funnel"), Some(SHOP_TOKEN), None, &body).await;
    assert_eq!(status, 200, "{answer}");
    let mut request: spoor_aggregator::query::funnel::FunnelRequest =
        serde_json::from_value(body.clone()).unwrap();
    request.project_id = "shop".into();
    let direct = spoor_aggregator::store::funnel::run_funnel(&client, &request)
        .await
        .unwrap();
    let steps = answer["steps"].as_array().unwrap();
    assert_eq!(steps.len(), direct.steps.len());
    for (got, want) in steps.iter().zip(&direct.steps) {
        assert_eq!(got["event"], want.event.as_str());
        assert_eq!(got["entered"], want.entered);
        assert_eq!(got["converted"], want.converted);
        assert_eq!(got["dropped"], want.dropped);
        // JSON parsing may round the last bit of a float.
        let close = |field: &str, v: f64| (got[field].as_f64().unwrap() - v).abs() < 1e-12;
        assert!(close("conversion_rate", want.conversion_rate), "{got}");
        assert!(close("drop_off_rate", want.drop_off_rate), "{got}");
    }
    let entered = answer["steps"][0]["entered"].as_u64().unwrap();
    assert!(entered > 0, "{answer}");
    let rate = answer["steps"][0]["drop_off_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate), "{answer}");
    assert!(answer["freshness_seconds"].as_f64().is_some(), "{answer}");

    // One device's last day, paged by 10: every event once, in order.
    let device = "dev7";
    let want: Vec<i64> = {
        let mut t: Vec<i64> = rows
            .iter()
            .filter(|r| r.anonymous_id == device && r.ts_ms >= now - DAY)
            .map(|r| r.ts_ms)
            .collect();
        t.sort_unstable();
        t
    };
    assert!(!want.is_empty());
    let mut got = Vec::new();
    let mut cursor = Value::Null;
    for _ in 0..100 {
        let (status, page) = post(
            &url("timeline"),
            Some(SHOP_TOKEN),
            None,
            &json!({"anonymous_id": device, "since_ms": now - DAY, "until_ms": now, "limit": 10, "cursor": cursor}),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        got.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["ts_ms"].as_i64().unwrap()),
        );
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(got, want);

    // Sessions per day: every event has no session id here, so sessions
    // come from 30 minutes of inactivity per device.
    let (status, answer) = post(
        &url("sessions"),
        Some(SHOP_TOKEN),
        Some("dashboard"),
        &json!({"since_ms": now - 3 * DAY, "until_ms": now, "timezone": "Europe/Berlin"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["total"]["sessions"].as_u64().unwrap() > 0,
        "{answer}"
    );
    assert!(!answer["days"].as_array().unwrap().is_empty(), "{answer}");

    // Their hostile parameters are 400s too.
    for (name, body, expect) in [
        (
            "funnel",
            json!({"steps": [{"event": "a"}], "window_seconds": 60, "since_ms": now - DAY, "until_ms": now}),
            "steps",
        ),
        (
            "funnel",
            json!({"steps": [{"event": "a"}, {"event": "b"}], "window_seconds": 60, "since_ms": now - DAY, "until_ms": now, "breakdown": "1; DROP TABLE events"}),
            "breakdown",
        ),
        (
            "timeline",
            json!({"anonymous_id": "d", "cursor": "1' OR 1=1 --"}),
            "cursor",
        ),
        (
            "timeline",
            json!({"user_id": "u", "anonymous_id": "d"}),
            "one of",
        ),
        (
            "sessions",
            json!({"since_ms": now, "until_ms": now - DAY}),
            "range",
        ),
        (
            "sessions",
            json!({"since_ms": now - DAY, "until_ms": now, "timezone": "Nowhere/Atlantis"}),
            "timezone",
        ),
    ] {
        let (status, answer) = post(&url(name), Some(SHOP_TOKEN), None, &body).await;
        assert_eq!(status, 400, "{name} {body}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(expect),
            "{name}: {message:?} should mention {expect:?}"
        );
    }
}
