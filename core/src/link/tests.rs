use super::*;
use crate::codec::{decode_message, encode_batch};
use crate::event::WireBatch;
use proptest::prelude::*;

fn frame(subject: &str, id: &str, bytes: usize) -> HandoffFrame {
    HandoffFrame {
        subject: subject.into(),
        msg_id: id.into(),
        events: 3,
        frame: vec![7; bytes],
    }
}

#[test]
fn link_names_spread_partitions_over_shards() {
    assert_eq!(link_name("eu", "FRA", 5, 4), "eu:FRA:1");
    assert_eq!(link_name("eu", "", 5, 4), "eu:local:1");
    assert_eq!(link_name("eu", "FRA", 5, 0), "eu:FRA:0");
    let names: std::collections::BTreeSet<String> =
        (0..16).map(|p| link_name("eu", "FRA", p, 4)).collect();
    assert_eq!(names.len(), 4);
}

#[test]
fn handoffs_round_trip() {
    let frames = vec![
        frame("spoor.events.eu.1", "a", 10),
        frame("spoor.events.eu.2", "b", 0),
        frame("spoor.events.eu.1", "c", 3000),
    ];
    for alone in [false, true] {
        let h = Handoff {
            alone,
            frames: frames.clone(),
        };
        assert_eq!(decode_handoff(&encode_handoff(&h)).unwrap(), h);
    }
    let empty = Handoff::default();
    assert_eq!(decode_handoff(&encode_handoff(&empty)).unwrap(), empty);
}

#[test]
fn malformed_handoffs_are_errors() {
    let body = encode_handoff(&Handoff {
        alone: false,
        frames: vec![frame("s", "a", 10), frame("t", "b", 20)],
    });
    for cut in 0..body.len() {
        assert!(decode_handoff(&body[..cut]).is_err(), "cut at {cut}");
    }
    let mut trailing = body.clone();
    trailing.push(1);
    assert!(decode_handoff(&trailing).is_err());
    let mut version = body.clone();
    version[0] = 9;
    assert!(decode_handoff(&version).unwrap_err().0.contains("version"));
    let mut flags = body.clone();
    flags[1] = 0x80;
    assert!(decode_handoff(&flags).unwrap_err().0.contains("flags"));
    let mut count = body.clone();
    count[2..4].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(decode_handoff(&count).is_err());
}

#[test]
fn one_frame_goes_bare_several_as_a_bundle() {
    let limits = Coalesce::default();
    let batch = |id: &str| WireBatch {
        batch_id: id.into(),
        project_id: "p".into(),
        region: "eu".into(),
        received_at_ms: 1,
        sent_at_ms: None,
        geo: Default::default(),
        device: Default::default(),
        ip_prefix: String::new(),
        events: Vec::new(),
    };
    let f = |id: &str| HandoffFrame {
        subject: "spoor.events.eu.1".into(),
        msg_id: id.into(),
        events: 0,
        frame: encode_batch(&batch(id)).unwrap(),
    };
    let mut p = Pending::default();
    assert_eq!(p.add(f("a"), limits), AddOutcome::Opened);
    let (id, payload) = p.message();
    assert_eq!(id, "a", "a lone frame keeps its own id");
    assert_eq!(payload, f("a").frame);

    assert_eq!(p.add(f("b"), limits), AddOutcome::Joined);
    let (id, payload) = p.message();
    assert_eq!(id, bundle_msg_id(&["a", "b"]));
    assert_ne!(id, bundle_msg_id(&["b", "a"]), "order matters");
    let decoded = decode_message(&payload, 1 << 20).unwrap();
    assert_eq!(decoded, vec![batch("a"), batch("b")]);
}

#[test]
fn pending_messages_respect_their_byte_limit() {
    let limits = Coalesce {
        window_ms: 2,
        max_bytes: 1000,
    };
    let mut p = Pending::default();
    assert!(
        p.fits(&frame("s", "a", 5000), limits),
        "an empty message takes any frame"
    );
    assert_eq!(p.add(frame("s", "a", 400), limits), AddOutcome::Opened);
    assert!(p.fits(&frame("s", "b", 400), limits));
    assert!(!p.fits(&frame("s", "b", 600), limits));
    assert_eq!(p.add(frame("s", "b", 600), limits), AddOutcome::Full);
    let off = Coalesce {
        window_ms: 0,
        ..limits
    };
    assert_eq!(
        Pending::default().add(frame("s", "a", 1), off),
        AddOutcome::Full
    );
}

proptest! {
    #[test]
    fn arbitrary_handoff_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut body = vec![HANDOFF_VERSION];
        body.extend_from_slice(&bytes);
        let _ = decode_handoff(&body);
        let _ = decode_handoff(&bytes);
    }
}

#[test]
fn recent_frames_answer_within_the_window_and_the_bound() {
    let mut r = RecentFrames::new(1_000, 3);
    r.insert("a", 1, 0);
    r.insert("b", 2, 500);
    assert_eq!(r.get("a", 900), Some(1));
    assert_eq!(r.get("a", 1_001), None, "older than the window");
    assert_eq!(r.get("b", 1_001), Some(2));
    r.insert("c", 3, 1_100);
    r.insert("d", 4, 1_200);
    r.insert("e", 5, 1_300);
    assert_eq!(r.len(), 3, "bounded by count");
    assert_eq!(r.get("b", 1_300), None, "the oldest went first");
    assert_eq!(r.get("e", 1_300), Some(5));
    // Re-inserting an id keeps one entry, aged from the first.
    r.insert("e", 5, 1_400);
    assert_eq!(r.len(), 3);
    assert_eq!(r.get("e", 2_350), None);
    assert!(r.is_empty());
}
