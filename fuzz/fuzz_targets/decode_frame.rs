//! Fuzzes the relay's message decoder: any bytes (a frame, a bundle of
//! frames, or garbage) must decode to batches or a `DecodeError`, never
//! panic or allocate past the limit. The same bytes, read as a frame's
//! CBOR body, hold the direct reader to ciborium: whatever it accepts,
//! ciborium must decode to the same batch (the `cbor_body_*` seeds are such
//! bodies).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoor_core::WireBatch;

fuzz_target!(|data: &[u8]| {
    // A small cap makes the fuzzer reach the "too large" branch and keeps
    // each run's memory bounded.
    let _ = spoor_core::decode_message(data, 1 << 20);
    if let Some(direct) = spoor_core::codec::read_cbor_batch(data) {
        let reference: Option<WireBatch> = ciborium::from_reader(data).ok();
        assert_eq!(reference, Some(direct), "the direct reader and ciborium disagree");
    }
});
