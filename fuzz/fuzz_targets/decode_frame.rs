//! Fuzzes the relay's message decoder: any bytes (a frame, a bundle of
//! frames, or garbage) must decode to batches or a `DecodeError`, never
//! panic or allocate past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small cap makes the fuzzer reach the "too large" branch and keeps
    // each run's memory bounded.
    let _ = spoor_core::decode_message(data, 1 << 20);
});
