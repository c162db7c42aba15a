use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::value::RawValue;
use serde_json::Value;
use spoor_core::ingest::{ingest, Endpoint, RequestMeta};
use spoor_core::{decode_batch, Geo, Limits};

use super::*;

const NOW: i64 = 1_763_800_000_000; // 2025-11-22T08:26:40Z
const RUN: Uuid = Uuid::from_u128(0x5b1f_0c2e_8a4d_4e6f_9a0b_1c2d_3e4f_5a6b);

fn cfg(seed: u64, events: usize, invalid_ratio: f64, resend_ratio: f64) -> ModelConfig {
    ModelConfig {
        seed,
        run_id: RUN,
        now_ms: NOW,
        events,
        users: 60,
        batch_size: 25,
        invalid_ratio,
        resend_ratio,
    }
}

fn plan(c: &ModelConfig) -> Plan {
    generate(c).unwrap()
}

/// One parsed event with the facts the tests look at.
struct Ev {
    batch: usize,
    index: usize,
    value: Value,
    ts: i64,
}

fn events(p: &Plan) -> Vec<Ev> {
    let mut out = Vec::new();
    for (b, batch) in p.batches.iter().enumerate() {
        let body: Value = serde_json::from_str(&batch.body).unwrap();
        for (index, value) in body["batch"].as_array().unwrap().iter().enumerate() {
            let ts = value
                .get("timestamp")
                .and_then(|t| {
                    let raw = RawValue::from_string(t.to_string()).unwrap();
                    spoor_core::timestamp::parse_json_timestamp(&raw).ok()
                })
                .unwrap_or(i64::MIN);
            out.push(Ev {
                batch: b,
                index,
                value: value.clone(),
                ts,
            });
        }
    }
    out
}

fn valid_events(p: &Plan) -> Vec<Ev> {
    let invalid: HashSet<(usize, usize)> = p
        .batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| batch.rejections.iter().map(move |r| (b, r.index)))
        .collect();
    events(p)
        .into_iter()
        .filter(|e| !invalid.contains(&(e.batch, e.index)))
        .collect()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

#[test]
fn same_inputs_give_the_same_plan() {
    let c = cfg(7, 3_000, 0.05, 0.1);
    assert_eq!(plan(&c), plan(&c));
}

#[test]
fn run_id_changes_ids_but_not_shape() {
    let a = plan(&cfg(7, 2_000, 0.05, 0.1));
    let b = plan(&ModelConfig {
        run_id: Uuid::from_u128(99),
        ..cfg(7, 2_000, 0.05, 0.1)
    });
    assert_eq!(a.requests, b.requests);
    assert_eq!(a.batches.len(), b.batches.len());
    let ids_a: HashSet<Uuid> = a
        .batches
        .iter()
        .flat_map(|b| b.valid_ids.iter().copied())
        .collect();
    for (x, y) in a.batches.iter().zip(&b.batches) {
        assert_eq!(x.events, y.events);
        assert_eq!(x.sent_at_ms, y.sent_at_ms);
        let reasons = |b: &Batch| {
            b.rejections
                .iter()
                .map(|r| (r.index, r.reason))
                .collect::<Vec<_>>()
        };
        assert_eq!(reasons(x), reasons(y));
        assert!(
            y.valid_ids.iter().all(|id| !ids_a.contains(id)),
            "ids must differ between runs"
        );
    }
    let names = |p: &Plan| {
        events(p)
            .iter()
            .map(|e| s(&e.value, "event").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b));
}

#[test]
fn seed_changes_shape() {
    let a = plan(&cfg(1, 2_000, 0.0, 0.0));
    let b = plan(&cfg(2, 2_000, 0.0, 0.0));
    assert_ne!(
        a.batches.iter().map(|b| b.events).collect::<Vec<_>>(),
        b.batches.iter().map(|b| b.events).collect::<Vec<_>>()
    );
}

#[test]
fn counts_add_up() {
    let c = cfg(3, 12_000, 0.05, 0.1);
    let p = plan(&c);
    let total: usize = p.batches.iter().map(|b| b.events).sum();
    assert_eq!(
        total, c.events,
        "--events counts generated events before resends"
    );
    assert_eq!(p.unique_valid() + p.invalid(), c.events);
    let invalid_share = p.invalid() as f64 / c.events as f64;
    assert!(
        (0.04..0.06).contains(&invalid_share),
        "invalid share {invalid_share}"
    );
    let resend_share = p.resends() as f64 / p.batches.len() as f64;
    assert!(
        (0.06..0.14).contains(&resend_share),
        "resend share {resend_share}"
    );

    let mut ids = HashSet::new();
    for b in &p.batches {
        assert!(b.events <= c.batch_size && b.events > 0);
        for id in &b.valid_ids {
            assert!(ids.insert(*id), "duplicate event id {id}");
        }
    }
    // Every original is sent once, in sent_at order; resends copy an earlier
    // or the same batch and come after it.
    let originals: Vec<usize> = p
        .requests
        .iter()
        .filter(|r| !r.resend)
        .map(|r| r.batch)
        .collect();
    assert_eq!(originals, (0..p.batches.len()).collect::<Vec<_>>());
    let mut seen = 0;
    for r in &p.requests {
        if r.resend {
            assert!(r.batch < seen);
        } else {
            seen = r.batch + 1;
        }
    }
    assert!(p
        .batches
        .windows(2)
        .all(|w| w[0].sent_at_ms <= w[1].sent_at_ms));
    assert!(p.batches.iter().all(|b| b.sent_at_ms < NOW));
}

#[test]
fn batches_hold_one_device_and_every_valid_event_is_tagged() {
    let p = plan(&cfg(4, 5_000, 0.0, 0.0));
    let run = RUN.to_string();
    for e in events(&p) {
        let v = &e.value;
        assert_eq!(s(v, "anonymous_id"), p.batches[e.batch].anonymous_id);
        assert_eq!(v["properties"]["run_id"], run.as_str());
        assert_eq!(v["context"]["library"]["name"], LIBRARY_NAME);
        assert!(!s(v, "session_id").is_empty());
        assert!(v["context"]["screen"]["width"].as_u64().unwrap() > 0);
        assert!(
            e.ts < p.batches[e.batch].sent_at_ms,
            "events happen before their batch is sent"
        );
        assert!(e.ts > NOW - 30 * 86_400_000);
    }
}

#[test]
fn identities_are_consistent() {
    let p = plan(&cfg(5, 8_000, 0.0, 0.0));
    // device -> (user ids seen, whether a later event dropped the user id)
    let mut per_device: HashMap<String, (BTreeSet<String>, bool)> = HashMap::new();
    let mut evs = valid_events(&p);
    evs.sort_by_key(|e| e.ts);
    for e in &evs {
        let entry = per_device
            .entry(s(&e.value, "anonymous_id").to_string())
            .or_default();
        let uid = s(&e.value, "user_id");
        if uid.is_empty() {
            entry.1 |= !entry.0.is_empty();
        } else {
            entry.0.insert(uid.to_string());
        }
    }
    let mut users_per_id: HashMap<&str, usize> = HashMap::new();
    for (uids, logged_out) in per_device.values() {
        assert!(uids.len() <= 1, "a device belongs to one user");
        assert!(!logged_out, "a device stays logged in once it logged in");
        for u in uids {
            *users_per_id.entry(u).or_default() += 1;
        }
    }
    assert!(
        users_per_id.values().all(|&n| n <= 2),
        "users own one or two devices"
    );
    let logged_in_devices = per_device.values().filter(|(u, _)| !u.is_empty()).count();
    assert!(logged_in_devices > 0 && logged_in_devices < per_device.len());
}

/// The funnel's order within each session, session splitting on inactivity,
/// and the drop-off rates.
#[test]
fn funnel_order_and_drop_off() {
    let p = plan(&cfg(6, 25_000, 0.0, 0.0));
    let mut by_device: BTreeMap<String, Vec<Ev>> = BTreeMap::new();
    for e in valid_events(&p) {
        by_device
            .entry(s(&e.value, "anonymous_id").to_string())
            .or_default()
            .push(e);
    }
    let mut sessions: Vec<Vec<Value>> = Vec::new();
    for evs in by_device.values_mut() {
        // Batches of one device are sent in order and hold its events in order.
        assert!(evs
            .windows(2)
            .all(|w| (w[0].batch, w[0].index) < (w[1].batch, w[1].index)));
        assert!(
            evs.windows(2).all(|w| w[0].ts < w[1].ts),
            "a device's events are in time order"
        );
        let mut ids = HashSet::new();
        for w in evs.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let gap = b.ts - a.ts;
            if s(&a.value, "session_id") == s(&b.value, "session_id") {
                assert!(gap < INACTIVITY_MS, "gap {gap} inside a session");
            } else {
                assert!(gap > INACTIVITY_MS, "new session after only {gap} ms");
            }
        }
        for e in evs.iter() {
            let sid = s(&e.value, "session_id");
            if ids.insert(sid.to_string()) {
                sessions.push(Vec::new());
            }
            sessions.last_mut().unwrap().push(e.value.clone());
        }
    }

    let (mut carts, mut purchases) = (0usize, 0usize);
    for session in &sessions {
        assert_eq!(
            s(&session[0], "event"),
            "page_view",
            "sessions open with a page view"
        );
        let mut last_viewed_product = None;
        let mut in_cart = BTreeSet::new();
        let mut done: Vec<&str> = Vec::new();
        for ev in session {
            let name = s(ev, "event");
            let props = &ev["properties"];
            match name {
                "page_view" => last_viewed_product = props["product_id"].as_str(),
                "add_to_cart" => {
                    let pid = props["product_id"].as_str().unwrap();
                    assert_eq!(
                        last_viewed_product,
                        Some(pid),
                        "carted from its product page"
                    );
                    assert!(props["price"].as_f64().unwrap() > 0.0);
                    assert!(!s(props, "currency").is_empty());
                    in_cart.insert(pid.to_string());
                    let cart: BTreeSet<String> = props["cart"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i["product_id"].as_str().unwrap().to_string())
                        .collect();
                    assert_eq!(cart, in_cart);
                }
                "checkout_started" => assert!(done.contains(&"add_to_cart")),
                "checkout_step" => {
                    let step = props["step"].as_u64().unwrap();
                    let before = if step == 2 {
                        "checkout_started"
                    } else {
                        "checkout_step"
                    };
                    assert!(done.contains(&before), "step {step} after {before}");
                }
                "purchase" => {
                    assert_eq!(done.iter().filter(|n| **n == "checkout_step").count(), 2);
                    assert!(props["value"].as_f64().unwrap() > 0.0);
                    assert_eq!(props["items"].as_array().unwrap().len(), in_cart.len());
                }
                other => panic!("unexpected event {other}"),
            }
            done.push(name);
        }
        if done.contains(&"add_to_cart") {
            carts += 1;
            if done.contains(&"purchase") {
                purchases += 1;
            }
        }
    }
    let cart_rate = carts as f64 / sessions.len() as f64;
    let purchase_rate = purchases as f64 / carts as f64;
    assert!(sessions.len() > 3_000, "{} sessions", sessions.len());
    assert!(
        (CART_RATE - 0.03..CART_RATE + 0.03).contains(&cart_rate),
        "cart rate {cart_rate}"
    );
    assert!(
        (PURCHASE_RATE_OF_CARTS - 0.04..PURCHASE_RATE_OF_CARTS + 0.04).contains(&purchase_rate),
        "purchase rate {purchase_rate}"
    );
}

fn meta(received_at_ms: i64, user_agent: &str) -> RequestMeta<'_> {
    RequestMeta {
        project_id: "demo",
        region: "eu",
        partitions: 4,
        received_at_ms,
        content_type: Some("application/json"),
        content_encoding: None,
        user_agent,
        ip: "203.0.113.77",
        geo: Geo::default(),
    }
}

/// Runs every batch through the edge's own rule engine: it must accept
/// exactly the valid events (same ids, run id kept in a form ClickHouse
/// 18.16's visitParam functions find) and reject the invalid ones for the
/// reason the model expects. Guards both sides against drift.
#[test]
fn the_edge_rules_agree_with_the_model() {
    let p = plan(&cfg(8, 6_000, 0.2, 0.0));
    let kinds: BTreeSet<InvalidKind> = p
        .batches
        .iter()
        .flat_map(|b| b.rejections.iter().map(|r| r.kind))
        .collect();
    assert_eq!(
        kinds,
        InvalidKind::ALL.into_iter().collect(),
        "every kind of invalid event is generated"
    );
    let run_tag = format!(r#""run_id":"{RUN}""#);
    // Received right away, and after a long run: the skew correction keeps
    // valid events in the window and invalid timestamps out of it.
    for received in [NOW, NOW + 6 * 3_600_000] {
        for (i, b) in p.batches.iter().enumerate() {
            let ing = ingest(
                Endpoint::Batch,
                b.body.as_bytes(),
                &meta(received, b.user_agent),
                &Limits::default(),
            )
            .unwrap_or_else(|e| panic!("batch {i}: whole request refused: {e}"));
            let r = &ing.receipt;
            assert!(r.warnings.is_empty(), "batch {i}: {:?}", r.warnings);
            let got: Vec<(usize, Option<String>, &str)> = r
                .rejected
                .iter()
                .map(|x| (x.index, x.event_id.clone(), x.reason.as_str()))
                .collect();
            let want: Vec<(usize, Option<String>, &str)> = b
                .rejections
                .iter()
                .map(|x| (x.index, x.event_id.clone(), x.reason))
                .collect();
            assert_eq!(got, want, "batch {i}: {:#?}", r.rejected);
            assert_eq!(r.accepted, b.valid_ids.len());

            let stored: Vec<spoor_core::Event> = ing
                .messages
                .iter()
                .flat_map(|m| decode_batch(&m.frame, 1 << 24).unwrap().events)
                .collect();
            let ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
            assert_eq!(ids, b.valid_ids.iter().copied().collect::<HashSet<_>>());
            for e in &stored {
                assert!(!e.event_id_derived);
                // visitParamExtractString takes the first `"run_id":` at any depth.
                assert!(e.properties.contains(&run_tag), "{}", e.properties);
                assert_eq!(
                    e.properties.matches("\"run_id\"").count(),
                    1,
                    "{}",
                    e.properties
                );
                assert!(e.ts_ms <= received && e.ts_ms > received - 7 * 86_400_000);
                assert_eq!(e.context.library_name, LIBRARY_NAME);
            }
        }
    }
}

/// The edge's default limits take the largest batch the CLI is meant for.
#[test]
fn full_batches_fit_the_edge_limits() {
    let limits = Limits::default();
    let c = ModelConfig {
        batch_size: limits.max_batch_events,
        users: 5,
        ..cfg(9, 5_000, 0.02, 0.0)
    };
    let p = plan(&c);
    let largest = p.batches.iter().map(|b| b.body.len()).max().unwrap();
    assert!(
        largest <= limits.max_body_bytes,
        "largest body {largest} bytes"
    );
    assert!(p
        .batches
        .iter()
        .any(|b| b.events == limits.max_batch_events));
}

#[test]
fn bad_configs_are_refused() {
    assert!(generate(&ModelConfig {
        users: 0,
        ..cfg(1, 10, 0.0, 0.0)
    })
    .is_err());
    assert!(generate(&ModelConfig {
        batch_size: 0,
        ..cfg(1, 10, 0.0, 0.0)
    })
    .is_err());
    assert!(generate(&cfg(1, 10, 1.5, 0.0)).is_err());
    assert!(generate(&cfg(1, 10, 0.0, -0.1)).is_err());
    let empty = plan(&cfg(1, 0, 0.0, 0.0));
    assert!(empty.batches.is_empty() && empty.requests.is_empty());
}
