use super::*;
use crate::{decode_batch, Campaign, Event, Geo, WireBatch};
use serde_json::json;
use std::io::Write as _;

const NOW: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

fn meta(user_agent: &str) -> RequestMeta<'static> {
    RequestMeta {
        project_id: "shop",
        region: "r1",
        partitions: 4,
        received_at_ms: NOW,
        content_type: Some("text/plain"),
        content_encoding: None,
        user_agent: Box::leak(user_agent.to_string().into_boxed_str()),
        ip: "198.51.100.7",
        geo: Geo::default(),
    }
}

/// Reads and ingests a body; the stored batches, decoded as the relay
/// reads them, and the receipt.
fn run(call: Call, body: &Value) -> (Receipt, Vec<WireBatch>) {
    run_bytes(
        call,
        body.to_string().as_bytes(),
        None,
        "analytics-node/2.0",
    )
}

fn run_bytes(
    call: Call,
    body: &[u8],
    encoding: Option<&str>,
    user_agent: &str,
) -> (Receipt, Vec<WireBatch>) {
    let req = read(call, body, Some("text/plain"), encoding).expect("readable request");
    let ing = ingest(&req, &meta(user_agent), &Limits::default()).expect("valid request");
    let batches: Vec<WireBatch> = ing
        .messages
        .iter()
        .map(|m| decode_batch(&m.frame, 1 << 24).unwrap())
        .collect();
    let stored: usize = batches.iter().map(|b| b.events.len()).sum();
    assert_eq!(stored, ing.receipt.accepted);
    (ing.receipt, batches)
}

fn events(batches: &[WireBatch]) -> Vec<&Event> {
    batches.iter().flat_map(|b| &b.events).collect()
}

fn props(e: &Event) -> Value {
    serde_json::from_str(&e.properties).unwrap()
}

const MID: &str = "0b3c8d2e-1f4a-4c5b-9d6e-7f8091a2b3c4";

#[test]
fn paths() {
    let table = [
        ("/v1/track", Some(Call::Track)),
        ("/v1/t", Some(Call::Track)),
        ("/t", Some(Call::Track)),
        ("/v1/identify", Some(Call::Identify)),
        ("/v1/i", Some(Call::Identify)),
        ("/v1/page", Some(Call::Page)),
        ("/v1/p", Some(Call::Page)),
        ("/v1/screen", Some(Call::Screen)),
        ("/v1/s", Some(Call::Screen)),
        ("/v1/group", Some(Call::Group)),
        ("/v1/g", Some(Call::Group)),
        ("/v1/alias", Some(Call::Alias)),
        ("/v1/a", Some(Call::Alias)),
        ("/v1/batch", Some(Call::Batch)),
        ("/v1/b", Some(Call::Batch)),
        ("/b", Some(Call::Batch)),
        // Long names only under /v1; nothing else.
        ("/track", None),
        ("/batch", None),
        ("/v1/x", None),
        ("/v2/b", None),
        ("/healthz", None),
        ("/", None),
    ];
    for (path, want) in table {
        assert_eq!(Call::from_path(path), want, "{path}");
    }
}

#[test]
fn shared_paths_follow_the_key_header() {
    let basic = Some("Basic d2tfc2VnOg==");
    // Spoor's key header: Spoor's format.
    assert_eq!(Call::for_request("/v1/batch", Some("wk"), None), None);
    assert_eq!(
        Call::for_request("/v1/track", None, Some("Bearer wk")),
        None
    );
    // Basic auth, or no key header (the key in the body): Segment's.
    assert_eq!(
        Call::for_request("/v1/batch", None, basic),
        Some(Call::Batch)
    );
    assert_eq!(
        Call::for_request("/v1/track", None, None),
        Some(Call::Track)
    );
    // Segment-only paths are Segment's whatever the headers say.
    assert_eq!(
        Call::for_request("/v1/b", Some("wk"), None),
        Some(Call::Batch)
    );
    assert_eq!(
        Call::for_request("/v1/page", None, Some("Bearer wk")),
        Some(Call::Page)
    );
    assert_eq!(Call::for_request("/v1/nope", None, basic), None);
}

#[test]
fn track_maps_ids_time_and_context() {
    let body = json!({
        "type": "track",
        "event": "Order Completed",
        "messageId": MID,
        "userId": "u-42",
        "anonymousId": "a-1",
        "timestamp": "2026-11-22T09:00:00.000Z",
        "properties": {"total": 79.5, "currency": "EUR"},
        "context": {
            "page": {"url": "https://shop.example/checkout?x=1", "path": "/checkout",
                     "referrer": "https://search.example/", "title": "Checkout", "search": "?x=1"},
            "app": {"name": "Shop", "version": 312, "build": "9"},
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "locale": "de-DE",
            "screen": {"width": 1440, "height": 900, "density": 2},
            "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            "campaign": {"name": "winter", "source": "newsletter", "medium": "email",
                         "term": 7, "content": "", "id": "c-7"},
            "ip": "203.0.113.77",
            "timezone": "Europe/Berlin"
        },
        "integrations": {"All": true},
        "writeKey": "wk_in_body"
    });
    let req = read(
        Call::Track,
        body.to_string().as_bytes(),
        Some("text/plain"),
        None,
    )
    .unwrap();
    assert_eq!(req.write_key.as_deref(), Some("wk_in_body"));
    let (receipt, batches) = run(Call::Track, &body);
    assert_eq!(receipt.accepted, 1, "{receipt:?}");
    let e = events(&batches)[0];
    assert_eq!(e.event_id.to_string(), MID);
    assert!(!e.event_id_derived);
    assert_eq!(e.event, "Order Completed");
    assert_eq!(
        (e.user_id.as_str(), e.anonymous_id.as_str()),
        ("u-42", "a-1")
    );
    // `timestamp` given: taken as is.
    assert_eq!(e.ts_ms, NOW - 3_600_000);
    let c = &e.context;
    assert_eq!(c.page_url, "https://shop.example/checkout?x=1");
    assert_eq!(c.page_path, "/checkout");
    assert_eq!(c.page_referrer, "https://search.example/");
    assert_eq!(c.page_title, "Checkout");
    assert_eq!(
        (c.app_name.as_str(), c.app_version.as_str()),
        ("Shop", "312")
    );
    assert_eq!(c.library_name, "analytics.js");
    assert_eq!(c.library_version, "next-1.70.0");
    assert_eq!(c.locale, "de-DE");
    assert_eq!((c.screen_width, c.screen_height), (1440, 900));
    // The campaign's five fields are columns (a number as its text).
    assert_eq!(
        c.campaign,
        Campaign {
            source: "newsletter".into(),
            medium: "email".into(),
            name: "winter".into(),
            term: "7".into(),
            content: String::new(),
        }
    );
    // The device comes from context.userAgent, not the request's (a server
    // library's) User-Agent.
    assert_eq!(batches[0].device.device_type, "mobile");
    assert_eq!(batches[0].device.os, "iPhone");
    let p = props(e);
    assert_eq!(p["total"], json!(79.5));
    assert_eq!(p["currency"], "EUR");
    let seg = &p[SEGMENT_PROPERTY];
    assert_eq!(seg["type"], "track");
    assert_eq!(seg["messageId"], MID);
    assert_eq!(seg["integrations"], json!({"All": true}));
    // The rest of the context is kept; mapped fields are not repeated, and
    // the IP only as its prefix.
    assert_eq!(
        seg["context"],
        json!({
            "page": {"search": "?x=1"},
            "app": {"build": "9"},
            "screen": {"density": 2},
            "campaign": {"id": "c-7"},
            "ip": "203.0.113.0",
            "timezone": "Europe/Berlin"
        })
    );
}

#[test]
fn page_screen_identify_group_alias() {
    let body = json!({"batch": [
        {"type": "page", "name": "Shoes", "category": "Catalog", "anonymousId": "a-1",
         "messageId": "m-page", "properties": {"path": "/shoes"}},
        {"type": "screen", "name": "Cart", "anonymousId": "a-1", "messageId": "m-screen"},
        {"type": "identify", "userId": "u-1", "anonymousId": "a-1", "messageId": "m-id",
         "traits": {"email": "a@example.com", "plan": "pro"}},
        {"type": "group", "userId": "u-1", "groupId": "org-9", "messageId": "m-group",
         "traits": {"name": "Acme"}},
        {"type": "alias", "userId": "u-1", "previousId": "a-1", "messageId": "m-alias"},
        {"type": "group", "userId": "u-1", "messageId": "m-nogroup"},
        {"type": "alias", "userId": "u-1", "messageId": "m-noprev"},
        {"type": "fly", "userId": "u-1", "messageId": "m-fly"},
        {"event": "No Type", "userId": "u-1", "messageId": "m-notype"}
    ]});
    let (receipt, batches) = run(Call::Batch, &body);
    assert_eq!(receipt.accepted, 5, "{receipt:?}");
    let reasons: Vec<(usize, &str, Option<&str>)> = receipt
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str(), r.event_id.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        [
            (5, "missing_group_id", Some("m-nogroup")),
            (6, "missing_previous_id", Some("m-noprev")),
            (7, "invalid_type", Some("m-fly")),
            (8, "invalid_type", Some("m-notype")),
        ]
    );
    let by_name = |n: &str| {
        events(&batches)
            .into_iter()
            .find(|e| e.event == n)
            .unwrap_or_else(|| panic!("no {n}"))
            .clone()
    };
    let page = props(&by_name("page_view"));
    assert_eq!(
        (&page["name"], &page["category"], &page["path"]),
        (&json!("Shoes"), &json!("Catalog"), &json!("/shoes"))
    );
    assert_eq!(page[SEGMENT_PROPERTY]["type"], "page");
    assert_eq!(props(&by_name("screen_view"))["name"], "Cart");
    let identify = props(&by_name("identify"));
    assert_eq!(
        identify[SEGMENT_PROPERTY]["traits"],
        json!({"email": "a@example.com", "plan": "pro"})
    );
    let group = props(&by_name("group"));
    assert_eq!(group[SEGMENT_PROPERTY]["groupId"], "org-9");
    assert_eq!(group[SEGMENT_PROPERTY]["traits"], json!({"name": "Acme"}));
    let alias = by_name("alias");
    assert_eq!(props(&alias)[SEGMENT_PROPERTY]["previousId"], "a-1");
    assert_eq!(alias.user_id, "u-1");
}

/// The identity views on ClickHouse 18.16 read `traits`, `groupId` and
/// `previousId` with flat extractors that take the first `"key":` in the
/// text: `$segment`'s own must come before anything the client wrote, even
/// a context or traits holding keys of the same names.
#[test]
fn identity_fields_come_first_in_the_stored_text() {
    let ctx = json!({"traits": {"email": "ctx@example.com"}, "groupId": "ctx-g",
                     "previousId": "ctx-p", "page": {"path": "/x"}});
    let body = json!({"batch": [
        {"type": "identify", "userId": "u-1", "anonymousId": "a-1", "messageId": "m-1",
         "context": ctx, "traits": {"groupId": "t-g", "plan": "pro"}},
        {"type": "group", "userId": "u-1", "groupId": 42, "messageId": "m-2",
         "context": ctx, "traits": {"groupId": "t-g", "traits": {"n": 1}}},
        {"type": "alias", "userId": "u-1", "previousId": "a-1", "messageId": "m-3",
         "context": ctx},
        {"type": "identify", "userId": "u-2", "messageId": "m-5", "context": ctx},
        {"type": "track", "event": "Bought", "userId": "u-1", "messageId": "m-4",
         "properties": {"$segment": "mine", "a": 1, "Z": 2}}
    ]});
    let (receipt, batches) = run(Call::Batch, &body);
    assert_eq!(receipt.accepted, 5, "{receipt:?}");
    let text = |n: &str| {
        events(&batches)
            .into_iter()
            .find(|e| e.event == n)
            .unwrap_or_else(|| panic!("no {n}"))
            .properties
            .clone()
    };
    // What follows the first `"key":`, as 18.16's visitParamExtractRaw reads it.
    let after = |text: &str, key: &str| {
        let needle = format!("\"{key}\":");
        let at = text
            .find(&needle)
            .unwrap_or_else(|| panic!("no {key} in {text}"));
        text[at + needle.len()..].to_string()
    };
    let bare = events(&batches)
        .into_iter()
        .find(|e| e.user_id == "u-2")
        .unwrap()
        .properties
        .clone();
    assert!(after(&bare, "traits").starts_with("{},"), "{bare}");
    let identify = text("identify");
    assert!(
        identify.starts_with(r#"{"$segment":{"type":"identify","messageId":"m-1","traits":{"groupId":"t-g","plan":"pro"},"context":"#),
        "{identify}"
    );
    assert!(after(&identify, "traits").starts_with(r#"{"groupId":"t-g","plan":"pro"}"#));
    let group = text("group");
    assert!(after(&group, "groupId").starts_with("42,"), "{group}");
    assert!(after(&group, "traits").starts_with(r#"{"groupId":"t-g","traits":{"n":1}}"#));
    let alias = text("alias");
    assert!(
        after(&alias, "previousId").starts_with(r#""a-1","#),
        "{alias}"
    );
    // A track's own properties follow `$segment`, which replaces a client's.
    let track: Value = serde_json::from_str(&text("Bought")).unwrap();
    assert_eq!(track["a"], 1);
    assert_eq!(track["Z"], 2);
    assert_eq!(track[SEGMENT_PROPERTY]["type"], "track");
    for t in [identify, group, alias] {
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1, "{t}");
    }
}

#[test]
fn segment_clock_rule() {
    let h = 3_600_000;
    // timestamp wins; else received - (sentAt - originalTimestamp); else
    // originalTimestamp; else received.
    assert_eq!(event_time(Some(5), Some(7), Some(9), 100), 5);
    assert_eq!(
        event_time(None, Some(10 * h), Some(10 * h + 60_000), NOW),
        NOW - 60_000
    );
    assert_eq!(event_time(None, Some(7), None, 100), 7);
    assert_eq!(event_time(None, None, Some(9), 100), 100);

    // Through a batch: the client's clock is two hours fast; batch-level
    // sentAt, a message's own sentAt, and a message with `timestamp`.
    let fast = |ms: i64| crate::timestamp::format_rfc3339_ms(ms + 2 * h);
    let body = json!({
        "sentAt": fast(NOW),
        "batch": [
            {"type": "track", "event": "a", "userId": "u", "messageId": "m1",
             "originalTimestamp": fast(NOW - 30_000)},
            {"type": "track", "event": "b", "userId": "u", "messageId": "m2",
             "originalTimestamp": fast(NOW - 90_000), "sentAt": fast(NOW - 60_000)},
            {"type": "track", "event": "c", "userId": "u", "messageId": "m3",
             "timestamp": "2026-11-22T08:00:00Z", "originalTimestamp": fast(NOW)},
            {"type": "track", "event": "d", "userId": "u", "messageId": "m4"},
            {"type": "track", "event": "e", "userId": "u", "messageId": "m5",
             "originalTimestamp": "yesterday"}
        ]
    });
    let (receipt, batches) = run(Call::Batch, &body);
    let ts: std::collections::BTreeMap<String, i64> = events(&batches)
        .iter()
        .map(|e| (e.event.clone(), e.ts_ms))
        .collect();
    assert_eq!(ts["a"], NOW - 30_000);
    assert_eq!(ts["b"], NOW - 30_000);
    assert_eq!(ts["c"], NOW - 2 * h);
    assert_eq!(ts["d"], NOW);
    assert_eq!(receipt.rejected.len(), 1);
    assert_eq!(receipt.rejected[0].reason, "invalid_timestamp");
    assert!(receipt.rejected[0].message.contains("originalTimestamp"));
    assert_eq!(batches[0].sent_at_ms, Some(NOW + 2 * h));

    // A single call (analytics.js's /v1/t) carries sentAt in the message.
    let (_, batches) = run(
        Call::Track,
        &json!({"event": "f", "userId": "u", "messageId": "m6",
                "originalTimestamp": fast(NOW - 10_000), "sentAt": fast(NOW)}),
    );
    assert_eq!(batches[0].events[0].ts_ms, NOW - 10_000);
    assert_eq!(
        batches[0].events[0].client_ts_ms,
        Some(NOW - 10_000 + 2 * h)
    );
    assert_eq!(batches[0].sent_at_ms, Some(NOW + 2 * h));
}

#[test]
fn batch_context_and_integrations_merge_into_each_message() {
    let body = json!({
        "context": {"library": {"name": "analytics-node", "version": "2.1"}, "locale": "en-US"},
        "integrations": {"All": false, "Mixpanel": true},
        "batch": [
            {"type": "track", "event": "x", "userId": "u", "messageId": "m1"},
            {"type": "track", "event": "y", "userId": "u", "messageId": "m2",
             "context": {"locale": "fr-FR"}, "integrations": {"All": true}}
        ]
    });
    let (_, batches) = run(Call::Batch, &body);
    let evs = events(&batches);
    let x = evs.iter().find(|e| e.event == "x").unwrap();
    let y = evs.iter().find(|e| e.event == "y").unwrap();
    assert_eq!(x.context.locale, "en-US");
    assert_eq!(y.context.locale, "fr-FR", "the message's own key wins");
    assert_eq!(x.context.library_name, "analytics-node");
    assert_eq!(y.context.library_name, "analytics-node");
    assert_eq!(
        props(x)[SEGMENT_PROPERTY]["integrations"],
        json!({"All": false, "Mixpanel": true})
    );
    assert_eq!(
        props(y)[SEGMENT_PROPERTY]["integrations"],
        json!({"All": true, "Mixpanel": true})
    );
}

#[test]
fn message_ids_that_are_not_uuids_map_to_stable_ids() {
    let msg = |id: &str| json!({"type": "track", "event": "x", "userId": "u", "messageId": id});
    let id_of = |v: &Value| events(&run(Call::Track, v).1)[0].event_id;
    let a = id_of(&msg("ajs-next-1f2e3d"));
    assert_eq!(a, id_of(&msg("ajs-next-1f2e3d")), "a resend keeps its id");
    assert_ne!(a, id_of(&msg("ajs-next-other")));
    // Without messageId the id comes from the message's text, flagged.
    let (_, b) = run(
        Call::Track,
        &json!({"type": "track", "event": "x", "userId": "u"}),
    );
    assert!(events(&b)[0].event_id_derived);
    // The same messageId twice in one request: a duplicate.
    let (receipt, _) = run(Call::Batch, &json!({"batch": [msg("dup"), msg("dup")]}));
    assert_eq!(receipt.accepted, 1);
    assert_eq!(receipt.duplicates.len(), 1);
}

#[test]
fn mobile_context_names_the_device() {
    let body = json!({"batch": [{
        "type": "track", "event": "Opened", "anonymousId": "a", "messageId": MID,
        "context": {"os": {"name": "Android", "version": "14"},
                    "device": {"type": "android", "manufacturer": "Google", "model": "Pixel 8"}}
    }]});
    let (_, batches) = run_bytes(
        Call::Batch,
        body.to_string().as_bytes(),
        None,
        "analytics-kotlin/1.24.1",
    );
    let d = &batches[0].device;
    assert_eq!(
        (d.os.as_str(), d.os_version.as_str(), d.device_type.as_str()),
        ("Android", "14", "mobile")
    );
    let p = props(&batches[0].events[0]);
    assert_eq!(p[SEGMENT_PROPERTY]["context"]["device"]["model"], "Pixel 8");
}

#[test]
fn a_bad_message_costs_only_itself() {
    let big = "x".repeat(MAX_MESSAGE_BYTES);
    let body = json!({"batch": [
        {"type": "track", "event": "ok", "userId": "u", "messageId": "m1"},
        {"type": "track", "event": "big", "userId": "u", "messageId": "m2",
         "properties": {"blob": big}},
        {"type": "track", "event": "9 bad", "userId": "u", "messageId": "m3"},
        {"type": "track", "event": "anon", "messageId": "m4"},
        {"type": "track", "event": "props", "userId": "u", "messageId": "m5", "properties": [1]},
        {"type": "track", "userId": "u", "messageId": "m6"},
        {"type": "track", "event": "ctx", "userId": "u", "messageId": "m7", "context": 5},
        {"type": "track", "event": "uid", "userId": {"a": 1}, "messageId": "m8"},
        "not an object",
        {"type": "track", "event": "ok2", "userId": 42, "messageId": "m10"}
    ]});
    let (receipt, batches) = run(Call::Batch, &body);
    assert_eq!(receipt.accepted, 2, "{receipt:?}");
    let reasons: Vec<&str> = receipt.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "event_too_large",
            "invalid_event_name",
            "missing_identity",
            "invalid_properties",
            "invalid_event_name",
            "invalid_context",
            "invalid_identity",
            "invalid_event"
        ]
    );
    let ok2 = events(&batches)
        .into_iter()
        .find(|e| e.event == "ok2")
        .unwrap();
    assert_eq!(ok2.user_id, "42");
}

#[test]
fn whole_request_failures_answer_400() {
    let bad = |body: &[u8], encoding: Option<&str>, ct: &str| {
        let e = read(Call::Batch, body, Some(ct), encoding).unwrap_err();
        (e.code(), status(&e))
    };
    assert_eq!(
        bad(b"{\"batch\": [", None, "text/plain"),
        ("invalid_json", 400)
    );
    assert_eq!(bad(b"[1]", None, "text/plain"), ("invalid_body", 400));
    assert_eq!(bad(b"{}", None, "text/plain"), ("invalid_body", 400));
    assert_eq!(
        bad(b"{\"batch\": 5}", None, "text/plain"),
        ("invalid_body", 400)
    );
    assert_eq!(
        bad(b"not gzip", Some("gzip"), "text/plain"),
        ("invalid_gzip", 400)
    );
    assert_eq!(
        bad(b"{}", None, "application/xml"),
        ("unsupported_media_type", 400)
    );
    // Segment's 500 KB per batch, counted after gzip.
    let msg = json!({"type": "track", "event": "x", "userId": "u", "properties": {"p": "y".repeat(20_000)}});
    let body = json!({"batch": vec![msg; 26]}).to_string();
    assert!(body.len() > MAX_BATCH_BYTES && body.len() < 512 * 1024);
    assert_eq!(
        bad(&gzip(body.as_bytes()), Some("gzip"), "text/plain"),
        ("payload_too_large", 400)
    );
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}

#[test]
fn gzip_bodies_and_application_json() {
    let body = json!({"batch": [{"type": "track", "event": "x", "userId": "u", "messageId": MID}],
                      "writeKey": "wk"});
    let (receipt, _) = run_bytes(
        Call::Batch,
        &gzip(body.to_string().as_bytes()),
        Some("gzip"),
        "ua",
    );
    assert_eq!(receipt.accepted, 1);
    let req = read(
        Call::Batch,
        body.to_string().as_bytes(),
        Some("application/json; charset=utf-8"),
        None,
    )
    .unwrap();
    assert_eq!(req.write_key.as_deref(), Some("wk"));
    assert_eq!(req.len(), 1);
}

#[test]
fn success_body_is_segments_with_the_receipt() {
    let receipt = Receipt {
        accepted: 2,
        rejected: vec![Rejection {
            index: 1,
            event_id: Some("m".into()),
            reason: "invalid_type".into(),
            message: "no".into(),
        }],
        ..Receipt::default()
    };
    let v: Value = serde_json::from_str(&success_body(&receipt)).unwrap();
    assert_eq!(v["success"], true);
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"][0]["reason"], "invalid_type");
}

/// A JSON value of a few levels, to build messages from.
fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9 :./_-]{0,12}".prop_map(Value::String),
        Just(Value::String("2026-11-22T09:00:00Z".into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("event".to_string()),
                    Just("userId".to_string()),
                    Just("anonymousId".to_string()),
                    Just("messageId".to_string()),
                    Just("timestamp".to_string()),
                    Just("context".to_string()),
                    Just("properties".to_string()),
                    Just("traits".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        path in 0usize..8,
    ) {
        let paths = ["/v1/b", "/v1/t", "/v1/i", "/v1/p", "/v1/s", "/v1/g", "/v1/a", "/b"];
        let call = Call::from_path(paths[path]).unwrap();
        if let Ok(req) = read(call, &body, Some("text/plain"), None) {
            let _ = ingest(&req, &meta("ua"), &Limits::default());
        }
    }

    /// Any batch of message-like objects: every message answered exactly
    /// once, whatever it holds.
    #[test]
    fn every_message_is_answered_once(messages in proptest::collection::vec(json_value(), 0..6)) {
        let body = json!({"batch": messages}).to_string();
        let req = read(Call::Batch, body.as_bytes(), Some("text/plain"), None).unwrap();
        let ing = ingest(&req, &meta("ua"), &Limits::default()).unwrap();
        let r = &ing.receipt;
        proptest::prop_assert_eq!(r.accepted + r.rejected.len() + r.duplicates.len(), messages.len());
    }
}

/// `context.campaign` is the client's word; without one, the page URL's
/// `utm_*` parameters are the campaign (what analytics.js would have sent).
#[test]
fn the_campaign_is_the_clients_else_the_page_urls() {
    let url = "https://shop.example/?utm_source=ads&utm_medium=cpc&utm_campaign=spring";
    let body = json!({"batch": [
        {"type": "page", "anonymousId": "a-1", "messageId": "m-1",
         "context": {"page": {"url": url}, "campaign": {"source": "newsletter"}}},
        {"type": "track", "event": "Viewed", "anonymousId": "a-1", "messageId": "m-2",
         "context": {"page": {"url": url}}},
        {"type": "track", "event": "Viewed", "anonymousId": "a-1", "messageId": "m-3",
         "context": {"campaign": {"utm_id": "x"}}}
    ]});
    let (receipt, batches) = run(Call::Batch, &body);
    assert_eq!(receipt.accepted, 3, "{receipt:?}");
    let evs = events(&batches);
    let by_id = |mid: &str| {
        let e = evs
            .iter()
            .find(|e| props(e)[SEGMENT_PROPERTY]["messageId"] == mid)
            .unwrap();
        (
            e.context.campaign.clone(),
            props(e)[SEGMENT_PROPERTY].clone(),
        )
    };
    let (c, seg) = by_id("m-1");
    assert_eq!(
        c,
        Campaign {
            source: "newsletter".into(),
            ..Campaign::default()
        }
    );
    assert_eq!(seg.get("context"), None, "nothing of the context is left");
    let (c, _) = by_id("m-2");
    assert_eq!(
        (c.source.as_str(), c.medium.as_str(), c.name.as_str()),
        ("ads", "cpc", "spring")
    );
    let (c, seg) = by_id("m-3");
    assert!(c.is_empty());
    assert_eq!(seg["context"], json!({"campaign": {"utm_id": "x"}}));
}
