use spoor_core::{Campaign, Context, Device, Event, Geo, WireBatch};
use uuid::Uuid;

use super::{compress_block, rows_size, write_event};
use crate::EventRow;

/// Events covering every column's shapes: empty and long strings (a
/// length of two LEB128 bytes), multi-byte text, both nullables set and
/// unset, extreme integers and a date clamped at the table's range.
fn samples() -> (WireBatch, Vec<Event>) {
    let batch = WireBatch {
        batch_id: "b-1".into(),
        project_id: "shop".into(),
        region: "eu".into(),
        received_at_ms: 1_764_000_000_123,
        sent_at_ms: Some(1_764_000_000_100),
        geo: Geo {
            country: "DE".into(),
            region: "BE".into(),
            city: "Berlin".into(),
            timezone: "Europe/Berlin".into(),
            continent: "EU".into(),
            colo: "FRA".into(),
            asn: u32::MAX,
        },
        device: Device {
            browser: "Firefox".into(),
            browser_version: "133.0".into(),
            os: "Linux".into(),
            os_version: String::new(),
            device_type: "desktop".into(),
            is_bot: true,
        },
        ip_prefix: "203.0.113.0/24".into(),
        events: Vec::new(),
    };
    let full = Event {
        event_id: Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        event_id_derived: true,
        event: "purchase".into(),
        user_id: "u-ü-42".into(),
        anonymous_id: "dev-1".into(),
        session_id: "s".into(),
        client_ts_ms: Some(-5),
        ts_ms: 1_764_000_000_000,
        properties: format!("{{\"note\":\"{}\"}}", "x".repeat(300)),
        context: Context {
            page_url: "https://shop.example/c?utm_source=n".into(),
            page_path: "/c".into(),
            page_referrer: "https://search.example/".into(),
            page_title: "Checkout — Shop".into(),
            app_name: "web".into(),
            app_version: "1.2.3".into(),
            library_name: "spoor-web".into(),
            library_version: "0.1.0".into(),
            locale: "de-DE".into(),
            screen_width: 1920,
            screen_height: u32::MAX,
            campaign: Campaign {
                source: "newsletter".into(),
                medium: "email".into(),
                name: "winter".into(),
                term: "boots".into(),
                content: "a".repeat(128),
            },
        },
    };
    let bare = Event {
        event_id: Uuid::nil(),
        event_id_derived: false,
        event: "page_view".into(),
        user_id: "only-user".into(),
        anonymous_id: String::new(),
        session_id: String::new(),
        client_ts_ms: None,
        // Before 1970: the date and time clamp to 0.
        ts_ms: -1,
        properties: "{}".into(),
        context: Context::default(),
    };
    (batch, vec![full, bare])
}

#[tokio::test]
async fn rows_read_back_through_the_crates_own_rowbinary_reader() {
    let (batch, events) = samples();
    let mut body = Vec::new();
    let mut keys = Vec::new();
    for event in &events {
        let written = write_event(&batch, event, &mut body);
        keys.push(
            std::str::from_utf8(&body[written.device_key])
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(keys, ["dev-1", "only-user"]);

    let mock = clickhouse::test::Mock::new();
    let recorded = mock.add(clickhouse::test::handlers::record::<EventRow>());
    let client = clickhouse::Client::default()
        .with_compression(clickhouse::Compression::None)
        .with_mock(&mock);
    let mut insert = client.insert_formatted_with("INSERT INTO events FORMAT RowBinary");
    insert.send(body.into()).await.unwrap();
    insert.end().await.unwrap();
    let read: Vec<EventRow> = recorded.collect().await;

    let want: Vec<EventRow> = events
        .into_iter()
        .map(|e| EventRow::new(&batch, e))
        .collect();
    assert_eq!(read, want);
}

#[test]
fn the_row_range_covers_exactly_the_row() {
    let (batch, events) = samples();
    let mut body = vec![0xaa; 3];
    let first = write_event(&batch, &events[0], &mut body);
    let second = write_event(&batch, &events[1], &mut body);
    assert_eq!(first.row.start, 3);
    assert_eq!(first.row.end, second.row.start);
    assert_eq!(second.row.end, body.len());
}

#[test]
fn blocks_are_byte_for_byte_the_crates_own() {
    let (batch, events) = samples();
    let mut rows = Vec::new();
    for event in &events {
        write_event(&batch, event, &mut rows);
    }
    for data in [&b""[..], b"x", &rows, &vec![7u8; 200_000]] {
        let mut out = vec![1, 2, 3];
        compress_block(data, &mut out);
        let crates = clickhouse::_priv::lz4_compress(data).unwrap();
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(&out[3..], &crates[..], "{} bytes in", data.len());
    }
}

#[test]
fn the_counted_size_is_the_written_size_and_grows_with_request_fields() {
    let (mut batch, events) = samples();
    let mut rows = Vec::new();
    for event in &events {
        write_event(&batch, event, &mut rows);
    }
    batch.events = events;
    assert_eq!(rows_size(&batch), rows.len());
    // A long request field counts once per row, with its longer length
    // prefix (two LEB128 bytes from 128 on).
    let before = rows.len();
    let grown = 10_000 - batch.geo.city.len() + 1;
    batch.geo.city = "x".repeat(10_000);
    assert_eq!(rows_size(&batch), before + 2 * grown);
    let mut rows = Vec::new();
    for event in &batch.events {
        write_event(&batch, event, &mut rows);
    }
    assert_eq!(rows_size(&batch), rows.len());
    // Length prefixes at their boundaries.
    for len in [0, 1, 127, 128, 16_383, 16_384, 2_097_152] {
        batch.geo.city = "y".repeat(len);
        let mut rows = Vec::new();
        for event in &batch.events {
            write_event(&batch, event, &mut rows);
        }
        assert_eq!(rows_size(&batch), rows.len(), "a {len}-byte field");
    }
}
