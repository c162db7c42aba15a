use bytes::Bytes;
use spoor_core::{Context, Device, Event, Geo, WireBatch};
use uuid::Uuid;

use super::{body, EncodedFrame, EncodedRow, Rebuilder};
use crate::sink::clickhouse::EventRow;

fn batch(id: &str, first: u128, n: u128) -> WireBatch {
    WireBatch {
        batch_id: id.into(),
        project_id: "shop".into(),
        region: "eu".into(),
        received_at_ms: 1_764_000_000_000,
        sent_at_ms: None,
        geo: Geo::default(),
        device: Device::default(),
        ip_prefix: String::new(),
        events: (first..first + n)
            .map(|i| Event {
                event_id: Uuid::from_u128(i),
                event_id_derived: false,
                event: "page_view".into(),
                user_id: format!("user-{i}"),
                anonymous_id: if i % 2 == 0 {
                    format!("dev-{i}")
                } else {
                    String::new()
                },
                session_id: "s".into(),
                client_ts_ms: None,
                ts_ms: 1_764_000_000_000 + i as i64,
                properties: format!("{{\"i\":{i}}}"),
                context: Context::default(),
            })
            .collect(),
    }
}

/// A message of `batches` (a bundle when more than one), encoded as a
/// puller encodes it.
fn pulled(batches: &[WireBatch]) -> Vec<EncodedRow> {
    let frames: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| spoor_core::encode_batch(b).unwrap())
        .collect();
    let payload = Bytes::from(match frames.as_slice() {
        [one] => one.clone(),
        _ => spoor_core::codec::encode_bundle(&frames),
    });
    let decoded = spoor_core::decode_message(&payload, 1 << 20).unwrap();
    decoded
        .iter()
        .enumerate()
        .flat_map(|(i, b)| EncodedFrame::encode(&payload, i, b))
        .collect()
}

/// The uncompressed bytes of a body of ClickHouse compressed blocks.
fn decompress(chunks: &[Bytes]) -> Vec<u8> {
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut rest = &all[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert_eq!(rest[16], 0x82, "an LZ4 block");
        let compressed = u32::from_le_bytes(rest[17..21].try_into().unwrap()) as usize;
        let raw = u32::from_le_bytes(rest[21..25].try_into().unwrap()) as usize;
        let data = &rest[25..16 + compressed];
        out.extend(lz4_flex::block::decompress(data, raw).unwrap());
        rest = &rest[16 + compressed..];
    }
    out
}

fn concat<'a>(rows: impl IntoIterator<Item = &'a EncodedRow>) -> Vec<u8> {
    rows.into_iter().flat_map(|r| r.bytes().to_vec()).collect()
}

#[test]
fn whole_frames_go_in_as_their_blocks() {
    let rows = pulled(&[batch("a", 0, 5), batch("b", 5, 3)]);
    let chunks = body(&rows);
    let blocks: Vec<u8> = [&rows[0], &rows[5]]
        .iter()
        .flat_map(|r| r.frame().block.to_vec())
        .collect();
    assert_eq!(chunks.concat(), blocks);
    assert_eq!(decompress(&chunks), concat(&rows));
}

#[test]
fn thinned_frames_are_compressed_anew_with_exactly_their_rows() {
    let rows = pulled(&[batch("a", 0, 5), batch("b", 5, 3)]);
    // Frame a without its third row; frame b whole but out of order.
    let kept: Vec<&EncodedRow> = [0, 1, 3, 4, 7, 5, 6].iter().map(|&i| &rows[i]).collect();
    let chunks = body(kept.iter().copied());
    assert_eq!(decompress(&chunks), concat(kept.iter().copied()));
    assert!(body(std::iter::empty()).is_empty());
}

#[test]
fn rows_know_their_keys_sizes_and_values() {
    let batches = [batch("a", 0, 4), batch("b", 4, 2)];
    let rows = pulled(&batches);
    let want: Vec<EventRow> = batches
        .iter()
        .flat_map(|b| b.events.iter().map(|e| EventRow::new(b, e.clone())))
        .collect();
    assert_eq!(rows.len(), want.len());
    for (row, want) in rows.iter().zip(&want) {
        assert_eq!(Rebuilder::default().event_row(row).as_ref(), Some(want));
        assert_eq!(row.event_id, want.event_id);
        assert_eq!(row.event_date, want.event_date);
        assert_eq!(&**row.project_id(), "shop");
        assert_eq!(&*row.frame().batch_id, &*want.batch_id);
        let key = if want.anonymous_id.is_empty() {
            &want.user_id
        } else {
            &want.anonymous_id
        };
        assert_eq!(row.device_key(), key);
        assert_eq!(row.size(), row.bytes().len());
    }
}

#[test]
fn one_rebuilder_gives_every_rows_values_across_frames() {
    let batches = [batch("a", 0, 3), batch("b", 3, 3)];
    let rows = pulled(&batches);
    let mut rebuild = Rebuilder::default();
    // Out of order, across both frames of the bundle.
    for i in [4, 0, 5, 2, 3, 1] {
        let want = if i < 3 {
            EventRow::new(&batches[0], batches[0].events[i].clone())
        } else {
            EventRow::new(&batches[1], batches[1].events[i - 3].clone())
        };
        assert_eq!(rebuild.event_row(&rows[i]), Some(want));
    }
}
