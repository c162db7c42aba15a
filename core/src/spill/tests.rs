use super::*;
use crate::ingest::{ingest, Endpoint, RequestMeta};
use crate::{Geo, Limits};

fn outbound(events: usize, pad: usize) -> Outbound {
    // One device, so every event lands in one partition and one frame.
    let evs: Vec<String> = (0..events)
        .map(|i| {
            // Distinct, poorly compressible text so the frame is really big.
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let text: String = (0..pad)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            format!(
                r#"{{"event":"e","anonymous_id":"dev","event_id":"00000000-0000-4000-8000-{i:012}","timestamp":1763800000000,"properties":{{"t":"{text}"}}}}"#
            )
        })
        .collect();
    let body = format!(r#"{{"batch":[{}]}}"#, evs.join(","));
    let meta = RequestMeta {
        project_id: "shop",
        region: "eu",
        partitions: 4,
        received_at_ms: 1_763_800_000_000,
        content_type: Some("application/json"),
        content_encoding: None,
        user_agent: "",
        ip: "",
        geo: Geo::default(),
    };
    let mut ing = ingest(Endpoint::Batch, body.as_bytes(), &meta, &Limits::default()).unwrap();
    assert_eq!(ing.messages.len(), 1);
    ing.messages.remove(0)
}

fn ids_of(msg: &SpillMessage) -> Vec<Uuid> {
    decode_batch(&msg.frame_bytes().unwrap(), 1 << 24)
        .unwrap()
        .events
        .iter()
        .map(|e| e.event_id)
        .collect()
}

#[test]
fn a_frame_that_fits_keeps_its_id_and_bytes() {
    let out = outbound(3, 10);
    let msgs = spill_messages(&out, DEFAULT_SPILL_MAX_BYTES, 1 << 24).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].msg_id, out.msg_id);
    assert_eq!(msgs[0].subject, out.subject);
    assert_eq!(msgs[0].events, 3);
    assert_eq!(msgs[0].frame_bytes().unwrap(), out.frame);
    // The JSON form round-trips.
    let json = serde_json::to_string(&msgs[0]).unwrap();
    assert_eq!(json.len(), msgs[0].encoded_len());
    assert_eq!(
        serde_json::from_str::<SpillMessage>(&json).unwrap(),
        msgs[0]
    );
}

#[test]
fn a_big_frame_splits_by_event_into_stable_pieces_that_fit() {
    let out = outbound(40, 2_000);
    let max = 16 * 1024;
    assert!(
        out.frame.len() > max,
        "test frame must need splitting: {}",
        out.frame.len()
    );
    let pieces = spill_messages(&out, max, 1 << 24).unwrap();
    assert!(pieces.len() >= 4, "{} pieces", pieces.len());
    let original: Vec<Uuid> = decode_batch(&out.frame, 1 << 24)
        .unwrap()
        .events
        .iter()
        .map(|e| e.event_id)
        .collect();
    let mut carried = Vec::new();
    for p in &pieces {
        assert!(p.encoded_len() <= max);
        assert_eq!(p.subject, out.subject);
        assert_ne!(p.msg_id, out.msg_id);
        let batch = decode_batch(&p.frame_bytes().unwrap(), 1 << 24).unwrap();
        assert_eq!(batch.batch_id, p.msg_id, "a piece's frame names its own id");
        assert_eq!(batch.events.len(), p.events);
        assert_eq!(p.msg_id, piece_msg_id(&out.msg_id, &ids_of(p)));
        carried.extend(ids_of(p));
    }
    assert_eq!(carried, original, "every event once, in order");
    // Deterministic: spilling the same frame again gives the same pieces.
    assert_eq!(spill_messages(&out, max, 1 << 24).unwrap(), pieces);
    let unique: std::collections::HashSet<_> = pieces.iter().map(|p| &p.msg_id).collect();
    assert_eq!(unique.len(), pieces.len());
}

#[test]
fn an_event_too_big_for_any_message_is_an_error_not_a_panic() {
    let out = outbound(2, 4_000);
    let err = spill_messages(&out, 1_000, 1 << 24).unwrap_err();
    assert!(matches!(err, SpillError::EventTooLarge { .. }), "{err}");
    let garbage = Outbound {
        subject: "s".into(),
        msg_id: "m".into(),
        frame: vec![7; 5_000],
        events: 1,
    };
    assert!(matches!(
        spill_messages(&garbage, 1_000, 1 << 24).unwrap_err(),
        SpillError::Unsplittable { .. }
    ));
}

#[test]
fn bad_spill_messages_are_errors() {
    let mut m = SpillMessage::new("s", "m", 1, b"abc");
    m.frame = "not base64!".into();
    assert!(matches!(m.frame_bytes(), Err(SpillError::BadFrame(_))));
    m.v = 9;
    assert_eq!(m.frame_bytes(), Err(SpillError::UnknownVersion(9)));
}
