//! The campaign columns (`utm_*`, `deploy/clickhouse/005_campaign.sql`) on
//! the real parts.
//!
//! - Spoor's own events through the edge's WASM build in workerd →
//!   nats-server → spoor-relay → clickhouse-server (18.16): an event whose
//!   page URL carries `utm_*` parameters stores them (what every event of
//!   the web SDK on a campaign page does), an event's own
//!   `context.campaign` wins over its URL, and an event with neither
//!   stores ''. (Segment's `context.campaign` is in `segment::`.)
//! - The migration on an existing deployment: the schema before
//!   `005_campaign.sql` with a row stored the way an older relay wrote it,
//!   then `schema::apply` twice (as two relay starts do): the columns are
//!   there once, after `batch_id` and before `inserted_at`, the old row
//!   reads '', a row inserted after it keeps its campaign, and the views on
//!   `events` still fire.

use serde_json::json;
use spoor_relay::RelayConfig;
use spoor_store::schema;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::NatsServer;

use crate::device_table::{ch_config, device_event, insert, rows_in};
use crate::e2e::{send, uuid};
use crate::relay::query;
use crate::support::{eventually, now_ms, Relay};

const WRITE_KEY: &str = "wk_campaign";
const PROJECT: &str = "campaign";

fn relay_config(nats: &NatsServer, ch: &ClickHouseServer, db: &str) -> RelayConfig {
    crate::support::project_relay_config(nats, ch, db, PROJECT)
}

const UTM: &str = "utm_source, utm_medium, utm_campaign, utm_term, utm_content";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoor_events_store_their_campaign_or_their_page_urls() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("campaign");
    let relay = Relay::start(relay_config(&nats, ch, &db)).await;
    let edge = Edge::start(
        &EdgeConfig::for_nats(&nats)
            .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
            .var("REGION", "utm")
            .var("PARTITIONS", "4"),
    )
    .unwrap();

    let url = "https://shop.example/sale?ref=x&utm_source=newsletter&utm_medium=email\
               &utm_campaign=winter+sale&utm_term=boots%20%26%20shoes&utm_content=hero#top";
    let (from_url, own, none) = (uuid(), uuid(), uuid());
    let body = json!({"batch": [
        {"event": "page_view", "event_id": from_url, "anonymous_id": "d-utm",
         "context": {"page": {"url": url, "path": "/sale"}}},
        {"event": "signup", "event_id": own, "anonymous_id": "d-utm",
         "context": {"page": {"url": url},
                     "campaign": {"source": "ads", "medium": "cpc", "name": "spring"}}},
        {"event": "page_view", "event_id": none, "anonymous_id": "d-utm",
         "context": {"page": {"url": "https://shop.example/?q=utm_source"}}}
    ]});
    let a = send(
        "POST",
        &format!("{}/v1/batch", edge.url()),
        &[
            ("Content-Type", "application/json"),
            ("X-Spoor-Write-Key", WRITE_KEY),
        ],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.json()["accepted"], 3, "{}", a.body);

    let stored = eventually("3 events stored", || async {
        let text = query(
            ch,
            format!(
                "SELECT toString(event_id), {UTM} FROM {db}.events \
                 WHERE project_id = '{PROJECT}' ORDER BY event_id FORMAT TabSeparated"
            ),
        )
        .await;
        (text.lines().count() == 3).then_some(text)
    })
    .await;
    let row = |id: &str| -> Vec<String> {
        let line = stored
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not in {stored}"));
        line.split('\t').skip(1).map(str::to_string).collect()
    };
    assert_eq!(
        row(&from_url),
        [
            "newsletter",
            "email",
            "winter sale",
            "boots & shoes",
            "hero"
        ],
        "the page URL's utm_ parameters"
    );
    assert_eq!(
        row(&own),
        ["ads", "cpc", "spring", "", ""],
        "the event's own campaign, not its URL's"
    );
    assert_eq!(row(&none), ["", "", "", "", ""], "no campaign");

    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_campaign_columns_apply_to_an_existing_deployment() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("campaign_upgrade");
    let cfg = ch_config(ch, &db);
    let client = cfg.client();
    let (old, new): (Vec<&(&str, &str)>, Vec<_>) = schema::SCHEMA_FILES
        .iter()
        .partition(|(file, _)| *file < "005_campaign.sql");
    assert_eq!(new[0].0, "005_campaign.sql");
    for (_, sql) in old {
        for statement in schema::split_statements(sql) {
            client.query(&statement).execute().await.unwrap();
        }
    }
    // A row as an older relay wrote it: no campaign columns to name.
    let day = 86_400_000;
    let ts = (now_ms() / day - 1) * day + 3_600_000;
    let old_id = "0190a1b2-c3d4-7e5f-8a9b-000000000001";
    query(
        ch,
        format!(
            "INSERT INTO {db}.events (project_id, event_date, event_time, ts_ms, event_id, event, \
             anonymous_id, received_at_ms, properties, batch_id) VALUES ('{PROJECT}', \
             toDate(toDateTime(intDiv({ts}, 1000)), 'UTC'), toDateTime(intDiv({ts}, 1000)), \
             {ts}, toUUID('{old_id}'), 'old', 'd-old', {ts}, '{{}}', 'b-old')"
        ),
    )
    .await;

    // Two relay starts: the second finds the columns and adds nothing.
    for _ in 0..2 {
        schema::apply(&cfg).await.unwrap();
    }
    let columns = query(
        ch,
        format!("SELECT name FROM system.columns WHERE database = '{db}' AND table = 'events'"),
    )
    .await;
    let columns: Vec<&str> = columns.lines().collect();
    let at = columns.iter().position(|c| *c == "batch_id").unwrap();
    assert_eq!(
        columns[at..],
        [
            "batch_id",
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "utm_term",
            "utm_content",
            "inserted_at"
        ]
    );

    // Today's rows (the relay's sink, EventRow) after the upgrade.
    let mut e = device_event(2, "d-new", "", ts + 1);
    e.event = "new".into();
    e.context.campaign = spoor_core::Campaign {
        source: "newsletter".into(),
        medium: "email".into(),
        name: "winter".into(),
        term: "boots".into(),
        content: "hero".into(),
    };
    insert(&cfg, vec![e]).await;

    let rows = query(
        ch,
        format!("SELECT event, {UTM} FROM {db}.events ORDER BY event FORMAT TabSeparated"),
    )
    .await;
    assert_eq!(
        rows, "new\tnewsletter\temail\twinter\tboots\thero\nold\t\t\t\t\t\n",
        "the old row reads '', the new one its campaign"
    );
    // The device table's view fired for both inserts, before and after.
    assert_eq!(rows_in(ch, &db, "events_by_device").await, 2);
}
