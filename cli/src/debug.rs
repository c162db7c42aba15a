//! `spoor debug device`: one device's (or user's) recent events, with the
//! path each took, from every relay of the region; older events, or events
//! evicted from the rings, from the device-keyed ClickHouse table.
//!
//! The rings answer through the relays' NATS scatter-gather
//! (`spoor_runtime::debug::lookup`). When the window reaches further back
//! than every answering ring holds (or no relay answered) and a project and
//! ClickHouse are given, the rest of the window is read from
//! `events_by_device` (`spoor_store::device`), and those events are marked
//! as coming from ClickHouse (`relay = "clickhouse"`, stream position
//! unknown: 0). Both read the same window on the same clock, the edge's
//! receive time: `DeviceLookup::not_in_rings` says which part of it the
//! rings do not hold, and the table is asked for exactly that part.
//!
//! `follow` polls the lookup and reports each event once, and again when it
//! moves on (pending → inserted). Polling rather than a push stream keeps
//! the relays stateless towards the CLI, at the cost of up to one interval
//! of delay.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use spoor_core::debug::{DeviceEvent, DeviceLookup, DeviceQuery, EventPath, EventState};
use spoor_store::device::{self as ch_device, DeviceRow};
use uuid::Uuid;

use crate::connect::{self, ClickHouseOptions, NatsEndpoint, NatsUnreachable};

/// The relay id given to events read from ClickHouse.
pub const FROM_CLICKHOUSE: &str = "clickhouse";

/// One `spoor debug device` call.
#[derive(Debug, Clone)]
pub struct DebugOptions {
    /// NATS and the ops role's credentials.
    pub nats: NatsEndpoint,
    /// The events stream whose relays to ask.
    pub stream: String,
    pub query: DeviceQuery,
    /// How long to gather the relays' answers.
    pub timeout: Duration,
    /// Where to read events older than the rings (needs `query.project_id`).
    pub clickhouse: Option<ClickHouseOptions>,
}

/// The merged answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DebugResult {
    #[serde(flatten)]
    pub lookup: DeviceLookup,
    /// Events that came from ClickHouse rather than a ring.
    pub from_clickhouse: usize,
    /// Why ClickHouse was not asked or failed, if the rings did not cover
    /// the window.
    pub clickhouse_note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error(transparent)]
    Nats(#[from] NatsUnreachable),
    #[error(transparent)]
    Lookup(#[from] spoor_runtime::debug::LookupError),
}

/// Asks the rings and, where they fall short, ClickHouse.
pub async fn device(opts: &DebugOptions) -> Result<DebugResult, DebugError> {
    let client = connect::nats(&opts.nats).await?;
    device_with(&client, opts).await
}

/// [`device`] over an existing connection (what `follow` reuses).
pub async fn device_with(
    client: &async_nats::Client,
    opts: &DebugOptions,
) -> Result<DebugResult, DebugError> {
    let lookup =
        spoor_runtime::debug::lookup(client, &opts.stream, &opts.query, opts.timeout).await?;
    let mut result = DebugResult {
        lookup,
        from_clickhouse: 0,
        clickhouse_note: None,
    };
    let Some(rest) = result.lookup.not_in_rings() else {
        return Ok(result);
    };
    let (Some(ch), Some(_)) = (&opts.clickhouse, &rest.project_id) else {
        result.clickhouse_note = Some(
            "the rings do not cover the whole window; give --project and ClickHouse to read older events"
                .into(),
        );
        return Ok(result);
    };
    let client = ch_device::lookup_client(ch);
    match ch_device::device_events(&client, &rest, ch_device::DEFAULT_TIMEOUT).await {
        Ok(rows) => {
            result.from_clickhouse = add_older(&mut result.lookup, rows);
        }
        Err(e) => result.clickhouse_note = Some(format!("ClickHouse not read: {e}")),
    }
    Ok(result)
}

/// Adds ClickHouse rows the rings did not return; returns how many.
fn add_older(lookup: &mut DeviceLookup, rows: Vec<DeviceRow>) -> usize {
    let known: HashMap<Uuid, ()> = lookup.events.iter().map(|e| (e.event_id, ())).collect();
    let mut added = 0;
    for row in rows {
        if known.contains_key(&row.event_id) {
            continue;
        }
        lookup.events.push(from_row(row));
        added += 1;
    }
    lookup.events.sort_by_key(|e| (e.ts_ms, e.event_id));
    let limit = lookup.query.limit;
    if lookup.events.len() > limit {
        let extra = lookup.events.len() - limit;
        lookup.events.drain(..extra);
        lookup.truncated = true;
    }
    added
}

fn from_row(row: DeviceRow) -> DeviceEvent {
    DeviceEvent {
        event_id: row.event_id,
        event: row.event,
        project_id: row.project_id.to_string(),
        anonymous_id: row.anonymous_id,
        user_id: row.user_id,
        session_id: row.session_id,
        ts_ms: row.ts_ms,
        properties: row.properties,
        path: EventPath {
            client_ts_ms: row.client_ts_ms,
            edge_received_at_ms: row.received_at_ms,
            // Not kept in ClickHouse.
            stream_at_ms: 0,
            stream_seq: 0,
            relay_received_at_ms: None,
            state: EventState::Inserted {
                at_ms: Some(i64::from(row.inserted_at) * 1000),
            },
        },
        relay: FROM_CLICKHOUSE.to_string(),
    }
}

/// Polls the lookup every `interval`, sliding the window's end forward, and
/// calls `on_event` for each event not reported yet, or whose state moved
/// on, until `on_event` returns false.
pub async fn follow(
    opts: &DebugOptions,
    interval: Duration,
    mut on_event: impl FnMut(&DeviceEvent) -> bool,
) -> Result<(), DebugError> {
    let client = connect::nats(&opts.nats).await?;
    let mut reported: HashMap<Uuid, u8> = HashMap::new();
    let mut opts = opts.clone();
    let width = opts.query.until_ms - opts.query.since_ms;
    loop {
        let now = now_ms();
        opts.query.until_ms = now + 1;
        opts.query.since_ms = now + 1 - width;
        let result = device_with(&client, &opts).await?;
        for event in &result.lookup.events {
            let rank = event.path.state.rank();
            if reported.get(&event.event_id).is_some_and(|r| *r >= rank) {
                continue;
            }
            reported.insert(event.event_id, rank);
            if !on_event(event) {
                return Ok(());
            }
        }
        tokio::time::sleep(interval).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The header line of [`render_row`]'s table.
pub const TABLE_HEADER: &str =
    "EVENT TIME               EVENT            EVENT ID                              CLIENT   EDGE     RELAY    STATE";

/// One event as a table row; times after the event time are offsets from it.
pub fn render_row(e: &DeviceEvent) -> String {
    let rel = |t: Option<i64>| match t {
        Some(t) => format!("{:+}ms", t - e.ts_ms),
        None => "-".to_string(),
    };
    let state = match e.path.state {
        EventState::Pending => format!("pending at {}", e.relay),
        EventState::Inserted { at_ms: Some(t) } => {
            format!("inserted {:+}ms via {}", t - e.ts_ms, e.relay)
        }
        EventState::Inserted { at_ms: None } => format!("inserted (acked) via {}", e.relay),
    };
    format!(
        "{:<24} {:<16} {:<37} {:<8} {:<8} {:<8} {}",
        crate::window::format_time(
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.ts_ms) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        ),
        e.event,
        e.event_id,
        rel(e.path.client_ts_ms),
        rel(Some(e.path.edge_received_at_ms)),
        rel(e.path.relay_received_at_ms),
        state
    )
}

/// The whole answer as text: the events, then who answered and any frames
/// that could not be decoded on the device's partition.
pub fn render(result: &DebugResult) -> String {
    let l = &result.lookup;
    let mut o = String::new();
    let _ = writeln!(o, "{TABLE_HEADER}");
    for e in &l.events {
        let _ = writeln!(o, "{}", render_row(e));
    }
    let _ = writeln!(
        o,
        "{} event(s){}; relays answering: {}{}",
        l.events.len(),
        if l.truncated {
            " (the newest; more matched)"
        } else {
            ""
        },
        if l.relays.is_empty() {
            "none".to_string()
        } else {
            l.relays.join(", ")
        },
        if result.from_clickhouse > 0 {
            format!("; {} from ClickHouse", result.from_clickhouse)
        } else {
            String::new()
        }
    );
    for (relay, error) in &l.errors {
        let _ = writeln!(o, "relay {relay} failed: {error}");
    }
    for d in &l.dead_frames {
        let _ = writeln!(
            o,
            "dead-lettered frame on this device's partition (may hold its events): {} seq {} ({})",
            d.subject, d.stream_seq, d.reason
        );
    }
    if let Some(note) = &result.clickhouse_note {
        let _ = writeln!(o, "note: {note}");
    }
    o
}
