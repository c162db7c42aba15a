use super::*;
use crate::codec::decode_batch;
use crate::Event;
use std::io::Write;

const NOW: i64 = 1_763_800_000_000; // 2025-11-22T08:26:40Z

fn meta() -> RequestMeta<'static> {
    RequestMeta {
        project_id: "shop",
        region: "eu",
        partitions: 4,
        received_at_ms: NOW,
        content_type: Some("application/json"),
        content_encoding: None,
        user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        ip: "203.0.113.77",
        geo: Geo { country: "DE".into(), ..Geo::default() },
    }
}

fn batch_of(events: &[&str]) -> Vec<u8> {
    format!(r#"{{"batch":[{}]}}"#, events.join(",")).into_bytes()
}

fn decode_all(ing: &Ingested) -> Vec<Event> {
    ing.messages
        .iter()
        .flat_map(|m| decode_batch(&m.frame, 1 << 24).unwrap().events)
        .collect()
}

const ID: &str = "0b9e1d6a-3c43-4c7e-9f0e-6d1f2f3a4b5c";

/// One row per rule: an event and the reason it must be rejected for, or
/// `None` when it must be accepted.
#[test]
fn event_rules_table() {
    let long = "x".repeat(300);
    let deep = format!("{}1{}", "[".repeat(9), "]".repeat(9));
    let big_string = "y".repeat(9000);
    let table: Vec<(&str, String, Option<&str>)> = vec![
        ("minimal", format!(r#"{{"event":"page_view","event_id":"{ID}","anonymous_id":"d1"}}"#), None),
        ("user only", r#"{"event":"login","user_id":"u1"}"#.into(), None),
        ("numeric ids", r#"{"event":"x","user_id":42,"session_id":1700000000000}"#.into(), None),
        ("rfc3339 ts", r#"{"event":"x","anonymous_id":"d","timestamp":"2025-11-22T08:00:00Z"}"#.to_string(), None),
        ("epoch ts", format!(r#"{{"event":"x","anonymous_id":"d","timestamp":{}}}"#, NOW - 1000), None),
        ("null properties", r#"{"event":"x","anonymous_id":"d","properties":null}"#.into(), None),
        ("full context", r#"{"event":"x","anonymous_id":"d","context":{"page":{"url":"https://s.test/a","path":"/a","referrer":"","title":"A"},"app":{"name":"shop","version":"1.2"},"library":{"name":"spoor-js","version":"0.1"},"locale":"de-DE","screen":{"width":390,"height":844},"unknown":1}}"#.into(), None),
        ("not an object", "[1,2]".into(), Some("invalid_event")),
        ("missing name", r#"{"anonymous_id":"d"}"#.into(), Some("missing_event_name")),
        ("bad name", r#"{"event":"9lives","anonymous_id":"d"}"#.into(), Some("invalid_event_name")),
        ("name not string", r#"{"event":5,"anonymous_id":"d"}"#.into(), Some("invalid_event")),
        ("bad event_id", r#"{"event":"x","event_id":"abc","anonymous_id":"d"}"#.into(), Some("invalid_event_id")),
        ("no identity", r#"{"event":"x"}"#.into(), Some("missing_identity")),
        ("empty identity", r#"{"event":"x","user_id":"","anonymous_id":""}"#.into(), Some("missing_identity")),
        ("long id", format!(r#"{{"event":"x","anonymous_id":"{long}"}}"#), Some("id_too_long")),
        ("control id", r#"{"event":"x","anonymous_id":"a\u0000b"}"#.into(), Some("invalid_id")),
        ("bad ts", r#"{"event":"x","anonymous_id":"d","timestamp":"tomorrow"}"#.into(), Some("invalid_timestamp")),
        ("ts in seconds", r#"{"event":"x","anonymous_id":"d","timestamp":1763800000}"#.into(), Some("timestamp_out_of_range")),
        ("far future", format!(r#"{{"event":"x","anonymous_id":"d","timestamp":{}}}"#, NOW + 2 * 86_400_000), Some("timestamp_out_of_range")),
        ("props array", r#"{"event":"x","anonymous_id":"d","properties":[1]}"#.into(), Some("invalid_properties")),
        ("props deep", format!(r#"{{"event":"x","anonymous_id":"d","properties":{{"a":{deep}}}}}"#), Some("properties_too_deep")),
        ("props long string", format!(r#"{{"event":"x","anonymous_id":"d","properties":{{"a":"{big_string}"}}}}"#), Some("string_too_long")),
        ("context long", format!(r#"{{"event":"x","anonymous_id":"d","context":{{"page":{{"url":"{big_string}"}}}}}}"#), Some("string_too_long")),
        ("context wrong type", r#"{"event":"x","anonymous_id":"d","context":{"screen":{"width":"wide"}}}"#.into(), Some("invalid_event")),
        ("too large", format!(r#"{{"event":"x","anonymous_id":"d","properties":{{"a":"{}","b":"{}","c":"{}","d":"{}"}}}}"#, big_string, big_string, big_string, big_string), Some("event_too_large")),
    ];
    for (name, ev, expect) in &table {
        let body = batch_of(&[ev]);
        let ing = ingest(Endpoint::Batch, &body, &meta(), &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: whole request failed: {e}"));
        match expect {
            None => {
                assert_eq!(
                    ing.receipt.accepted, 1,
                    "{name}: {:?}",
                    ing.receipt.rejected
                );
            }
            Some(reason) => {
                assert_eq!(ing.receipt.accepted, 0, "{name}");
                assert_eq!(ing.receipt.rejected.len(), 1, "{name}");
                assert_eq!(
                    &ing.receipt.rejected[0].reason, reason,
                    "{name}: {}",
                    ing.receipt.rejected[0].message
                );
                assert!(!ing.receipt.rejected[0].message.is_empty());
            }
        }
    }
}

#[test]
fn good_events_survive_bad_neighbours() {
    let body = batch_of(&[
        &format!(r#"{{"event":"a","event_id":"{ID}","anonymous_id":"d1"}}"#),
        r#"{"event":"b","event_id":"nope","anonymous_id":"d1"}"#,
        r#"{"event":"c","user_id":"u2"}"#,
        r#"17"#,
    ]);
    let ing = ingest(Endpoint::Batch, &body, &meta(), &Limits::default()).unwrap();
    assert_eq!(ing.receipt.accepted, 2);
    let idx: Vec<usize> = ing.receipt.rejected.iter().map(|r| r.index).collect();
    assert_eq!(idx, vec![1, 3]);
    // Only accepted events name the batch (a rejected one cannot make it critical).
    let names: Vec<&str> = ing.event_names.iter().map(String::as_str).collect();
    assert_eq!(names, vec!["a", "c"]);
    assert_eq!(ing.receipt.rejected[0].event_id.as_deref(), Some("nope"));
    let events = decode_all(&ing);
    let mut names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "c"]);
}

#[test]
fn enrichment_and_skew() {
    // Client clock 1 h fast.
    let h = 3_600_000;
    let body = format!(
        r#"{{"sent_at":{},"batch":[{{"event":"x","anonymous_id":"d","timestamp":{}}}]}}"#,
        NOW + h,
        NOW + h - 5000
    );
    let ing = ingest(
        Endpoint::Batch,
        body.as_bytes(),
        &meta(),
        &Limits::default(),
    )
    .unwrap();
    let msg = &ing.messages[0];
    let b = decode_batch(&msg.frame, 1 << 24).unwrap();
    assert_eq!(b.events[0].ts_ms, NOW - 5000);
    assert_eq!(b.events[0].client_ts_ms, Some(NOW + h - 5000));
    assert_eq!(b.sent_at_ms, Some(NOW + h));
    assert_eq!(b.received_at_ms, NOW);
    assert_eq!(b.ip_prefix, "203.0.113.0");
    assert_eq!(b.geo.country, "DE");
    assert_eq!(b.device.browser, "Chrome");
    assert_eq!(b.device.device_type, "desktop");
    assert_eq!(b.project_id, "shop");
    assert_eq!(msg.msg_id, b.batch_id);
    assert!(msg.subject.starts_with("spoor.events.eu."));
    assert!(b.events[0].event_id_derived);
}

#[test]
fn bad_sent_at_is_a_warning_not_a_loss() {
    let body = br#"{"sent_at":"whenever","batch":[{"event":"x","anonymous_id":"d"}]}"#;
    let ing = ingest(Endpoint::Batch, body, &meta(), &Limits::default()).unwrap();
    assert_eq!(ing.receipt.accepted, 1);
    assert_eq!(ing.receipt.warnings.len(), 1);
}

#[test]
fn derived_ids_repeat_for_resends_and_batch_ids_too() {
    let body = batch_of(&[r#"{"event":"x","anonymous_id":"d","timestamp":1763799990000}"#]);
    let a = ingest(Endpoint::Batch, &body, &meta(), &Limits::default()).unwrap();
    let b = ingest(Endpoint::Batch, &body, &meta(), &Limits::default()).unwrap();
    assert_eq!(decode_all(&a)[0].event_id, decode_all(&b)[0].event_id);
    assert_eq!(a.messages[0].msg_id, b.messages[0].msg_id);
}

#[test]
fn events_are_grouped_by_device_partition() {
    let evs: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"event":"x","anonymous_id":"dev{i}"}}"#))
        .collect();
    let refs: Vec<&str> = evs.iter().map(String::as_str).collect();
    let ing = ingest(
        Endpoint::Batch,
        &batch_of(&refs),
        &meta(),
        &Limits::default(),
    )
    .unwrap();
    assert!(ing.messages.len() > 1 && ing.messages.len() <= 4);
    for m in &ing.messages {
        let b = decode_batch(&m.frame, 1 << 24).unwrap();
        for e in &b.events {
            assert_eq!(
                route::subject("eu", route::partition_of(&e.anonymous_id, 4)),
                m.subject
            );
        }
    }
    assert_eq!(ing.messages.iter().map(|m| m.events).sum::<usize>(), 40);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// (case, endpoint, body, content type, content encoding, status, error code)
type RequestCase<'a> = (
    &'a str,
    Endpoint,
    Vec<u8>,
    Option<&'a str>,
    Option<&'a str>,
    u16,
    &'a str,
);

#[test]
fn request_errors_table() {
    let l = Limits::default();
    let ok_body = batch_of(&[r#"{"event":"x","anonymous_id":"d"}"#]);
    let many: Vec<&str> = (0..501)
        .map(|_| r#"{"event":"x","anonymous_id":"d"}"#)
        .collect();
    let bomb = gzip(&vec![b' '; 600 * 1024]);
    let cases: Vec<RequestCase> = vec![
        (
            "form content type",
            Endpoint::Batch,
            ok_body.clone(),
            Some("application/x-www-form-urlencoded"),
            None,
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            Endpoint::Batch,
            ok_body.clone(),
            None,
            None,
            415,
            "unsupported_media_type",
        ),
        (
            "brotli",
            Endpoint::Batch,
            ok_body.clone(),
            Some("application/json"),
            Some("br"),
            415,
            "unsupported_encoding",
        ),
        (
            "broken json",
            Endpoint::Batch,
            b"{\"batch\":[{\"event\":}]}".to_vec(),
            Some("application/json"),
            None,
            400,
            "invalid_json",
        ),
        (
            "not utf8",
            Endpoint::Batch,
            b"{\"batch\":[\xff]}".to_vec(),
            Some("application/json"),
            None,
            400,
            "invalid_json",
        ),
        (
            "array body",
            Endpoint::Batch,
            b"[1]".to_vec(),
            Some("application/json"),
            None,
            400,
            "invalid_body",
        ),
        (
            "missing batch",
            Endpoint::Batch,
            b"{}".to_vec(),
            Some("application/json"),
            None,
            400,
            "invalid_body",
        ),
        (
            "batch not array",
            Endpoint::Batch,
            b"{\"batch\":{}}".to_vec(),
            Some("application/json"),
            None,
            400,
            "invalid_body",
        ),
        (
            "501 events",
            Endpoint::Batch,
            batch_of(&many),
            Some("application/json"),
            None,
            413,
            "payload_too_large",
        ),
        (
            "raw too big",
            Endpoint::Batch,
            vec![b' '; 513 * 1024],
            Some("application/json"),
            None,
            413,
            "payload_too_large",
        ),
        (
            "gzip bomb",
            Endpoint::Batch,
            bomb,
            Some("application/json"),
            Some("gzip"),
            413,
            "payload_too_large",
        ),
        (
            "bad gzip",
            Endpoint::Batch,
            b"\x1f\x8bnot gzip".to_vec(),
            Some("application/json"),
            Some("gzip"),
            400,
            "invalid_gzip",
        ),
        (
            "track array",
            Endpoint::Track,
            b"[]".to_vec(),
            Some("application/json"),
            None,
            400,
            "invalid_body",
        ),
    ];
    for (name, ep, body, ct, ce, status, code) in cases {
        let m = RequestMeta {
            content_type: ct,
            content_encoding: ce,
            ..meta()
        };
        let err = ingest(ep, &body, &m, &l).map(|_| ()).unwrap_err();
        assert_eq!((err.status(), err.code()), (status, code), "{name}: {err}");
    }
}

#[test]
fn json_errors_say_where() {
    let err = ingest(
        Endpoint::Batch,
        b"{\"batch\":[\n{\"event\": x}]}",
        &meta(),
        &Limits::default(),
    )
    .map(|_| ())
    .unwrap_err();
    match err {
        RequestError::InvalidJson { line, column, .. } => assert_eq!((line, column), (2, 11)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn gzip_and_text_plain_accepted() {
    let body = gzip(&batch_of(&[r#"{"event":"x","anonymous_id":"d"}"#]));
    let m = RequestMeta {
        content_type: Some("text/plain;charset=UTF-8"),
        content_encoding: Some("gzip"),
        ..meta()
    };
    assert_eq!(
        ingest(Endpoint::Batch, &body, &m, &Limits::default())
            .unwrap()
            .receipt
            .accepted,
        1
    );
}

#[test]
fn track_endpoint_with_own_sent_at() {
    let body = format!(
        r#"{{"event":"x","anonymous_id":"d","timestamp":{},"sent_at":{}}}"#,
        NOW + 10_000,
        NOW + 20_000
    );
    let ing = ingest(
        Endpoint::Track,
        body.as_bytes(),
        &meta(),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(ing.receipt.accepted, 1);
    assert_eq!(decode_all(&ing)[0].ts_ms, NOW - 10_000);
}

#[test]
fn receipt_json_shape() {
    let body = batch_of(&[
        r#"{"event":"x","anonymous_id":"d"}"#,
        r#"{"event":"x","event_id":"bad","anonymous_id":"d"}"#,
    ]);
    let ing = ingest(Endpoint::Batch, &body, &meta(), &Limits::default()).unwrap();
    let json = serde_json::to_value(&ing.receipt).unwrap();
    assert_eq!(json["accepted"], 1);
    assert_eq!(json["rejected"][0]["index"], 1);
    assert_eq!(json["rejected"][0]["event_id"], "bad");
    assert_eq!(json["rejected"][0]["reason"], "invalid_event_id");
    assert!(json.get("warnings").is_none());
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let _ = ingest(Endpoint::Batch, &body, &meta(), &Limits::default());
        let _ = ingest(Endpoint::Track, &body, &meta(), &Limits::default());
    }

    #[test]
    fn arbitrary_event_strings_never_panic(ev in "\\{\"event\":\"[a-z]{1,5}\",\"anonymous_id\":\".{0,10}\"(,\"properties\":\\{.{0,20}\\})?\\}") {
        let body = batch_of(&[&ev]);
        let _ = ingest(Endpoint::Batch, &body, &meta(), &Limits::default());
    }
}

/// A small valid batch: a few sample events, an unknown member and
/// `sent_at`, in varied order.
fn sample_body(n: usize) -> String {
    crate::sample::batch_body(n, NOW, "0a0b0c0d")
}

/// ASCII that changes JSON structure, for mutations.
const STRUCTURAL: &[u8] = b"\"\\{}[],: \n1e-tnfu.0x";

fn assert_same(body: &[u8], limits: &Limits) -> Result<(), proptest::test_runner::TestCaseError> {
    let fast = ingest(Endpoint::Batch, body, &meta(), limits);
    let reference = ingest_reference(Endpoint::Batch, body, &meta(), limits);
    proptest::prop_assert_eq!(
        &fast,
        &reference,
        "body {:?}",
        String::from_utf8_lossy(body)
    );
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(3000))]

    /// The envelope scanner and the serde reference path answer the same,
    /// byte for byte, for valid bodies and for bodies with any byte
    /// replaced by JSON punctuation, cut off, or with text inserted.
    #[test]
    fn the_fast_envelope_answers_what_the_reference_path_answers(
        n in 0usize..4,
        edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 0usize..STRUCTURAL.len(), 0u8..3), 0..3),
        cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
        prefix in proptest::sample::select(vec!["", " ", "\n", "{\"x\":1,", "{\"sent_at\":5,", "{\"batch\":[],"]),
        max_events in 1usize..4,
    ) {
        let mut body = sample_body(n);
        if !prefix.is_empty() && prefix.starts_with('{') {
            body = format!("{prefix}{}", &body[1..]);
        } else {
            body = format!("{prefix}{body}");
        }
        let mut bytes = body.into_bytes();
        for (at, c, how) in edits {
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = STRUCTURAL[c],
                1 => bytes.insert(i, STRUCTURAL[c]),
                _ => { bytes.remove(i); }
            }
        }
        if let Some(cut) = cut {
            if n % 2 == 0 {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
        }
        let limits = Limits { max_batch_events: max_events, ..Limits::default() };
        assert_same(&bytes, &limits)?;
        assert_same(&bytes, &Limits::default())?;
    }
}

#[test]
fn the_fast_envelope_leaves_odd_bodies_to_the_reference_path() {
    let ev = r#"{"event":"x","anonymous_id":"d"}"#;
    for body in [
        format!(r#"{{"batch":[{ev}],"batch":[{ev}]}}"#),
        format!(r#"{{"b\u0061tch":[{ev}]}}"#),
        format!(r#"{{"sent_at":1,"sent_at":2,"batch":[{ev}]}}"#),
        format!(r#"{{"batch":[{ev}]}} x"#),
        format!(r#"{{"batch":[{ev}, tru]}}"#),
        format!(r#"{{"batch":[{ev}, 5, "s", null, [1]]}}"#),
        r#"{"batch":[{"event":5,"x":tru}]}"#.to_string(),
        r#"{"batch":[{"event":"x","anonymous_id":"d","properties":{"a":[1}]}]}"#.to_string(),
        format!(r#"{{"batch":{ev}}}"#),
        r#"{"batch":null}"#.to_string(),
        format!(r#"{{"other":[1,2,{{"a":"\u0000"}}],"batch":[{ev}]}}"#),
        format!(r#"{{"batch":[{}]}}"#, "[".repeat(120) + &"]".repeat(120)),
        format!(
            r#"{{"batch":[{{"event":"x","anonymous_id":"d","properties":{}}}]}}"#,
            "{\"a\":".repeat(126) + "1" + &"}".repeat(126)
        ),
        "{}".to_string(),
        "[]".to_string(),
        format!(r#"{{"batch":[{ev},]}}"#),
        format!(r#"{{"batch":[{ev}] ,}}"#),
    ] {
        assert_same(body.as_bytes(), &Limits::default()).unwrap();
    }
}

#[test]
fn a_repeated_id_in_one_request_is_a_duplicate_kept_once() {
    let other = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
    let body = batch_of(&[
        &format!(r#"{{"event":"first","event_id":"{ID}","anonymous_id":"d1"}}"#),
        &format!(r#"{{"event":"second","event_id":"{ID}","anonymous_id":"d2"}}"#),
        // Same derived id (same text): the second is a duplicate too.
        r#"{"event":"x","anonymous_id":"d3","timestamp":1763799990000}"#,
        r#"{"event":"x","anonymous_id":"d3","timestamp":1763799990000}"#,
        // A rejected copy does not make a later valid one a duplicate.
        &format!(r#"{{"event":"9bad","event_id":"{other}","anonymous_id":"d4"}}"#),
        &format!(r#"{{"event":"good","event_id":"{other}","anonymous_id":"d4"}}"#),
    ]);
    let ing = ingest(Endpoint::Batch, &body, &meta(), &Limits::default()).unwrap();
    assert_eq!(ing.receipt.accepted, 3, "{:?}", ing.receipt);
    assert_eq!(ing.receipt.rejected.len(), 1);
    assert_eq!(ing.receipt.rejected[0].index, 4);
    let dups: Vec<(usize, usize)> = ing
        .receipt
        .duplicates
        .iter()
        .map(|d| (d.index, d.duplicate_of))
        .collect();
    assert_eq!(dups, [(1, 0), (3, 2)]);
    assert_eq!(ing.receipt.duplicates[0].event_id, ID);
    // Only the first copy is sent on.
    let stored = decode_all(&ing);
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().any(|e| e.event == "first"));
    assert!(!stored.iter().any(|e| e.event == "second"));
    let json = serde_json::to_value(&ing.receipt).unwrap();
    assert_eq!(json["duplicates"][0]["duplicate_of"], 0);
    assert_eq!(json["duplicates"][0]["index"], 1);
    // A receipt without duplicates keeps its shape.
    let one = ingest(
        Endpoint::Batch,
        &batch_of(&[r#"{"event":"x","anonymous_id":"d"}"#]),
        &meta(),
        &Limits::default(),
    )
    .unwrap();
    assert!(serde_json::to_value(&one.receipt)
        .unwrap()
        .get("duplicates")
        .is_none());
}

/// Spoor's own events: `context.campaign` as sent, else the page URL's
/// `utm_*` parameters (what the web SDK's events carry), else nothing; a
/// campaign field is held to the string limit like any context string.
#[test]
fn the_campaign_is_the_events_own_else_its_page_urls() {
    let url = "https://shop.example/sale?utm_source=newsletter&utm_medium=email&utm_campaign=winter%20sale&utm_term=boots&utm_content=hero";
    let body = batch_of(&[
        &format!(
            r#"{{"event":"page_view","anonymous_id":"d1","context":{{"page":{{"url":"{url}"}}}}}}"#
        ),
        &format!(
            r#"{{"event":"signup","anonymous_id":"d1","context":{{"page":{{"url":"{url}"}},"campaign":{{"source":"ads","name":"spring"}}}}}}"#
        ),
        r#"{"event":"plain","anonymous_id":"d1","context":{"page":{"url":"https://shop.example/?q=1"}}}"#,
        &format!(
            r#"{{"event":"long","anonymous_id":"d1","context":{{"campaign":{{"term":"{}"}}}}}}"#,
            "x".repeat(Limits::default().max_string_bytes + 1)
        ),
    ]);
    let ing = ingest(Endpoint::Batch, &body, &meta(), &Limits::default()).unwrap();
    assert_eq!(ing.receipt.accepted, 3, "{:?}", ing.receipt);
    assert_eq!(ing.receipt.rejected[0].index, 3);
    assert_eq!(ing.receipt.rejected[0].reason, "string_too_long");
    let events = decode_all(&ing);
    let campaign = |name: &str| {
        events
            .iter()
            .find(|e| e.event == name)
            .unwrap()
            .context
            .campaign
            .clone()
    };
    assert_eq!(
        campaign("page_view"),
        crate::Campaign {
            source: "newsletter".into(),
            medium: "email".into(),
            name: "winter sale".into(),
            term: "boots".into(),
            content: "hero".into(),
        }
    );
    assert_eq!(
        campaign("signup"),
        crate::Campaign {
            source: "ads".into(),
            name: "spring".into(),
            ..crate::Campaign::default()
        }
    );
    assert!(campaign("plain").is_empty());
}
