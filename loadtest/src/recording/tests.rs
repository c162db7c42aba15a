use super::*;
use serde_json::json;
use spoor_core::enrich::{Device, Geo};
use spoor_core::event::{Context, Event};

fn event(n: u128, device: &str, ts_ms: i64) -> Event {
    Event {
        event_id: Uuid::from_u128(n),
        event_id_derived: false,
        event: "page_view".into(),
        user_id: String::new(),
        anonymous_id: device.into(),
        session_id: "s1".into(),
        client_ts_ms: Some(ts_ms - 5),
        ts_ms,
        properties: r#"{"path":"/a","price":79.5}"#.into(),
        context: Context {
            page_url: "https://shop.example/a".into(),
            page_path: "/a".into(),
            library_name: "spoor-js".into(),
            screen_width: 390,
            screen_height: 844,
            ..Context::default()
        },
    }
}

fn frame(project: &str, received_at_ms: i64, events: Vec<Event>) -> WireBatch {
    WireBatch {
        batch_id: format!("b{received_at_ms}"),
        project_id: project.into(),
        region: "eu".into(),
        received_at_ms,
        sent_at_ms: Some(received_at_ms - 10),
        geo: Geo {
            country: "DE".into(),
            ..Geo::default()
        },
        device: Device::default(),
        ip_prefix: "203.0.113.0".into(),
        events,
    }
}

#[test]
fn frames_of_one_request_are_joined_and_others_kept_apart() {
    let messages = vec![
        // Request A's two partitions, coalesced with request B's frame.
        StreamMessage {
            published_ms: 1_000,
            batches: vec![
                frame("shop", 900, vec![event(1, "d1", 800)]),
                frame("shop", 905, vec![event(3, "d3", 805)]),
            ],
        },
        StreamMessage {
            published_ms: 1_004,
            batches: vec![frame("shop", 900, vec![event(2, "d2", 801)])],
        },
        // A resend of event 1 in another request arriving in the same
        // millisecond: a copy never joins the request it copies.
        StreamMessage {
            published_ms: 1_250,
            batches: vec![frame("shop", 900, vec![event(1, "d1", 800)])],
        },
        StreamMessage {
            published_ms: 1_300,
            batches: vec![frame("blog", 900, vec![event(4, "d4", 850)])],
        },
    ];
    let requests = requests_from_stream(&messages);
    let summary: Vec<(u64, &str, Vec<String>)> = requests
        .iter()
        .map(|r| {
            let ids = r.body["batch"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap()[34..].to_string())
                .collect();
            (r.offset_ms, r.project.as_str(), ids)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, "shop", vec!["01".into(), "02".into()]),
            (0, "shop", vec!["03".into()]),
            (250, "shop", vec!["01".into()]),
            (300, "blog", vec!["04".into()]),
        ]
    );
    assert_eq!(requests[0].received_at_ms, Some(900));
    assert_eq!(requests[0].headers["content-type"], "application/json");
}

#[test]
fn an_event_is_rebuilt_as_a_client_sends_it() {
    let e = event(7, "d1", 1_795_341_600_000);
    assert_eq!(
        event_json(&e),
        json!({
            "event": "page_view",
            "event_id": "00000000-0000-0000-0000-000000000007",
            "anonymous_id": "d1",
            "session_id": "s1",
            // The stored (skew-corrected) time, and no sent_at: the edge
            // takes it as it is.
            "timestamp": 1_795_341_600_000_i64,
            "properties": {"path": "/a", "price": 79.5},
            "context": {
                "page": {"url": "https://shop.example/a", "path": "/a"},
                "library": {"name": "spoor-js"},
                "screen": {"width": 390, "height": 844}
            }
        })
    );
    // A campaign travels as `context.campaign`, its empty fields left out.
    let mut e = e;
    e.context.campaign = spoor_core::Campaign {
        source: "newsletter".into(),
        name: "winter".into(),
        ..spoor_core::Campaign::default()
    };
    assert_eq!(
        event_json(&e)["context"]["campaign"],
        json!({"source": "newsletter", "name": "winter"})
    );
}

#[test]
fn a_written_recording_reads_back() {
    let requests = requests_from_stream(&[StreamMessage {
        published_ms: 5,
        batches: vec![frame("shop", 900, vec![event(1, "d1", 800)])],
    }]);
    let header = RecordingHeader {
        spoor_recording: FORMAT_VERSION,
        source: "nats stream SPOOR_EVENTS".into(),
        since: Some("2026-11-22T10:00:00Z".into()),
        until: None,
        requests: 1,
        events: 1,
    };
    let mut text = to_line(&header).unwrap() + "\n";
    for r in &requests {
        text += &(to_line(r).unwrap() + "\n");
    }
    assert!(!text.contains("\"line\""), "{text}");
    let (read, bad) = parse(&text);
    assert!(bad.is_empty(), "{bad}");
    assert_eq!(read.header, Some(header));
    let mut want = requests;
    want[0].line = 2;
    assert_eq!(read.requests, want);
    assert_eq!(read.events(), 1);
}

#[test]
fn bad_lines_are_named_by_number_and_reason_and_good_ones_kept() {
    let good = |offset: u64| {
        json!({"offset_ms": offset, "project": "shop", "headers": {"Content-Type": "application/json"},
               "body": {"batch": [{"event": "x", "event_id": "00000000-0000-0000-0000-000000000001",
                                   "anonymous_id": "d", "timestamp": "2026-11-22T10:00:00Z"}]}})
        .to_string()
    };
    let lines = [
        good(20),                                                          // 1
        "{\"offset_ms\": 1, \"project\": \"shop\", \"body\": {\"batch\": [}".into(), // 2
        "".into(),                                                         // 3: blank, skipped
        json!({"offset_ms": 2, "project": "shop", "headers": {"X-Spoor-Write-Key": "wk_live"},
               "body": {"batch": []}}).to_string(),                       // 4
        json!({"offset_ms": 3, "project": "shop", "body": {"writeKey": "wk", "batch": []}}).to_string(), // 5
        json!({"offset_ms": -1, "project": "shop", "body": {"batch": []}}).to_string(), // 6
        json!({"offset_ms": 4, "project": "", "body": {"batch": []}}).to_string(), // 7
        json!({"offset_ms": 5, "project": "shop", "body": {"batch": {}}}).to_string(), // 8
        json!({"offset_ms": 6, "project": "shop", "body": {"batch": [1]}}).to_string(), // 9
        json!({"offset_ms": 7, "project": "shop", "body": {"batch": [{"timestamp": "yesterday"}]}}).to_string(), // 10
        json!({"offset_ms": 8, "project": "shop", "body": {"batch": [{"event_id": 5}]}}).to_string(), // 11
        json!({"spoor_recording": 1}).to_string(),                         // 12
        json!({"offset_ms": 9, "project": "shop", "body": {"batch": []}, "extra": 1}).to_string(), // 13
        "[1, 2]".into(),                                                   // 14
        json!({"offset_ms": 10, "project": "shop", "headers": {"x-note": "a\u{1}b"}, "body": {"batch": []}}).to_string(), // 15
        good(10),                                                          // 16
    ];
    let (recording, bad) = parse(&lines.join("\n"));
    let got: Vec<String> = bad.first.iter().map(ToString::to_string).collect();
    let expect_prefixes = [
        "line 2: not JSON: expected value (column ",
        "line 4: header x-spoor-write-key is a secret",
        "line 5: the body carries a write key",
        "line 6: not a recorded request: invalid value: integer `-1`",
        "line 7: `project` is empty",
        "line 8: `body.batch` must be an array of events",
        "line 9: event 0 of body.batch is not a JSON object",
        "line 10: event 0's timestamp is neither epoch milliseconds nor RFC 3339",
        "line 11: event 0's event_id is not a string",
        "line 12: a recording header (`spoor_recording`) may only be the first line",
        "line 13: not a recorded request: unknown field `extra`",
        "line 14: a line must be a JSON object",
        "line 15: header x-note's value is not printable ASCII",
    ];
    assert_eq!(bad.count, expect_prefixes.len(), "{got:#?}");
    for (g, want) in got.iter().zip(expect_prefixes) {
        assert!(
            g.starts_with(want),
            "got {g:?}, want it to start with {want:?}"
        );
    }
    // The good lines survive, in offset order, with header names lower-cased.
    let kept: Vec<(usize, u64)> = recording
        .requests
        .iter()
        .map(|r| (r.line, r.offset_ms))
        .collect();
    assert_eq!(kept, vec![(16, 10), (1, 20)]);
    assert_eq!(
        recording.requests[0].headers["content-type"],
        "application/json"
    );
    assert!(bad
        .to_string()
        .starts_with("13 bad line(s) in the recording\n  line 2: "));
}

#[test]
fn a_newer_format_is_refused_by_version() {
    let (_, bad) = parse(r#"{"spoor_recording": 2, "source": "x"}"#);
    assert_eq!(
        bad.first[0].to_string(),
        "line 1: recording format version 2 is not one this spoor-loadtest reads (1)"
    );
}

fn request(body: Value, received_at_ms: Option<i64>) -> RecordedRequest {
    RecordedRequest {
        offset_ms: 0,
        project: "shop".into(),
        received_at_ms,
        headers: BTreeMap::new(),
        body,
        line: 3,
    }
}

#[test]
fn fresh_ids_are_fresh_and_copies_stay_copies() {
    let id = |n: u128| Uuid::from_u128(n).to_string();
    let a = request(
        json!({"batch": [{"event": "x", "event_id": id(1)}, {"event": "y", "event_id": id(2)}]}),
        None,
    );
    let b = request(json!({"batch": [{"event": "x", "event_id": id(1)}]}), None);
    let mut map = IdMap::new();
    let mut next = 100u128;
    let mut fresh = || {
        next += 1;
        Uuid::from_u128(next)
    };
    let (body_a, ids_a) = rewrite(&a, Ids::Fresh, &mut map, &mut fresh, None).unwrap();
    let (body_b, ids_b) = rewrite(&b, Ids::Fresh, &mut map, &mut fresh, None).unwrap();
    assert_eq!(ids_a, vec![Uuid::from_u128(101), Uuid::from_u128(102)]);
    assert_eq!(
        ids_b,
        vec![Uuid::from_u128(101)],
        "a resend keeps its copy's id"
    );
    assert_eq!(body_a["batch"][1]["event_id"], id(102));
    assert_eq!(body_b["batch"][0]["event_id"], id(101));
    assert_eq!(body_a["batch"][1]["event"], "y", "nothing else changes");

    let (_, kept) = rewrite(&a, Ids::Keep, &mut map, &mut fresh, None).unwrap();
    assert_eq!(kept, vec![Uuid::from_u128(1), Uuid::from_u128(2)]);
    let no_id = request(json!({"batch": [{"event": "x"}]}), None);
    let err = rewrite(&no_id, Ids::Keep, &mut map, &mut fresh, None).unwrap_err();
    assert!(err.contains("event 0 has no event_id; --keep-ids"), "{err}");
    let (with_id, _) = rewrite(&no_id, Ids::Fresh, &mut map, &mut fresh, None).unwrap();
    assert!(with_id["batch"][0]["event_id"].is_string());
}

#[test]
fn shifting_moves_every_time_by_the_same_amount() {
    let r = request(
        json!({"sent_at": "2026-11-22T10:00:05Z", "batch": [
            {"event": "x", "event_id": Uuid::from_u128(1).to_string(), "timestamp": 1_000},
            {"event": "y", "event_id": Uuid::from_u128(2).to_string(), "timestamp": "1970-01-01T00:00:02Z"},
            {"event": "z", "event_id": Uuid::from_u128(3).to_string()}]}),
        None,
    );
    assert_eq!(
        arrival_ms(&r),
        Some(2_000),
        "newest event time without received_at"
    );
    assert_eq!(arrival_ms(&request(json!({"batch": []}), Some(7))), Some(7));
    let mut map = IdMap::new();
    let (body, _) = rewrite(&r, Ids::Keep, &mut map, &mut Uuid::nil, Some(500)).unwrap();
    assert_eq!(body["batch"][0]["timestamp"], 1_500);
    assert_eq!(body["batch"][1]["timestamp"], 2_500);
    assert!(
        body["batch"][2].get("timestamp").is_none(),
        "no time: the edge's"
    );
    assert_eq!(body["sent_at"], 1_795_341_605_500_i64);
}
