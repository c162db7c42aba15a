use super::*;
use crate::enrich::{Device, Geo};
use crate::event::{Campaign, Context, Event, WireBatch};
use proptest::prelude::*;
use uuid::Uuid;

const MAX: usize = 8 * 1024 * 1024;

fn sample(n: usize) -> WireBatch {
    WireBatch {
        batch_id: "b1".into(),
        project_id: "shop".into(),
        region: "eu".into(),
        received_at_ms: 1_700_000_000_000,
        sent_at_ms: Some(1_700_000_000_100),
        geo: Geo {
            country: "DE".into(),
            asn: 3320,
            ..Geo::default()
        },
        device: Device {
            browser: "Firefox".into(),
            device_type: "desktop".into(),
            ..Device::default()
        },
        ip_prefix: "203.0.113.0".into(),
        events: (0..n)
            .map(|i| Event {
                event_id: Uuid::from_u128(i as u128 + 1),
                event_id_derived: i % 2 == 0,
                event: "page_view".into(),
                user_id: String::new(),
                anonymous_id: format!("dev-{i}"),
                session_id: "s".into(),
                client_ts_ms: Some(1_700_000_000_000 - i as i64),
                ts_ms: 1_700_000_000_000,
                properties: r#"{"path":"/"}"#.into(),
                context: Context {
                    page_url: "https://x.test/".into(),
                    screen_width: 1920,
                    // Every other event came from a campaign.
                    campaign: if i % 2 == 1 {
                        Campaign {
                            source: "newsletter".into(),
                            name: format!("winter-{i}"),
                            ..Campaign::default()
                        }
                    } else {
                        Campaign::default()
                    },
                    ..Context::default()
                },
            })
            .collect(),
    }
}

#[test]
fn round_trip() {
    for n in [0, 1, 3, 500] {
        let b = sample(n);
        let frame = encode_batch(&b).unwrap();
        assert_eq!(decode_batch(&frame, MAX).unwrap(), b);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let frame = encode_batch(&sample(5)).unwrap();
    for cut in 0..frame.len() {
        let err = decode_batch(&frame[..cut], MAX).unwrap_err();
        if cut < HEADER_LEN {
            assert_eq!(err, DecodeError::Incomplete(cut));
        }
    }
}

/// A named corruption of a frame and the error kind it must produce.
type Corruption = (&'static str, Box<dyn Fn(&mut Vec<u8>)>, &'static str);

#[test]
fn header_is_not_trusted() {
    let frame = encode_batch(&sample(3)).unwrap();
    let table: Vec<Corruption> = vec![
        ("magic", Box::new(|f| f[0] = b'X'), "bad_magic"),
        ("version", Box::new(|f| f[4] = 9), "unsupported_version"),
        ("flags", Box::new(|f| f[5] = 3), "unknown_flags"),
        ("count", Box::new(|f| f[8] = 4), "count_mismatch"),
        (
            "len too big",
            Box::new(|f| f[12..16].copy_from_slice(&u32::MAX.to_le_bytes())),
            "too_large",
        ),
        (
            "len too small",
            Box::new(|f| {
                let l = u32::from_le_bytes([f[12], f[13], f[14], f[15]]) - 1;
                f[12..16].copy_from_slice(&l.to_le_bytes())
            }),
            "decompress",
        ),
        (
            "len larger",
            Box::new(|f| {
                let l = u32::from_le_bytes([f[12], f[13], f[14], f[15]]) + 7;
                f[12..16].copy_from_slice(&l.to_le_bytes())
            }),
            "length_mismatch",
        ),
    ];
    for (name, mutate, kind) in table {
        let mut f = frame.clone();
        mutate(&mut f);
        let err = decode_batch(&f, MAX).unwrap_err();
        assert_eq!(err.kind(), kind, "{name}: {err}");
    }
}

#[test]
fn limit_is_checked_before_inflating() {
    let frame = encode_batch(&sample(50)).unwrap();
    let h = check_header(&frame, MAX).unwrap();
    let err = decode_batch(&frame, h.uncompressed_len as usize - 1).unwrap_err();
    assert_eq!(err.kind(), "too_large");
}

#[test]
fn valid_lz4_of_garbage_cbor_is_an_error() {
    let garbage = b"\xff\xff\xff not cbor";
    let body = lz4_flex::block::compress(garbage);
    let mut f = Vec::new();
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&[FORMAT_VERSION, 1, 0, 0]);
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&(garbage.len() as u32).to_le_bytes());
    f.extend_from_slice(&body);
    assert_eq!(decode_batch(&f, MAX).unwrap_err().kind(), "cbor");
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9_]{1,12}", any::<String>()]
}

prop_compose! {
    fn some_campaign()(source in arb_string(), medium in arb_string(), name in arb_string(),
                       term in arb_string(), content in arb_string()) -> Campaign {
        Campaign { source, medium, name, term, content }
    }
}

/// No campaign half the time (most events), any fields otherwise.
fn arb_campaign() -> impl Strategy<Value = Campaign> {
    prop_oneof![Just(Campaign::default()), some_campaign()]
}

prop_compose! {
    fn arb_event()(id in any::<u128>(), derived in any::<bool>(), name in "[a-z_]{1,20}",
                   user in arb_string(), anon in arb_string(), session in arb_string(),
                   cts in proptest::option::of(any::<i64>()), ts in any::<i64>(),
                   url in arb_string(), w in any::<u32>(), campaign in arb_campaign()) -> Event {
        Event {
            event_id: Uuid::from_u128(id), event_id_derived: derived, event: name,
            user_id: user, anonymous_id: anon, session_id: session,
            client_ts_ms: cts, ts_ms: ts, properties: "{}".into(),
            context: Context { page_url: url, screen_width: w, campaign, ..Context::default() },
        }
    }
}

proptest! {
    #[test]
    fn round_trip_any(events in proptest::collection::vec(arb_event(), 0..40), project in arb_string(),
                      recv in any::<i64>(), sent in proptest::option::of(any::<i64>()), asn in any::<u32>()) {
        let b = WireBatch {
            batch_id: "x".into(), project_id: project, region: "r".into(),
            received_at_ms: recv, sent_at_ms: sent,
            geo: Geo { asn, ..Geo::default() }, device: Device::default(),
            ip_prefix: String::new(), events,
        };
        let frame = encode_batch(&b).unwrap();
        prop_assert_eq!(decode_batch(&frame, MAX).unwrap(), b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_batch(&bytes, MAX);
    }

    #[test]
    fn flipped_bytes_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>()) {
        let mut frame = encode_batch(&sample(4)).unwrap();
        let i = pos.index(frame.len());
        frame[i] = val;
        let _ = decode_batch(&frame, MAX);
    }
}

fn batch_with_id(id: &str, n: usize) -> WireBatch {
    WireBatch {
        batch_id: id.into(),
        ..sample(n)
    }
}

#[test]
fn a_plain_frame_is_a_message_of_one_batch() {
    let frame = encode_batch(&sample(3)).unwrap();
    assert_eq!(split_message(&frame).unwrap(), vec![&frame[..]]);
    assert_eq!(decode_message(&frame, MAX).unwrap(), vec![sample(3)]);
    // A plain frame's own errors keep their kind.
    let err = decode_message(&frame[..10], MAX).unwrap_err();
    assert_eq!(err.kind(), "incomplete");
}

#[test]
fn bundles_round_trip_in_order() {
    let batches = [
        batch_with_id("a", 1),
        batch_with_id("b", 5),
        batch_with_id("c", 2),
    ];
    let frames: Vec<Vec<u8>> = batches.iter().map(|b| encode_batch(b).unwrap()).collect();
    let bundle = encode_bundle(&frames);
    assert_eq!(
        bundle.len(),
        bundle_overhead(3) + frames.iter().map(Vec::len).sum::<usize>()
    );
    assert!(is_bundle(&bundle));
    assert_eq!(decode_message(&bundle, MAX).unwrap(), batches.to_vec());
}

#[test]
fn malformed_bundles_are_refused_with_a_reason() {
    let frames = vec![
        encode_batch(&sample(2)).unwrap(),
        encode_batch(&sample(1)).unwrap(),
    ];
    let good = encode_bundle(&frames);
    let kind = |b: &[u8]| decode_message(b, MAX).unwrap_err().kind();
    // Cut anywhere inside: structure error, never a panic.
    for cut in 4..good.len() {
        assert!(decode_message(&good[..cut], MAX).is_err(), "cut at {cut}");
    }
    // Trailing garbage.
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(kind(&trailing), "bad_bundle");
    // A count the payload cannot hold is refused before allocating.
    let mut huge = good.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(kind(&huge), "bad_bundle");
    // Zero frames.
    assert_eq!(kind(&encode_bundle::<Vec<u8>>(&[])), "bad_bundle");
    // Unknown version.
    let mut v2 = good.clone();
    v2[4] = 2;
    assert_eq!(kind(&v2), "bad_bundle");
    // A damaged member fails the message and names the member.
    let mut damaged = frames.clone();
    damaged[1][0] = b'X';
    let err = decode_message(&encode_bundle(&damaged), MAX).unwrap_err();
    assert_eq!(err.kind(), "bad_magic");
    assert!(err.to_string().starts_with("frame 1 of a bundle"), "{err}");
    // Bundles do not nest.
    let nested = encode_bundle(std::slice::from_ref(&good));
    assert_eq!(
        decode_message(&nested, MAX).unwrap_err().kind(),
        "bad_magic"
    );
}

proptest! {
    #[test]
    fn arbitrary_bundles_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut payload = BUNDLE_MAGIC.to_vec();
        payload.extend_from_slice(&bytes);
        let _ = decode_message(&payload, MAX);
    }
}

/// The CBOR ciborium makes of a batch: what the hand-written writer must
/// match byte for byte.
fn ciborium_cbor(b: &WireBatch) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(b, &mut out).unwrap();
    out
}

/// The CBOR inside a frame.
fn frame_cbor(frame: &[u8]) -> Vec<u8> {
    let h = check_header(frame, MAX).unwrap();
    lz4_flex::block::decompress(&frame[HEADER_LEN..], h.uncompressed_len as usize).unwrap()
}

#[test]
fn the_written_cbor_is_what_ciborium_writes() {
    for n in [0, 1, 23, 24, 300] {
        let b = sample(n);
        assert_eq!(
            frame_cbor(&encode_batch(&b).unwrap()),
            ciborium_cbor(&b),
            "{n} events"
        );
    }
}

proptest! {
    #[test]
    fn the_written_cbor_is_what_ciborium_writes_for_any_batch(
        events in proptest::collection::vec(arb_event(), 0..30), project in arb_string(),
        recv in any::<i64>(), sent in proptest::option::of(any::<i64>()), asn in any::<u32>(),
        city in arb_string(), bot in any::<bool>(), props in prop_oneof![Just("{}".to_string()), ".{0,300}"],
        h in any::<u32>()) {
        let mut events = events;
        for e in &mut events {
            e.properties = props.clone();
            e.context.screen_height = h;
        }
        let b = WireBatch {
            batch_id: "x".repeat(h as usize % 70_000), project_id: project, region: "r".into(),
            received_at_ms: recv, sent_at_ms: sent,
            geo: Geo { asn, city, ..Geo::default() },
            device: Device { is_bot: bot, ..Device::default() },
            ip_prefix: String::new(), events,
        };
        prop_assert_eq!(frame_cbor(&encode_batch(&b).unwrap()), ciborium_cbor(&b));
    }
}

/// ciborium's reading of `cbor`: the reference the direct reader must agree with.
fn ciborium_read(cbor: &[u8]) -> Option<WireBatch> {
    ciborium::from_reader(cbor).ok()
}

#[test]
fn the_direct_reader_reads_what_the_writer_writes() {
    for n in [0, 1, 23, 24, 300] {
        let b = sample(n);
        let cbor = frame_cbor(&encode_batch(&b).unwrap());
        assert_eq!(cbor::read_batch(&cbor), Some(b), "{n} events");
    }
}

#[test]
fn another_shape_is_left_to_ciborium_and_still_decodes() {
    // The same batch with its map keys in another order and one field
    // missing (`sent_at_ms`: an Option, so ciborium reads it as None).
    let b = WireBatch {
        sent_at_ms: None,
        ..sample(2)
    };
    let mut value = ciborium::Value::serialized(&b).unwrap();
    if let ciborium::Value::Map(fields) = &mut value {
        fields.retain(|(k, _)| k.as_text() != Some("sent_at_ms"));
        fields.reverse();
    }
    let mut cbor = Vec::new();
    ciborium::into_writer(&value, &mut cbor).unwrap();
    assert_eq!(cbor::read_batch(&cbor), None);
    assert_eq!(ciborium_read(&cbor), Some(b.clone()));
    // Through the whole frame decoder: the fallback decodes it.
    let mut frame = Vec::new();
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&[FORMAT_VERSION, 1, 0, 0]);
    frame.extend_from_slice(&(b.events.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(cbor.len() as u32).to_le_bytes());
    frame.extend_from_slice(&lz4_flex::block::compress(&cbor));
    assert_eq!(decode_batch(&frame, MAX).unwrap(), b);
}

/// A frame body in the shape of a writer older than the campaign: the
/// context a map of 11 fields. `sample(1)`'s only event has no campaign,
/// and its body is exactly that shape: both readers take it, and give an
/// empty campaign.
#[test]
fn a_context_without_a_campaign_is_the_old_shape_and_still_decodes() {
    let b = sample(1);
    assert!(b.events[0].context.campaign.is_empty());
    let cbor = frame_cbor(&encode_batch(&b).unwrap());
    assert!(
        !cbor.windows(8).any(|w| w == b"campaign"),
        "an empty campaign is not written"
    );
    let old: ciborium::Value = ciborium::from_reader(cbor.as_slice()).unwrap();
    let context = old
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_text() == Some("events"));
    let event = &context.unwrap().1.as_array().unwrap()[0];
    let context = event
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_text() == Some("context"));
    assert_eq!(context.unwrap().1.as_map().unwrap().len(), 11);
    assert_eq!(cbor::read_batch(&cbor), Some(b.clone()));
    assert_eq!(ciborium_read(&cbor), Some(b));
}

/// The second event's campaign map in a batch's ciborium value.
fn second_campaign(
    v: &mut ciborium::Value,
) -> Option<&mut Vec<(ciborium::Value, ciborium::Value)>> {
    let field = |m: &[(ciborium::Value, ciborium::Value)], k: &str| {
        m.iter().position(|(key, _)| key.as_text() == Some(k))
    };
    let top = v.as_map_mut()?;
    let i = field(top, "events")?;
    let event = top[i].1.as_array_mut()?.get_mut(1)?.as_map_mut()?;
    let i = field(event, "context")?;
    let context = event[i].1.as_map_mut()?;
    let i = field(context, "campaign")?;
    context[i].1.as_map_mut()
}

/// A campaign from another writer (some fields only, another order) is
/// left to ciborium, which fills the missing fields with "".
#[test]
fn a_partial_campaign_is_left_to_ciborium() {
    let b = sample(2);
    assert_eq!(b.events[1].context.campaign.name, "winter-1");
    let mut value = ciborium::Value::serialized(&b).unwrap();
    let fields = second_campaign(&mut value).unwrap();
    fields.retain(|(_, v)| v.as_text() != Some(""));
    fields.reverse();
    assert_eq!(fields.len(), 2);
    let mut cbor = Vec::new();
    ciborium::into_writer(&value, &mut cbor).unwrap();
    assert_eq!(cbor::read_batch(&cbor), None);
    assert_eq!(ciborium_read(&cbor), Some(b));
}

#[test]
fn trailing_bytes_and_truncations_are_not_read_directly() {
    let cbor = frame_cbor(&encode_batch(&sample(3)).unwrap());
    let mut longer = cbor.clone();
    longer.push(0);
    assert_eq!(cbor::read_batch(&longer), None);
    for cut in 0..cbor.len() {
        assert_eq!(cbor::read_batch(&cbor[..cut]), None, "cut at {cut}");
    }
}

proptest! {
    #[test]
    fn the_direct_reader_agrees_with_ciborium_on_any_batch(
        events in proptest::collection::vec(arb_event(), 0..30), project in arb_string(),
        recv in any::<i64>(), sent in proptest::option::of(any::<i64>()), asn in any::<u32>(),
        city in arb_string(), bot in any::<bool>(), props in prop_oneof![Just("{}".to_string()), ".{0,300}"]) {
        let mut events = events;
        for e in &mut events {
            e.properties = props.clone();
        }
        let b = WireBatch {
            batch_id: "x".into(), project_id: project, region: "r".into(),
            received_at_ms: recv, sent_at_ms: sent,
            geo: Geo { asn, city, ..Geo::default() },
            device: Device { is_bot: bot, ..Device::default() },
            ip_prefix: String::new(), events,
        };
        let cbor = frame_cbor(&encode_batch(&b).unwrap());
        prop_assert_eq!(cbor::read_batch(&cbor), Some(b.clone()));
        prop_assert_eq!(ciborium_read(&cbor), Some(b));
    }

    #[test]
    fn whatever_the_direct_reader_accepts_ciborium_reads_the_same(
        pos in any::<prop::sample::Index>(), val in any::<u8>(), n in 0usize..4) {
        let mut cbor = frame_cbor(&encode_batch(&sample(n)).unwrap());
        let i = pos.index(cbor.len());
        cbor[i] = val;
        if let Some(direct) = cbor::read_batch(&cbor) {
            prop_assert_eq!(ciborium_read(&cbor), Some(direct));
        }
    }
}

/// The fuzz seeds of a frame and a CBOR body with a campaign (written by
/// hand from `cbor_body_one_event`, its context given a 12th field) are
/// what the edge writes: both readers take them, to the same batch.
#[test]
fn the_campaign_fuzz_seeds_are_the_writers_shape() {
    let body: &[u8] = include_bytes!("../../../fuzz/seeds/decode_frame/cbor_body_campaign");
    let direct = cbor::read_batch(body).expect("the direct reader takes the seed");
    assert_eq!(ciborium_read(body), Some(direct.clone()));
    let c = &direct.events[0].context.campaign;
    assert_eq!(
        (c.source.as_str(), c.name.as_str(), c.content.as_str()),
        ("newsletter", "winter sale", "")
    );
    assert_eq!(frame_cbor(&encode_batch(&direct).unwrap()), body);
    let frame: &[u8] = include_bytes!("../../../fuzz/seeds/decode_frame/one_event_campaign");
    assert_eq!(decode_batch(frame, MAX).unwrap(), direct);
}
