//! Identity records on the real parts: the edge's WASM build in workerd →
//! nats-server → spoor-relay → clickhouse-server (18.16), then the
//! aggregator's user timeline.
//!
//! Segment's `identify`, `alias` and `group` calls (with decoy `traits`,
//! `groupId` and `previousId` keys in their context and traits) and the web
//! SDK's own `identify` and `alias` events are stored in `events`, and the
//! views of `deploy/clickhouse/004_identity.sql` make of them:
//! - `identity_links`: every (user, anonymous id) pair with its first and
//!   last seen event time, an alias's previous id included;
//! - `user_traits` / `group_traits`: the traits of the newest identify or
//!   group that had any (two identifies with different traits, then one
//!   without: the second's win);
//! - a user's timeline over a window that ends before they logged in holds
//!   the anonymous events of the devices linked to them (through identify
//!   and alias), and nothing of devices not linked;
//! - a device's timeline names the users the device is linked to (by
//!   identify, by an alias sent from another device, by its own signed-in
//!   events) and resolves its anonymous events to the user only when there
//!   is exactly one (rows inserted through the relay's sink, on 18.16);
//!   with `with_linked_users` it adds their signed-in events from their
//!   other devices.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use spoor_aggregator::query::timeline::TimelineRequest;
use spoor_aggregator::store::timeline::{run_timeline, TimelinePage};
use spoor_core::timestamp::format_rfc3339_ms;
use spoor_relay::{ClickHouseConfig, RelayConfig};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::NatsServer;
use std::time::Duration;

use spoor_store::date::{date_string, event_date};
use spoor_store::schema;

use crate::device_table::{ch_config, device_event, insert};
use crate::e2e::{send, uuid};
use crate::relay::query as query_text;
use crate::support::{eventually, now_ms, Relay};

const WRITE_KEY: &str = "wk_identity";
const PROJECT: &str = "identity";
const MIN: i64 = 60_000;

fn relay_config(nats: &NatsServer, ch: &ClickHouseServer, db: &str) -> RelayConfig {
    crate::support::project_relay_config(nats, ch, db, PROJECT)
}

/// Rows of `sql` (JSONEachRow), each as JSON.
fn query(ch: &ClickHouseServer, sql: &str) -> Vec<Value> {
    let text = tokio::task::block_in_place(|| ch.query(sql).unwrap());
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each event of `page` as (device, user, event name).
fn device_user_event(page: &TimelinePage) -> Vec<(&str, &str, &str)> {
    page.events
        .iter()
        .map(|e| {
            (
                e.anonymous_id.as_str(),
                e.user_id.as_str(),
                e.event.as_str(),
            )
        })
        .collect()
}

fn count(ch: &ClickHouseServer, db: &str, table: &str) -> u64 {
    let rows = query(
        ch,
        &format!("SELECT count() AS n FROM {db}.{table} FORMAT JSONEachRow"),
    );
    rows[0]["n"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_alias_and_group_fill_the_identity_tables_and_stitch_the_user_timeline() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("identity");
    let relay = Relay::start(relay_config(&nats, ch, &db)).await;
    let edge = Edge::start(
        &EdgeConfig::for_nats(&nats)
            .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
            .var("REGION", "id")
            .var("PARTITIONS", "4"),
    )
    .unwrap();
    let url = |path: &str| format!("{}{path}", edge.url());
    let now = now_ms();
    let at = |minutes_ago: i64| now - minutes_ago * MIN;
    let spoor = |batch: Value| {
        let a = send(
            "POST",
            &url("/v1/batch"),
            &[
                ("Content-Type", "application/json"),
                ("X-Spoor-Write-Key", WRITE_KEY),
            ],
            Some(json!({ "batch": batch }).to_string().as_bytes()),
        );
        assert_eq!(a.status, 202, "{}", a.body);
        assert_eq!(
            a.json()["accepted"],
            batch.as_array().unwrap().len(),
            "{}",
            a.body
        );
    };
    let segment = |batch: Value| {
        let a = send(
            "POST",
            &url("/v1/batch"),
            &[("Content-Type", "text/plain")],
            Some(
                json!({ "writeKey": WRITE_KEY, "batch": batch })
                    .to_string()
                    .as_bytes(),
            ),
        );
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            a.json()["accepted"],
            batch.as_array().unwrap().len(),
            "{}",
            a.body
        );
    };
    // A context with keys of the same names as the fields the views read.
    let decoy = json!({"traits": {"plan": "context"}, "groupId": "ctx-group",
                       "previousId": "ctx-previous",
                       "library": {"name": "analytics.js", "version": "1.70.0"}});

    // Spoor's web SDK: device a-web browses anonymously, then identifies
    // twice (traits as properties), then an alias moves it to a new id.
    spoor(json!([
        {"event": "page_view", "event_id": uuid(), "anonymous_id": "a-web",
         "timestamp": at(50), "properties": {"path": "/pricing"}},
        {"event": "click", "event_id": uuid(), "anonymous_id": "a-web",
         "timestamp": at(49), "properties": {}},
        {"event": "identify", "event_id": uuid(), "anonymous_id": "a-web",
         "user_id": "u-web", "timestamp": at(40), "properties": {"plan": "free"}},
        {"event": "identify", "event_id": uuid(), "anonymous_id": "a-web",
         "user_id": "u-web", "timestamp": at(30),
         "properties": {"plan": "pro", "email": "web@example.com"}},
        {"event": "identify", "event_id": uuid(), "anonymous_id": "a-web",
         "user_id": "u-web", "timestamp": at(25)},
        {"event": "alias", "event_id": uuid(), "anonymous_id": "a-web",
         "user_id": "u-web-2", "timestamp": at(5),
         "properties": {"previous_id": "u-web"}},
        // A device nobody linked.
        {"event": "page_view", "event_id": uuid(), "anonymous_id": "a-stranger",
         "timestamp": at(48), "properties": {}},
        // An earlier anonymous device of the Segment user, aliased below.
        {"event": "page_view", "event_id": uuid(), "anonymous_id": "a-old",
         "timestamp": at(55), "properties": {"path": "/old"}},
    ]));

    // Segment: anonymous browsing, two identifies with different traits,
    // one without, an alias of the old device, two groups.
    let ts = |minutes_ago: i64| format_rfc3339_ms(at(minutes_ago));
    segment(json!([
        {"type": "track", "event": "Viewed", "anonymousId": "a-seg", "messageId": uuid(),
         "timestamp": ts(45), "context": decoy},
        {"type": "identify", "anonymousId": "a-seg", "userId": "u-seg", "messageId": uuid(),
         "timestamp": ts(40), "context": decoy,
         "traits": {"plan": "free", "email": "seg@example.com"}},
        {"type": "identify", "anonymousId": "a-seg", "userId": "u-seg", "messageId": uuid(),
         "timestamp": ts(20), "context": decoy,
         "traits": {"plan": "pro", "groupId": "in-traits"}},
        {"type": "identify", "anonymousId": "a-seg", "userId": "u-seg", "messageId": uuid(),
         "timestamp": ts(10), "context": decoy},
        {"type": "alias", "userId": "u-seg", "previousId": "a-old", "messageId": uuid(),
         "timestamp": ts(15), "context": decoy},
        {"type": "group", "userId": "u-seg", "groupId": "org-1", "messageId": uuid(),
         "timestamp": ts(30), "context": decoy, "traits": {"name": "Acme"}},
        {"type": "group", "userId": "u-seg", "groupId": "org-1", "messageId": uuid(),
         "timestamp": ts(20), "context": decoy,
         "traits": {"name": "Acme Inc", "employees": 10}},
        {"type": "group", "userId": "u-seg", "groupId": 42, "messageId": uuid(),
         "timestamp": ts(12), "traits": {"name": "Forty-two"}},
    ]));

    eventually("16 events stored", || async {
        (count(ch, &db, "events") == 16).then_some(())
    })
    .await;

    let links = || -> BTreeSet<(String, String, i64, i64)> {
        query(
            ch,
            &format!(
                "SELECT user_id, anonymous_id, toString(minMerge(first_seen_ms)) AS first, \
             toString(maxMerge(last_seen_ms)) AS last FROM {db}.identity_links \
             WHERE project_id = '{PROJECT}' GROUP BY user_id, anonymous_id FORMAT JSONEachRow"
            ),
        )
        .into_iter()
        .map(|r| {
            let ms = |k: &str| r[k].as_str().unwrap().parse::<i64>().unwrap();
            (
                r["user_id"].as_str().unwrap().to_string(),
                r["anonymous_id"].as_str().unwrap().to_string(),
                ms("first"),
                ms("last"),
            )
        })
        .collect()
    };
    let want: BTreeSet<(String, String, i64, i64)> = [
        ("u-web", "a-web", at(40), at(25)),
        ("u-web-2", "a-web", at(5), at(5)),
        ("u-web-2", "u-web", at(5), at(5)),
        ("u-seg", "a-seg", at(40), at(10)),
        ("u-seg", "a-old", at(15), at(15)),
    ]
    .into_iter()
    .map(|(u, a, f, l)| (u.to_string(), a.to_string(), f, l))
    .collect();

    let traits = |table: &str, key: &str| -> Vec<(String, Value, i64)> {
        query(
            ch,
            &format!(
                "SELECT {key} AS id, argMaxMerge(traits) AS traits, \
                 toString(maxMerge(updated_ms)) AS updated FROM {db}.{table} \
                 WHERE project_id = '{PROJECT}' GROUP BY {key} ORDER BY {key} \
                 FORMAT JSONEachRow"
            ),
        )
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                serde_json::from_str(r["traits"].as_str().unwrap()).unwrap(),
                r["updated"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
    };
    let want_users = vec![
        (
            "u-seg".to_string(),
            json!({"plan": "pro", "groupId": "in-traits"}),
            at(20),
        ),
        (
            "u-web".to_string(),
            json!({"plan": "pro", "email": "web@example.com"}),
            at(30),
        ),
    ];
    let want_groups = vec![
        ("42".to_string(), json!({"name": "Forty-two"}), at(12)),
        (
            "org-1".to_string(),
            json!({"name": "Acme Inc", "employees": 10}),
            at(20),
        ),
    ];
    // A view's rows land just after the insert's rows in `events`: wait for
    // the answers a little, then compare (the diff is the failure message).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && (count(ch, &db, "events_by_device") != 16
            || links() != want
            || traits("user_traits", "user_id") != want_users
            || traits("group_traits", "group_id") != want_groups)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(links(), want);
    assert_eq!(traits("user_traits", "user_id"), want_users);
    assert_eq!(traits("group_traits", "group_id"), want_groups);

    // The user timelines over a window that ends before each login: the
    // device rows of that window carry no user id, so only the links find
    // them.
    let client = ClickHouseConfig {
        url: ch.http_url(),
        database: db.clone(),
        user: None,
        password: None,
    }
    .client();
    let timeline = |user: &str| TimelineRequest {
        project_id: PROJECT.into(),
        user_id: Some(user.into()),
        since_ms: Some(at(60)),
        until_ms: Some(at(44)),
        ..TimelineRequest::default()
    };
    let seen = |page: spoor_aggregator::store::timeline::TimelinePage| -> Vec<(String, String)> {
        page.events
            .into_iter()
            .map(|e| (e.anonymous_id, e.event))
            .collect()
    };
    let page = run_timeline(&client, &timeline("u-seg"), now)
        .await
        .unwrap();
    assert_eq!(
        seen(page),
        [("a-old", "page_view"), ("a-seg", "Viewed")].map(|(a, e)| (a.to_string(), e.to_string()))
    );
    let page = run_timeline(&client, &timeline("u-web"), now)
        .await
        .unwrap();
    assert_eq!(
        seen(page),
        [("a-web", "page_view"), ("a-web", "click")].map(|(a, e)| (a.to_string(), e.to_string()))
    );
    // The new id reaches the same device's anonymous events through the alias.
    let page = run_timeline(&client, &timeline("u-web-2"), now)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2, "{:?}", page.events);

    relay.shutdown().await;
}

/// An existing deployment (the schema before `004_identity.sql`, with
/// events stored) takes the identity schema at the next migration: the
/// views then feed the tables from the inserts after it, and the backfill
/// of deploy/README.md (each view's SELECT over an older day, run twice)
/// fills in the earlier days without changing an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_schema_applies_to_an_existing_deployment() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("identity_upgrade");
    let cfg = ch_config(ch, &db);
    let client = cfg.client();
    // Every file but the identity schema: the rows below are today's
    // (`EventRow`), which need the campaign columns of `005_campaign.sql`,
    // and those have nothing to do with identity.
    let (old, new): (Vec<_>, Vec<_>) = schema::SCHEMA_FILES
        .iter()
        .partition(|(file, _)| *file != "004_identity.sql");
    assert_eq!(new.len(), 1);
    for (_, sql) in old {
        for statement in schema::split_statements(sql) {
            client.query(&statement).execute().await.unwrap();
        }
    }
    let day = 86_400_000;
    let t0 = (now_ms() / day - 2) * day + 3_600_000;
    let identify = |n: u128, user: &str, ts: i64, plan: &str| {
        let mut e = device_event(n, "dev-up", user, ts);
        e.event = "identify".into();
        e.properties = format!(r#"{{"plan":"{plan}"}}"#);
        e
    };
    insert(&cfg, vec![identify(1, "u-up", t0, "old")]).await;

    schema::apply(&cfg).await.unwrap();
    insert(&cfg, vec![identify(2, "u-up", t0 + day, "new")]).await;
    let links = || async {
        query_text(
            ch,
            format!(
                "SELECT user_id, anonymous_id, minMerge(first_seen_ms), maxMerge(last_seen_ms) \
                 FROM {db}.identity_links GROUP BY user_id, anonymous_id"
            ),
        )
        .await
    };
    assert_eq!(
        links().await,
        format!("u-up\tdev-up\t{}\t{}\n", t0 + day, t0 + day)
    );

    // The backfill: the view's own SELECT over the day before the upgrade.
    let view = schema::split_statements(new[0].1)
        .into_iter()
        .find(|s| s.starts_with("CREATE MATERIALIZED VIEW IF NOT EXISTS identity_links_mv"))
        .unwrap();
    let select = &view[view.find("SELECT").unwrap()..];
    let backfill = format!(
        "INSERT INTO identity_links {}",
        select.replacen(
            "WHERE ",
            &format!(
                "WHERE event_date = toDate('{}') AND ",
                date_string(event_date(t0))
            ),
            1
        )
    );
    for _ in 0..2 {
        client.query(&backfill).execute().await.unwrap();
    }
    assert_eq!(
        links().await,
        format!("u-up\tdev-up\t{}\t{}\n", t0, t0 + day)
    );
}

/// A device's timeline follows the identity links the other way: it names
/// the users the device is linked to (by identify or alias in
/// `identity_links`, or by its own events carrying a `user_id`), with first
/// and last seen, and its anonymous events resolve to that user only when
/// there is exactly one. Over a window that ends before every login, so the
/// events themselves say nothing of their users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_timeline_names_its_users_and_resolves_only_a_single_one() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_links");
    let cfg = ch_config(ch, &db);
    schema::apply(&cfg).await.unwrap();
    let now = now_ms();
    let at = |minutes_ago: i64| now - minutes_ago * MIN;
    let mut n = 0u128;
    let mut ev = |device: &str, user: &str, name: &str, ts: i64, properties: &str| {
        n += 1;
        let mut e = device_event(n, device, user, ts);
        e.event = name.into();
        e.properties = properties.into();
        e
    };
    let events = vec![
        // d-one: anonymous in the window, identified as u-one after it.
        ev("d-one", "", "page_view", at(50), "{}"),
        ev("d-one", "", "click", at(45), "{}"),
        ev("d-one", "u-one", "identify", at(10), "{}"),
        // d-shared: anonymous in the window; u-a and u-b identify later.
        ev("d-shared", "", "page_view", at(50), "{}"),
        ev("d-shared", "u-a", "identify", at(20), "{}"),
        ev("d-shared", "u-b", "identify", at(15), "{}"),
        ev("d-shared", "u-b", "click", at(14), "{}"),
        // d-login: signs in without an identify (its events carry the id).
        ev("d-login", "", "page_view", at(40), "{}"),
        ev("d-login", "u-login", "purchase", at(5), "{}"),
        // d-alias: never signs in; another device's alias names it.
        ev("d-alias", "", "page_view", at(35), "{}"),
        ev(
            "d-other",
            "u-alias",
            "alias",
            at(8),
            r#"{"previous_id":"d-alias"}"#,
        ),
        // d-none: anonymous only.
        ev("d-none", "", "page_view", at(33), "{}"),
        // u-one's phone: signed in within the window, and anonymous; u-b
        // signed in on it too.
        ev("d-phone", "u-one", "purchase", at(40), "{}"),
        ev("d-phone", "", "page_view", at(41), "{}"),
        ev("d-phone", "u-b", "click", at(38), "{}"),
    ];
    insert(&cfg, events).await;
    // `insert` stores them as the fixtures' project.
    let project = spoor_tests::fixtures::batch("b", vec![]).project_id;

    let client = cfg.client();
    let device = |id: &str| TimelineRequest {
        project_id: project.clone(),
        anonymous_id: Some(id.into()),
        since_ms: Some(at(60)),
        until_ms: Some(at(30)),
        ..TimelineRequest::default()
    };
    type Users = Vec<(String, i64, i64, bool, bool)>;
    let answer =
        |page: &spoor_aggregator::store::timeline::TimelinePage| -> (Users, Vec<Option<String>>) {
            let users = page
                .linked_users
                .as_ref()
                .expect("a device's answer lists its users")
                .iter()
                .map(|u| {
                    (
                        u.user_id.clone(),
                        u.first_seen_ms,
                        u.last_seen_ms,
                        u.identified,
                        u.seen_signed_in,
                    )
                })
                .collect();
            let resolved = page
                .events
                .iter()
                .map(|e| e.resolved_user_id.clone())
                .collect();
            (users, resolved)
        };
    let one = Some("u-one".to_string());

    let page = run_timeline(&client, &device("d-one"), now).await.unwrap();
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.linked_users_truncated, Some(false));
    assert_eq!(
        answer(&page),
        (
            vec![("u-one".into(), at(10), at(10), true, true)],
            vec![one.clone(), one]
        )
    );
    // A shared device: both users, first seen first; nothing resolved.
    let page = run_timeline(&client, &device("d-shared"), now)
        .await
        .unwrap();
    assert_eq!(
        answer(&page),
        (
            vec![
                ("u-a".into(), at(20), at(20), true, true),
                ("u-b".into(), at(15), at(14), true, true)
            ],
            vec![None]
        )
    );
    // Linked by its own signed-in events only (device_users' pairs).
    let page = run_timeline(&client, &device("d-login"), now)
        .await
        .unwrap();
    assert_eq!(
        answer(&page),
        (
            vec![("u-login".into(), at(5), at(5), false, true)],
            vec![Some("u-login".into())]
        )
    );
    // Linked by identity_links only (an alias sent from another device).
    let page = run_timeline(&client, &device("d-alias"), now)
        .await
        .unwrap();
    assert_eq!(
        answer(&page),
        (
            vec![("u-alias".into(), at(8), at(8), true, false)],
            vec![Some("u-alias".into())]
        )
    );
    let page = run_timeline(&client, &device("d-none"), now).await.unwrap();
    assert_eq!(answer(&page), (vec![], vec![None]));
    // What the HTTP answer says: the field is left out when unresolved.
    let json = serde_json::to_value(&page).unwrap();
    assert_eq!(json["linked_users"], json!([]));
    assert_eq!(json["events"][0].get("resolved_user_id"), None);
    // A user's timeline has no linked users.
    let user = TimelineRequest {
        project_id: project.clone(),
        user_id: Some("u-one".into()),
        since_ms: Some(at(60)),
        until_ms: Some(at(30)),
        ..TimelineRequest::default()
    };
    let page = run_timeline(&client, &user, now).await.unwrap();
    let seen: Vec<(&str, &str)> = page
        .events
        .iter()
        .map(|e| (e.anonymous_id.as_str(), e.event.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("d-one", "page_view"),
            ("d-one", "click"),
            ("d-phone", "page_view"),
            ("d-phone", "purchase")
        ],
        "d-one's events through the link, and the phone's"
    );
    assert_eq!(page.linked_users, None);

    // with_linked_users: d-one's events, and u-one's signed-in events on
    // the devices they used in the window (not the phone's anonymous
    // event, nor u-b's event on it).
    let mut wide = device("d-one");
    wide.with_linked_users = true;
    let page = run_timeline(&client, &wide, now).await.unwrap();
    let seen = device_user_event(&page);
    assert_eq!(
        seen,
        [
            ("d-one", "", "page_view"),
            ("d-one", "", "click"),
            ("d-phone", "u-one", "purchase")
        ]
    );
    assert_eq!(
        page.events
            .iter()
            .map(|e| e.resolved_user_id.as_deref())
            .collect::<Vec<_>>(),
        [Some("u-one"), Some("u-one"), None]
    );
    // On the shared device: both users' signed-in events elsewhere (u-b's
    // on the phone), each with its own user id; still nothing resolved.
    let mut wide = device("d-shared");
    wide.with_linked_users = true;
    let page = run_timeline(&client, &wide, now).await.unwrap();
    let seen = device_user_event(&page);
    assert_eq!(
        seen,
        [("d-shared", "", "page_view"), ("d-phone", "u-b", "click")]
    );
    assert!(page.events.iter().all(|e| e.resolved_user_id.is_none()));
    // Without links, the flag adds nothing.
    let mut wide = device("d-none");
    wide.with_linked_users = true;
    let page = run_timeline(&client, &wide, now).await.unwrap();
    assert_eq!(page.events.len(), 1);
}
