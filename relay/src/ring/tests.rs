use super::*;

const NOW: i64 = 1_709_296_496_789;
const HOUR: i64 = 3_600_000;

fn obs(n: u128, device: &str, user: &str, at: i64) -> Observed {
    Observed {
        event_id: Uuid::from_u128(n),
        event: "click".into(),
        project_id: "p".into(),
        anonymous_id: device.into(),
        user_id: user.into(),
        session_id: String::new(),
        ts_ms: at - 5,
        properties: "{}".into(),
        client_ts_ms: Some(at - 7),
        edge_received_at_ms: at - 2,
        stream_at_ms: at,
        stream_seq: n as u64,
        relay_received_at_ms: Some(at + 1),
        state: EventState::Pending,
    }
}

fn ring(limits: RingLimits) -> Ring {
    Ring::new(limits, 16, "relay-a")
}

fn device_query(id: &str) -> DeviceQuery {
    DeviceQuery::new(Subject::Device(id.into()), None, HOUR, NOW, 10_000).unwrap()
}

fn ids(found: &Found) -> Vec<u128> {
    let mut ids: Vec<u128> = found.events.iter().map(|e| e.event_id.as_u128()).collect();
    ids.sort_unstable();
    ids
}

/// Re-derives the ring's accounting from scratch and compares.
fn check_invariants(r: &Ring) {
    let mut events = 0u64;
    let mut bytes = 0usize;
    for d in r.slots.iter().flatten() {
        assert_eq!(d.records as usize, d.entries.len() + d.stale as usize);
        assert!(d.entries.len() <= r.limits.max_events_per_device);
        assert!(d.entries.iter().is_sorted_by_key(|e| e.stream_at_ms));
        events += d.entries.len() as u64;
        bytes += DEVICE_OVERHEAD_BYTES + d.key.len();
        bytes += d.users.iter().map(|u| 2 * u.len()).sum::<usize>();
        bytes += d.entries.iter().map(|e| e.bytes).sum::<usize>();
    }
    assert_eq!(r.events(), events);
    assert_eq!(r.bytes(), bytes);
    assert_eq!(
        r.order.len(),
        r.slots
            .iter()
            .flatten()
            .map(|d| d.records as usize)
            .sum::<usize>()
    );
    assert!(r.bytes() <= r.limits.max_bytes || r.events() <= 1);
}

#[test]
fn lookups_by_device_and_by_user() {
    let mut r = ring(RingLimits::default());
    // (event, device, user)
    let table = [
        (1, "dev-a", ""),
        (2, "dev-a", "u-1"),
        (3, "dev-b", "u-1"),
        (4, "dev-c", ""),
        (5, "", "u-2"), // user-only: keyed by its user id
    ];
    for (n, device, user) in table {
        r.observe(obs(n, device, user, NOW - 1000 + n as i64), NOW);
    }
    check_invariants(&r);
    // (query, expected ids)
    let cases: Vec<(Subject, Vec<u128>)> = vec![
        (Subject::Device("dev-a".into()), vec![1, 2]),
        (Subject::Device("dev-c".into()), vec![4]),
        (Subject::Device("nobody".into()), vec![]),
        (Subject::User("u-1".into()), vec![1, 2, 3]),
        (Subject::User("u-2".into()), vec![5]),
        (Subject::Device("u-2".into()), vec![5]),
        (Subject::User("u-404".into()), vec![]),
    ];
    for (subject, expected) in cases {
        let q = DeviceQuery::new(subject.clone(), None, HOUR, NOW, 100).unwrap();
        assert_eq!(ids(&r.lookup(&q)), expected, "{subject:?}");
    }
    let found = r.lookup(&device_query("u-2"));
    assert_eq!(found.events[0].anonymous_id, "");
    assert_eq!(found.events[0].user_id, "u-2");
    let found = r.lookup(&device_query("dev-a"));
    let e = found
        .events
        .iter()
        .find(|e| e.event_id.as_u128() == 2)
        .unwrap();
    assert_eq!(e.anonymous_id, "dev-a");
    assert_eq!(e.relay, "relay-a");
    assert_eq!(
        e.path,
        EventPath {
            client_ts_ms: Some(NOW - 1000 + 2 - 7),
            edge_received_at_ms: NOW - 1000,
            stream_at_ms: NOW - 998,
            stream_seq: 2,
            relay_received_at_ms: Some(NOW - 997),
            state: EventState::Pending,
        }
    );
}

#[test]
fn queries_filter_by_project_window_and_limit() {
    let mut r = ring(RingLimits::default());
    for n in 0..10u128 {
        let mut o = obs(n, "dev", "", NOW - 10_000 + (n as i64) * 1000);
        if n % 2 == 1 {
            o.project_id = "other".into();
        }
        r.observe(o, NOW);
    }
    let mut q = device_query("dev");
    q.project_id = Some("p".into());
    assert_eq!(ids(&r.lookup(&q)), vec![0, 2, 4, 6, 8]);
    // Window on the edge's receive time (stream time - 2 here).
    let mut q = device_query("dev");
    q.since_ms = NOW - 10_000 + 5000 - 2;
    assert_eq!(ids(&r.lookup(&q)), vec![5, 6, 7, 8, 9]);
    // The limit keeps each device's newest.
    let mut q = device_query("dev");
    q.limit = 3;
    assert_eq!(ids(&r.lookup(&q)), vec![7, 8, 9]);
}

#[test]
fn states_only_advance_and_replayed_copies_fold_into_live_ones() {
    let mut r = ring(RingLimits::default());
    r.observe(obs(1, "dev", "", NOW - 10), NOW);
    r.observe(obs(2, "dev", "", NOW - 9), NOW);
    r.mark_inserted(
        [("dev", Uuid::from_u128(1)), ("ghost", Uuid::from_u128(9))],
        Some(NOW),
    );
    // The same frame replayed at start: pending, no relay time. It must not
    // add a copy nor undo the insert.
    let mut replayed = obs(1, "dev", "", NOW - 10);
    replayed.relay_received_at_ms = None;
    r.observe(replayed, NOW);
    // Replay says event 2 was acked (stored, time unknown).
    let mut acked = obs(2, "dev", "", NOW - 9);
    acked.state = EventState::Inserted { at_ms: None };
    r.observe(acked, NOW);
    // A later "known stored" mark does not erase a known insert time.
    r.mark_inserted([("dev", Uuid::from_u128(1))], None);
    check_invariants(&r);
    assert_eq!(r.events(), 2);
    let found = r.lookup(&device_query("dev"));
    let state = |n: u128| {
        found
            .events
            .iter()
            .find(|e| e.event_id.as_u128() == n)
            .unwrap()
            .path
            .clone()
    };
    assert_eq!(state(1).state, EventState::Inserted { at_ms: Some(NOW) });
    assert_eq!(state(1).relay_received_at_ms, Some(NOW - 9));
    assert_eq!(state(2).state, EventState::Inserted { at_ms: None });
}

#[test]
fn eviction_by_age_device_cap_and_bytes() {
    // (limits, events as (n, device, stream time), now, expected held ids, expected evictions)
    struct Case {
        limits: RingLimits,
        events: Vec<(u128, &'static str, i64)>,
        now: i64,
        held: Vec<u128>,
        evicted: Evictions,
    }
    let tiny = |max_bytes: usize, per_device: usize| RingLimits {
        window_ms: HOUR,
        max_bytes,
        max_events_per_device: per_device,
        max_dead_frames: 10,
    };
    let one = ENTRY_OVERHEAD_BYTES + "click".len() + "{}".len();
    let dev = DEVICE_OVERHEAD_BYTES + "d".len();
    let cases = vec![
        Case {
            limits: tiny(1 << 20, 100),
            events: vec![
                (1, "d", NOW - 2 * HOUR),
                (2, "d", NOW - HOUR - 1),
                (3, "d", NOW - 10),
            ],
            now: NOW,
            held: vec![3],
            evicted: Evictions {
                age: 2,
                ..Default::default()
            },
        },
        Case {
            limits: tiny(1 << 20, 2),
            events: vec![
                (1, "d", NOW - 30),
                (2, "d", NOW - 20),
                (3, "d", NOW - 10),
                (4, "e", NOW - 5),
            ],
            now: NOW,
            held: vec![2, 3, 4],
            evicted: Evictions {
                device_cap: 1,
                ..Default::default()
            },
        },
        Case {
            // Room for one device and two events.
            limits: tiny(dev + 2 * one, 100),
            events: vec![(1, "d", NOW - 30), (2, "d", NOW - 20), (3, "d", NOW - 10)],
            now: NOW,
            held: vec![2, 3],
            evicted: Evictions {
                bytes: 1,
                ..Default::default()
            },
        },
        Case {
            // Out of order: an older event arriving late is still evicted first.
            limits: tiny(1 << 20, 2),
            events: vec![(2, "d", NOW - 20), (3, "d", NOW - 10), (1, "d", NOW - 30)],
            now: NOW,
            held: vec![2, 3],
            evicted: Evictions {
                device_cap: 1,
                ..Default::default()
            },
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let mut r = ring(case.limits);
        for (n, device, at) in &case.events {
            // Each event is seen as it is stored; time then moves to `now`.
            r.observe(obs(*n, device, "", *at), *at + 1);
            check_invariants(&r);
        }
        r.expire(case.now);
        check_invariants(&r);
        let mut held: Vec<u128> = ["d", "e"]
            .iter()
            .flat_map(|d| ids(&r.lookup(&device_query(d))))
            .collect();
        held.sort_unstable();
        assert_eq!(held, case.held, "case {i}");
        assert_eq!(r.evictions(), case.evicted, "case {i}");
    }
}

#[test]
fn a_full_turnover_frees_every_device_and_user() {
    let limits = RingLimits {
        window_ms: HOUR,
        max_bytes: 200_000,
        max_events_per_device: 50,
        max_dead_frames: 10,
    };
    let mut r = ring(limits);
    for n in 0..20_000u128 {
        let device = format!("dev-{}", n % 300);
        let user = if n % 3 == 0 {
            format!("u-{}", n % 7)
        } else {
            String::new()
        };
        let at = NOW - HOUR + (n as i64) / 10;
        r.observe(obs(n, &device, &user, at), at + 1);
        if n % 997 == 0 {
            check_invariants(&r);
        }
    }
    check_invariants(&r);
    assert!(r.bytes() <= limits.max_bytes);
    let e = r.evictions();
    assert_eq!(r.events() + e.total(), 20_000);
    // An hour later everything has aged out and nothing is left behind.
    r.expire(NOW + 2 * HOUR);
    check_invariants(&r);
    assert_eq!((r.events(), r.bytes(), r.devices()), (0, 0, 0));
    assert!(r.by_user.is_empty());
    assert_eq!(r.slots.iter().flatten().count(), 0);
}

#[test]
fn dead_frames_show_up_on_their_partition_only() {
    let mut r = ring(RingLimits::default());
    let p = spoor_core::route::partition_of("dev", 16);
    let other = (p + 1) % 16;
    let frame = |seq: u64, partition: u32, at: i64| DeadFrame {
        subject: format!("spoor.events.eu-west.{partition}"),
        stream_seq: seq,
        reason: "bad_magic".into(),
        stream_at_ms: at,
    };
    r.dead_frame(frame(1, p, NOW - 100), NOW);
    r.dead_frame(frame(1, p, NOW - 100), NOW); // seen live and on replay: once
    r.dead_frame(frame(2, other, NOW - 50), NOW);
    r.dead_frame(frame(3, p, NOW - 2 * HOUR), NOW); // outside the window
    let found = r.lookup(&device_query("dev"));
    assert!(found.events.is_empty());
    let seqs: Vec<u64> = found.dead_frames.iter().map(|f| f.stream_seq).collect();
    assert_eq!(seqs, vec![1]);
}

#[test]
fn hostile_event_content_is_held_as_data() {
    let mut r = ring(RingLimits::default());
    let mut o = obs(1, "dev\u{0}\n<script>", "", NOW - 1);
    o.properties = "x".repeat(40_000);
    o.event = "\u{202e}".into();
    o.session_id = "é".into();
    r.observe(o, NOW);
    let mut empty = obs(2, "", "", NOW - 1);
    empty.anonymous_id = String::new();
    r.observe(empty, NOW); // no key at all: not held
    check_invariants(&r);
    assert_eq!(r.events(), 1);
    let q = DeviceQuery {
        subject: Subject::Device("dev\u{0}\n<script>".into()),
        project_id: None,
        since_ms: NOW - HOUR,
        until_ms: NOW + 1,
        limit: 10,
    };
    let found = r.lookup(&q);
    assert_eq!(found.events.len(), 1);
    let e = &found.events[0];
    assert_eq!((e.event.as_str(), e.session_id.as_str()), ("\u{202e}", "é"));
    assert_eq!(e.properties.len(), 40_000);
}

#[test]
fn events_older_than_the_window_are_not_taken_in() {
    let mut r = ring(RingLimits::default());
    r.observe(obs(1, "d", "", NOW - HOUR - 1), NOW);
    assert_eq!((r.events(), r.devices(), r.evictions().total()), (0, 0, 0));
}

#[test]
fn the_limit_keeps_the_newest_by_event_time_not_by_arrival() {
    let mut r = ring(RingLimits::default());
    // Arrival order is the reverse of event time.
    for n in 0..10u128 {
        let mut o = obs(n, "dev", "", NOW - 100 + n as i64);
        o.ts_ms = NOW - 1_000 - n as i64;
        r.observe(o, NOW);
    }
    let mut q = device_query("dev");
    q.limit = 3;
    assert_eq!(ids(&r.lookup(&q)), vec![0, 1, 2]);
}
