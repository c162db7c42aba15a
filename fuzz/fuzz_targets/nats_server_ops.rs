//! Fuzzes the edge's NATS protocol reader: whatever a (hostile or broken)
//! server sends, parsing yields ops, "need more bytes" or a ProtocolError,
//! never a panic, and every consumed length stays inside the buffer. Header
//! blocks and PubAck payloads go through their decoders too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoor_edge_nats::{parse_headers, parse_op, parse_pub_ack, Limits, ServerOp};

fuzz_target!(|data: &[u8]| {
    // The same bytes as a raw header block.
    let _ = parse_headers(data);
    let limits = Limits::default();
    let mut rest = data;
    while let Ok(Some((op, used))) = parse_op(rest, &limits) {
        assert!(used > 0 && used <= rest.len(), "consumed {used} of {}", rest.len());
        if let ServerOp::Msg(m) = &op {
            let _ = m.status();
            let _ = parse_pub_ack(&m.payload);
        }
        rest = &rest[used..];
    }
});
