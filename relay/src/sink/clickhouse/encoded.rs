//! Rows encoded for the insert as they are pulled, beside the loop.
//!
//! A partition puller decodes a message and writes each frame's events as
//! one buffer of RowBinary rows plus that buffer as one compressed block
//! ([`EncodedFrame::encode`], `spoor_store::row_binary`). The loop then
//! buffers an [`EncodedRow`] per event it keeps: the event's id, day,
//! project and device key and where its bytes are, sharing its frame. So
//! the loop builds no row and frees no strings, and an insert sends bytes
//! made beforehand ([`body`]): a frame whose rows all stay goes in as its
//! block, the rows of a frame the loop thinned (duplicates, rows found
//! stored, rows refused) are compressed anew.
//!
//! The rare paths that need a row's values (a dead letter of rows
//! ClickHouse refused) decode the frame's message again
//! ([`Rebuilder::event_row`], once per message), which gives back the same
//! event.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use spoor_core::WireBatch;
use spoor_store::row_binary::{compress_block, write_event};
use spoor_store::Shared;
use uuid::Uuid;

use super::EventRow;

/// One frame's rows, encoded.
#[derive(Debug)]
pub struct EncodedFrame {
    /// The payload of the message the frame came in, and the frame's place
    /// in it (a bundle holds several): to decode its events again.
    payload: Bytes,
    index: usize,
    pub project_id: Shared,
    pub batch_id: Shared,
    /// The edge region that accepted the request.
    pub edge_region: Shared,
    /// Every event's row, RowBinary, in the frame's order.
    rows: Bytes,
    /// `rows` as one block of ClickHouse's compressed format.
    block: Bytes,
    /// How many rows `rows` holds.
    count: usize,
}

/// One event's row, in its frame's encoding.
#[derive(Debug, Clone)]
pub struct EncodedRow {
    frame: Arc<EncodedFrame>,
    /// The event's place in its frame.
    index: usize,
    pub event_id: Uuid,
    /// The row's `event_date` (days since 1970-01-01).
    pub event_date: u16,
    row: Range<usize>,
    device_key: Range<usize>,
}

impl EncodedFrame {
    /// Encodes `batch`, frame `index` of the message whose payload is
    /// `payload`; returns its rows in event order.
    pub fn encode(payload: &Bytes, index: usize, batch: &WireBatch) -> Vec<EncodedRow> {
        let mut rows = Vec::with_capacity(batch.events.len() * 512);
        let mut spans = Vec::with_capacity(batch.events.len());
        for event in &batch.events {
            spans.push(write_event(batch, event, &mut rows));
        }
        let mut block = Vec::with_capacity(rows.len() / 3 + 64);
        compress_block(&rows, &mut block);
        let frame = Arc::new(EncodedFrame {
            payload: payload.clone(),
            index,
            project_id: batch.project_id.as_str().into(),
            batch_id: batch.batch_id.as_str().into(),
            edge_region: batch.region.as_str().into(),
            rows: Bytes::from(rows),
            block: Bytes::from(block),
            count: batch.events.len(),
        });
        batch
            .events
            .iter()
            .zip(spans)
            .enumerate()
            .map(|(index, (event, span))| EncodedRow {
                frame: frame.clone(),
                index,
                event_id: event.event_id,
                event_date: spoor_store::date::event_date(event.ts_ms),
                row: span.row,
                device_key: span.device_key,
            })
            .collect()
    }
}

impl EncodedRow {
    pub fn project_id(&self) -> &Shared {
        &self.frame.project_id
    }

    pub fn frame(&self) -> &EncodedFrame {
        &self.frame
    }

    /// The row's RowBinary bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.frame.rows[self.row.clone()]
    }

    /// Its size in the insert (uncompressed): the buffer's byte bound.
    pub fn size(&self) -> usize {
        self.row.len()
    }

    /// The key the row is held under in the debug ring: its anonymous id,
    /// or its user id when that is empty.
    pub fn device_key(&self) -> &str {
        let bytes = &self.frame.rows[self.device_key.clone()];
        // Written from a `String`: always UTF-8.
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl EncodedFrame {
    /// The frame as it was pulled: its message decoded again.
    fn batch(&self) -> Option<WireBatch> {
        let mut batches = spoor_core::decode_message(&self.payload, usize::MAX).ok()?;
        (self.index < batches.len()).then(|| batches.swap_remove(self.index))
    }
}

/// Rows' values rebuilt from their frames' messages, each message decoded
/// once (the rare paths: dead letters of refused rows).
#[derive(Default)]
pub struct Rebuilder {
    /// By frame (its address while a row holds it), the decoded frame.
    frames: std::collections::HashMap<usize, Option<WireBatch>>,
}

impl Rebuilder {
    /// `row`'s values; `None` only if its message no longer decodes.
    pub fn event_row(&mut self, row: &EncodedRow) -> Option<EventRow> {
        let frame = &row.frame;
        let batch = self
            .frames
            .entry(Arc::as_ptr(frame) as usize)
            .or_insert_with(|| frame.batch())
            .as_ref()?;
        let event = batch.events.get(row.index)?.clone();
        Some(EventRow::new(batch, event))
    }
}

/// Uncompressed bytes per chunk of the insert's body, and the size at which
/// thinned frames' rows are compressed into a block of their own.
const CHUNK_BYTES: usize = 1 << 20;

/// The insert's body for `rows`, compressed, in chunks of about
/// [`CHUNK_BYTES`]: a run of rows that is a whole frame, in order, goes in
/// as the frame's block; any other rows are compressed anew.
pub fn body<'a>(rows: impl IntoIterator<Item = &'a EncodedRow>) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    // Rows of thinned frames, waiting to be compressed together.
    let mut loose: Vec<u8> = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while let Some(first) = rows.next() {
        let frame = &first.frame;
        // The run of consecutive rows of the same frame, in order.
        let mut run = vec![first];
        while let Some(next) = rows.next_if(|r| Arc::ptr_eq(&r.frame, frame)) {
            run.push(next);
        }
        let whole = run.len() == frame.count && run.iter().enumerate().all(|(i, r)| r.index == i);
        if whole {
            out.extend_from_slice(&frame.block);
        } else {
            for row in run {
                loose.extend_from_slice(row.bytes());
            }
            if loose.len() >= CHUNK_BYTES {
                compress_block(&loose, &mut out);
                loose.clear();
            }
        }
        if out.len() >= CHUNK_BYTES {
            chunks.push(Bytes::from(std::mem::take(&mut out)));
        }
    }
    if !loose.is_empty() {
        compress_block(&loose, &mut out);
    }
    if !out.is_empty() {
        chunks.push(Bytes::from(out));
    }
    chunks
}

#[cfg(test)]
mod tests;
