//! Fuzzes the Segment decoder end to end: path, envelope, gzip, the
//! translation of each message into a Spoor event, validation and frame
//! encoding. The first byte picks the call and the encoding. Nothing may
//! panic, every message must be answered exactly once (accepted, rejected
//! or a duplicate), and whatever is accepted must decode as the relay
//! reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoor_core::ingest::RequestMeta;
use spoor_core::segment::{ingest, read, Call};
use spoor_core::{decode_batch, Geo, Limits};

const PATHS: [&str; 8] = ["/v1/b", "/v1/t", "/v1/i", "/v1/p", "/v1/s", "/v1/g", "/v1/a", "/b"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let call = Call::from_path(PATHS[usize::from(sel & 7)]).expect("a Segment path");
    let encoding = if sel & 8 == 0 { None } else { Some("gzip") };
    let Ok(req) = read(call, body, Some("text/plain"), encoding) else { return };
    let meta = RequestMeta {
        project_id: "fuzz",
        region: "r",
        partitions: 4,
        received_at_ms: 1_795_341_600_000,
        content_type: Some("text/plain"),
        content_encoding: encoding,
        user_agent: "analytics-kotlin/1.24.1",
        ip: "198.51.100.1",
        geo: Geo::default(),
    };
    let limits = Limits::default();
    let Ok(ing) = ingest(&req, &meta, &limits) else { return };
    let r = &ing.receipt;
    assert_eq!(r.accepted + r.rejected.len() + r.duplicates.len(), req.len());
    let accepted: usize = ing.messages.iter().map(|m| m.events).sum();
    assert_eq!(accepted, r.accepted);
    for m in &ing.messages {
        let b = decode_batch(&m.frame, limits.max_frame_bytes).expect("edge frames decode");
        assert_eq!(b.events.len(), m.events);
    }
});
