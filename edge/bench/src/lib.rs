//! The edge's CPU path stage by stage, as plain wasm exports (no JS glue),
//! built with the edge's release profile for wasm32 and timed under V8 by
//! `run.mjs` (`cargo xtask bench-wasm`). Each stage runs the same code the
//! edge runs, on `spoor_core::sample`'s 50-event batch, so the figures say
//! where the isolate's CPU goes inside the module; what the runtime and
//! the JS boundary cost is measured whole-system by the edge bench.
//!
//! Exports: `prepare(events)` builds the inputs once; `run(stage, iters)`
//! runs one stage `iters` times and returns a checksum (so nothing is
//! optimised away); `stages()` says how many stages there are and
//! `stage_name`/`stage_name_len` locate stage `i`'s name for the runner.

use std::cell::RefCell;

use spoor_core::ingest::{ingest, stages, Endpoint, RequestMeta};
use spoor_core::{sample, Limits, WireBatch};

const NOW: i64 = 1_763_800_000_000;

/// The stages, in pipeline order. `ingest` is all of them together (what
/// the edge calls); the others are cumulative or single steps.
pub const STAGES: &[&str] = &[
    "ingest (whole)",
    "envelope",
    "parse (envelope + raw events)",
    "validate (parse + rules)",
    "enrich (user agent, ip)",
    "cbor",
    "lz4",
    "receipt json",
    "frame (cbor + lz4 + header)",
    "envelope, reference path (serde raw values)",
];

struct Inputs {
    body: Vec<u8>,
    batch: WireBatch,
    cbor: Vec<u8>,
    receipt: spoor_core::Receipt,
    limits: Limits,
}

thread_local! {
    static INPUTS: RefCell<Option<Inputs>> = const { RefCell::new(None) };
}

fn meta() -> RequestMeta<'static> {
    sample::request_meta(NOW)
}

/// Builds the inputs for `events` events per batch. Returns the body's size.
#[no_mangle]
pub extern "C" fn prepare(events: u32) -> u32 {
    let body = sample::batch_body(events as usize, NOW, "0a0b0c0d").into_bytes();
    let limits = Limits::default();
    let m = meta();
    let ingested = ingest(Endpoint::Batch, &body, &m, &limits).expect("the sample batch is valid");
    let (device, ip_prefix) = stages::enrich(&m);
    let batch = WireBatch {
        batch_id: ingested.messages[0].msg_id.clone(),
        project_id: m.project_id.into(),
        region: m.region.into(),
        received_at_ms: NOW,
        sent_at_ms: Some(NOW),
        geo: m.geo.clone(),
        device,
        ip_prefix,
        events: stages::events(&body, &m, &limits),
    };
    let cbor = stages::cbor(&batch);
    let len = body.len() as u32;
    INPUTS.with(|i| {
        *i.borrow_mut() = Some(Inputs {
            body,
            batch,
            cbor,
            receipt: ingested.receipt,
            limits,
        })
    });
    len
}

/// Runs stage `stage` `iters` times; returns a checksum of the outputs.
#[no_mangle]
pub extern "C" fn run(stage: u32, iters: u32) -> u32 {
    INPUTS.with(|i| {
        let guard = i.borrow();
        let Some(inp) = guard.as_ref() else { return 0 };
        let m = meta();
        let mut sum = 0u32;
        for _ in 0..iters {
            let n = match stage {
                0 => ingest(Endpoint::Batch, &inp.body, &m, &inp.limits)
                    .map(|i| i.messages.iter().map(|m| m.frame.len()).sum())
                    .unwrap_or(0),
                1 => stages::envelope(&inp.body, &m, &inp.limits),
                2 => stages::parse(&inp.body, &inp.limits),
                3 => stages::validate(&inp.body, &m, &inp.limits),
                4 => stages::enrich(&m).0.browser.len(),
                5 => stages::cbor(&inp.batch).len(),
                6 => stages::lz4(&inp.cbor).len(),
                7 => stages::receipt_json(&inp.receipt).len(),
                8 => spoor_core::encode_batch(&inp.batch)
                    .map(|f| f.len())
                    .unwrap_or(0),
                9 => stages::envelope_reference(&inp.body, &inp.limits),
                _ => 0,
            };
            sum = sum.wrapping_add(n as u32);
        }
        sum
    })
}

#[no_mangle]
pub extern "C" fn stages() -> u32 {
    STAGES.len() as u32
}

/// Where stage `i`'s name (UTF-8) starts in this module's memory.
#[no_mangle]
pub extern "C" fn stage_name(i: u32) -> *const u8 {
    STAGES.get(i as usize).copied().unwrap_or("").as_ptr()
}

/// The length of stage `i`'s name in bytes.
#[no_mangle]
pub extern "C" fn stage_name_len(i: u32) -> u32 {
    STAGES.get(i as usize).copied().unwrap_or("").len() as u32
}
