//! Fuzzes the edge's request decoder end to end: envelope parsing, gzip,
//! per-event validation and frame encoding. The first byte picks the
//! endpoint and encoding so both paths are explored. Every answer must
//! equal the reference path's (the envelope read by serde instead of the
//! byte scanner).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoor_core::ingest::{ingest, ingest_reference, Endpoint, RequestMeta};
use spoor_core::{decode_batch, Geo, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let endpoint = if sel & 1 == 0 { Endpoint::Batch } else { Endpoint::Track };
    let encoding = if sel & 2 == 0 { None } else { Some("gzip") };
    let meta = RequestMeta {
        project_id: "fuzz",
        region: "r",
        partitions: 4,
        received_at_ms: 1_763_800_000_000,
        content_type: Some("application/json"),
        content_encoding: encoding,
        user_agent: "Mozilla/5.0",
        ip: "198.51.100.1",
        geo: Geo::default(),
    };
    let limits = Limits::default();
    let answer = ingest(endpoint, body, &meta, &limits);
    assert_eq!(answer, ingest_reference(endpoint, body, &meta, &limits));
    if let Ok(ing) = answer {
        // Whatever the edge accepts, the relay must read back.
        let accepted: usize = ing.messages.iter().map(|m| m.events).sum();
        assert_eq!(accepted, ing.receipt.accepted);
        for m in &ing.messages {
            let b = decode_batch(&m.frame, limits.max_frame_bytes).expect("edge frames decode");
            assert_eq!(b.events.len(), m.events);
        }
    }
});
