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
    let (user, anonymous) = columns(batch, event, &mut Bytes(out));
    Written {
        row: start..out.len(),
        device_key: if event.anonymous_id.is_empty() {
            user
        } else {
            anonymous
        },
    }
}

/// The bytes [`write_event`] writes for all of `batch`'s events, counted
/// without writing them: each row repeats the batch's request-level text,
/// so a frame of many events with long request fields grows many times
/// over (the relay refuses such a frame rather than encode it).
pub fn rows_size(batch: &WireBatch) -> usize {
    let mut size = Size(0);
    for event in &batch.events {
        columns(batch, event, &mut size);
    }
    size.0
}

/// Where a row's columns go: written out, or only counted. One column list
/// ([`columns`]) serves both, so the count cannot drift from the bytes.
trait Sink {
    /// A `String` column; returns where its bytes (after the length) went.
    fn string(&mut self, s: &str) -> Range<usize>;
    /// A fixed-width column, already little-endian.
    fn fixed(&mut self, bytes: &[u8]);

    fn nullable_i64(&mut self, v: Option<i64>) {
        match v {
            None => self.fixed(&[1]),
            Some(v) => {
                self.fixed(&[0]);
                self.fixed(&v.to_le_bytes());
            }
        }
    }
}

/// Writes into a buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl Sink for Bytes<'_> {
    fn string(&mut self, s: &str) -> Range<usize> {
        let out = &mut *self.0;
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

    fn fixed(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// Counts what [`Bytes`] would write.
struct Size(usize);

impl Sink for Size {
    fn string(&mut self, s: &str) -> Range<usize> {
        // LEB128: seven bits of the length per byte.
        let prefix = (usize::BITS - s.len().leading_zeros()).div_ceil(7).max(1) as usize;
        self.0 = self.0.saturating_add(prefix).saturating_add(s.len());
        0..0
    }

    fn fixed(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

/// The `events` row's columns in the table's order (`EVENT_COLUMNS`), into
/// `out`; returns where the `user_id` and `anonymous_id` bytes went.
fn columns(batch: &WireBatch, event: &Event, out: &mut impl Sink) -> (Range<usize>, Range<usize>) {
    let ctx = &event.context;
    let (geo, device) = (&batch.geo, &batch.device);
    out.string(&batch.project_id);
    out.fixed(&event_date(event.ts_ms).to_le_bytes());
    out.fixed(&event_time(event.ts_ms).to_le_bytes());
    out.fixed(&event.ts_ms.to_le_bytes());
    let (high, low) = event.event_id.as_u64_pair();
    out.fixed(&high.to_le_bytes());
    out.fixed(&low.to_le_bytes());
    out.fixed(&[u8::from(event.event_id_derived)]);
    out.string(&event.event);
    let user = out.string(&event.user_id);
    let anonymous = out.string(&event.anonymous_id);
    out.string(&event.session_id);
    out.nullable_i64(event.client_ts_ms);
    out.nullable_i64(batch.sent_at_ms);
    out.fixed(&batch.received_at_ms.to_le_bytes());
    out.string(&event.properties);
    out.string(&ctx.page_url);
    out.string(&ctx.page_path);
    out.string(&ctx.page_referrer);
    out.string(&ctx.page_title);
    out.string(&ctx.app_name);
    out.string(&ctx.app_version);
    out.string(&ctx.library_name);
    out.string(&ctx.library_version);
    out.string(&ctx.locale);
    out.fixed(&ctx.screen_width.to_le_bytes());
    out.fixed(&ctx.screen_height.to_le_bytes());
    out.string(&geo.country);
    out.string(&geo.region);
    out.string(&geo.city);
    out.string(&geo.timezone);
    out.string(&geo.continent);
    out.string(&geo.colo);
    out.fixed(&geo.asn.to_le_bytes());
    out.string(&device.browser);
    out.string(&device.browser_version);
    out.string(&device.os);
    out.string(&device.os_version);
    out.string(&device.device_type);
    out.fixed(&[u8::from(device.is_bot)]);
    out.string(&batch.ip_prefix);
    out.string(&batch.region);
    out.string(&batch.batch_id);
    let campaign = &ctx.campaign;
    out.string(&campaign.source);
    out.string(&campaign.medium);
    out.string(&campaign.name);
    out.string(&campaign.term);
    out.string(&campaign.content);
    (user, anonymous)
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
