//! An `events` row written straight from a decoded event as RowBinary, and
//! ClickHouse's compressed-block framing: what the relay sends instead of
//! building an [`EventRow`] per event and having the `clickhouse` crate
//! serialise and compress it inside the insert.
//!
//! - [`write_event`] writes the bytes the crate writes for
//!   `EventRow::new(batch, event)`, column by column in the table's order
//!   (the tests below decode them with the crate's own RowBinary reader and
//!   compare). RowBinary: integers little-endian, a string as its LEB128
//!   length then its bytes, `Nullable` as a 1 (null) or 0 then the value,
//!   a `UUID` as its two 64-bit halves, high first.
//! - [`compress_block`] frames bytes as one block of ClickHouse's
//!   compressed HTTP body (`decompress=1`): a CityHash128 (v1.0.2)
//!   checksum, method byte `0x82` (LZ4), compressed and uncompressed sizes,
//!   then the LZ4 block. A body is any number of such blocks back to back,
//!   so blocks made apart (one per frame) can be sent together.
//!
//! Pure: no I/O, no allocation beyond the output buffer.

use std::ops::Range;

use spoor_core::{Event, WireBatch};

use crate::date::{event_date, event_time};
#[cfg(doc)]
use crate::EventRow;

/// Where [`write_event`] put a row, as offsets into the output buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The whole row.
    pub row: Range<usize>,
    /// The row's device key (its `anonymous_id`, or `user_id` when that is
    /// empty): the debug ring's key, read back without a copy.
    pub device_key: Range<usize>,
}

/// Appends `event`'s `events` row, with `batch`'s request-level columns,
/// to `out` as RowBinary: the bytes the `clickhouse` crate writes for
/// `EventRow::new(batch, event)`.
pub fn write_event(batch: &WireBatch, event: &Event, out: &mut Vec<u8>) -> Written {
    let start = out.len();
    let ctx = &event.context;
    let (geo, device) = (&batch.geo, &batch.device);
    string(out, &batch.project_id);
    out.extend_from_slice(&event_date(event.ts_ms).to_le_bytes());
    out.extend_from_slice(&event_time(event.ts_ms).to_le_bytes());
    out.extend_from_slice(&event.ts_ms.to_le_bytes());
    let (high, low) = event.event_id.as_u64_pair();
    out.extend_from_slice(&high.to_le_bytes());
    out.extend_from_slice(&low.to_le_bytes());
    out.push(u8::from(event.event_id_derived));
    string(out, &event.event);
    let user = string(out, &event.user_id);
    let anonymous = string(out, &event.anonymous_id);
    string(out, &event.session_id);
    nullable_i64(out, event.client_ts_ms);
    nullable_i64(out, batch.sent_at_ms);
    out.extend_from_slice(&batch.received_at_ms.to_le_bytes());
    string(out, &event.properties);
    string(out, &ctx.page_url);
    string(out, &ctx.page_path);
    string(out, &ctx.page_referrer);
    string(out, &ctx.page_title);
    string(out, &ctx.app_name);
    string(out, &ctx.app_version);
    string(out, &ctx.library_name);
    string(out, &ctx.library_version);
    string(out, &ctx.locale);
    out.extend_from_slice(&ctx.screen_width.to_le_bytes());
    out.extend_from_slice(&ctx.screen_height.to_le_bytes());
    string(out, &geo.country);
    string(out, &geo.region);
    string(out, &geo.city);
    string(out, &geo.timezone);
    string(out, &geo.continent);
    string(out, &geo.colo);
    out.extend_from_slice(&geo.asn.to_le_bytes());
    string(out, &device.browser);
    string(out, &device.browser_version);
    string(out, &device.os);
    string(out, &device.os_version);
    string(out, &device.device_type);
    out.push(u8::from(device.is_bot));
    string(out, &batch.ip_prefix);
    string(out, &batch.region);
    string(out, &batch.batch_id);
    let campaign = &ctx.campaign;
    string(out, &campaign.source);
    string(out, &campaign.medium);
    string(out, &campaign.name);
    string(out, &campaign.term);
    string(out, &campaign.content);
    Written {
        row: start..out.len(),
        device_key: if event.anonymous_id.is_empty() {
            user
        } else {
            anonymous
        },
    }
}

/// An upper bound on the bytes [`write_event`] writes for all of
/// `batch`'s events: each row repeats the batch's request-level text, so a
/// frame of many events with long request fields grows many times over
/// (the relay refuses such a frame rather than encode it).
pub fn rows_size_bound(batch: &WireBatch) -> usize {
    // Fixed-width columns, and a length prefix of at most 10 bytes for
    // each of the 34 text columns.
    const PER_ROW: usize = 70 + 34 * 10;
    let (geo, device) = (&batch.geo, &batch.device);
    let request: usize = [
        &batch.project_id,
        &geo.country,
        &geo.region,
        &geo.city,
        &geo.timezone,
        &geo.continent,
        &geo.colo,
        &device.browser,
        &device.browser_version,
        &device.os,
        &device.os_version,
        &device.device_type,
        &batch.ip_prefix,
        &batch.region,
        &batch.batch_id,
    ]
    .iter()
    .map(|s| s.len())
    .fold(PER_ROW, usize::saturating_add);
    batch.events.iter().fold(0usize, |total, e| {
        let c = &e.context;
        let own = [
            &e.event,
            &e.user_id,
            &e.anonymous_id,
            &e.session_id,
            &e.properties,
            &c.page_url,
            &c.page_path,
            &c.page_referrer,
            &c.page_title,
            &c.app_name,
            &c.app_version,
            &c.library_name,
            &c.library_version,
            &c.locale,
            &c.campaign.source,
            &c.campaign.medium,
            &c.campaign.name,
            &c.campaign.term,
            &c.campaign.content,
        ]
        .iter()
        .map(|s| s.len())
        .fold(request, usize::saturating_add);
        total.saturating_add(own)
    })
}

/// A `String` column; returns where its bytes (after the length) went.
fn string(out: &mut Vec<u8>, s: &str) -> Range<usize> {
    let mut n = s.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    let start = out.len();
    out.extend_from_slice(s.as_bytes());
    start..out.len()
}

fn nullable_i64(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(1),
        Some(v) => {
            out.push(0);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

const CHECKSUM_SIZE: usize = 16;
/// Method byte, compressed size (header included), uncompressed size.
const HEADER_SIZE: usize = 9;
const LZ4_METHOD: u8 = 0x82;

/// The largest input one block takes: ClickHouse refuses a compressed
/// block over 1 GiB, and the sizes are 32-bit.
pub const MAX_BLOCK_INPUT: usize = 512 * 1024 * 1024;

/// Appends `data` to `out` as one LZ4 block of ClickHouse's compressed
/// format. `data` must be at most [`MAX_BLOCK_INPUT`] bytes (callers split
/// larger inputs); larger input panics, which no row reaching the relay can
/// cause (a frame is a few MiB at most).
pub fn compress_block(data: &[u8], out: &mut Vec<u8>) {
    assert!(data.len() <= MAX_BLOCK_INPUT, "compressed block too large");
    let start = out.len();
    let bound = lz4_flex::block::get_maximum_output_size(data.len());
    out.resize(start + CHECKSUM_SIZE + HEADER_SIZE + bound, 0);
    let body = start + CHECKSUM_SIZE + HEADER_SIZE;
    let written = lz4_flex::block::compress_into(data, &mut out[body..])
        .expect("lz4's own bound sizes the output");
    out.truncate(body + written);
    let header = start + CHECKSUM_SIZE;
    out[header] = LZ4_METHOD;
    out[header + 1..header + 5].copy_from_slice(&((HEADER_SIZE + written) as u32).to_le_bytes());
    out[header + 5..header + 9].copy_from_slice(&(data.len() as u32).to_le_bytes());
    // ClickHouse's checksum: CityHash128 v1.0.2 of header and data, its
    // two 64-bit halves written low first.
    let checksum = cityhash_rs::cityhash_102_128(&out[header..]).rotate_right(64);
    out[start..header].copy_from_slice(&checksum.to_le_bytes());
}

#[cfg(test)]
mod tests;
