//! Fuzzes the relay's frame decoder: any bytes must decode to a batch or a
//! `DecodeError`, never panic or allocate past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small cap makes the fuzzer reach the "too large" branch and keeps
    // each run's memory bounded.
    let _ = spoor_core::decode_batch(data, 1 << 20);
});
