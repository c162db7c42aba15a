//! Fuzzes the load tester's recording reader (`spoor-loadtest replay`'s
//! input): any text must read as requests and bad lines, never panic, and
//! every request it keeps must survive a replay's rewrite of ids and times
//! (with shifts at the ends of the range) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../loadtest/src/recording.rs"]
#[allow(dead_code)]
mod recording;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (read, _bad) = recording::parse(text);
    let mut map = recording::IdMap::new();
    let mut n = 0u128;
    let mut fresh = || {
        n += 1;
        uuid::Uuid::from_u128(n)
    };
    for r in &read.requests {
        let _ = recording::arrival_ms(r);
        let _ = recording::rewrite(
            r,
            recording::Ids::Fresh,
            &mut map,
            &mut fresh,
            Some(i64::MAX),
        );
        let _ = recording::rewrite(
            r,
            recording::Ids::Keep,
            &mut map,
            &mut fresh,
            Some(i64::MIN),
        );
        let _ = recording::to_line(r);
    }
});
