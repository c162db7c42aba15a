use super::*;

const NOW: i64 = 1_709_296_496_789;

fn ev(n: u128, ts_ms: i64, relay: &str, state: EventState, live: bool) -> DeviceEvent {
    DeviceEvent {
        event_id: Uuid::from_u128(n),
        event: "click".into(),
        project_id: "p".into(),
        anonymous_id: "dev".into(),
        user_id: String::new(),
        session_id: String::new(),
        ts_ms,
        properties: "{}".into(),
        path: EventPath {
            client_ts_ms: None,
            edge_received_at_ms: ts_ms,
            stream_at_ms: ts_ms + 1,
            stream_seq: n as u64,
            relay_received_at_ms: live.then_some(ts_ms + 2),
            state,
        },
        relay: relay.into(),
    }
}

fn answer(relay: &str, part: u32, last: bool, events: Vec<DeviceEvent>) -> RelayAnswer {
    RelayAnswer {
        relay: relay.into(),
        part,
        last,
        events,
        dead_frames: vec![],
        coverage: RingCoverage::default(),
        error: None,
    }
}

fn query(limit: usize) -> DeviceQuery {
    DeviceQuery::new(Subject::Device("dev".into()), None, 3_600_000, NOW, limit).unwrap()
}

const PENDING: EventState = EventState::Pending;
const ACKED: EventState = EventState::Inserted { at_ms: None };
const STORED: EventState = EventState::Inserted { at_ms: Some(NOW) };

#[test]
fn merge_orders_by_time_then_id_and_keeps_the_most_advanced_copy() {
    // (answers, expected (id, relay, state rank) in order)
    type Case = (Vec<RelayAnswer>, Vec<(u128, &'static str, u8)>);
    let cases: Vec<Case> = vec![
        // Two relays, disjoint events, interleaved in time.
        (
            vec![
                answer(
                    "a",
                    0,
                    true,
                    vec![ev(1, 10, "a", STORED, true), ev(3, 30, "a", PENDING, true)],
                ),
                answer("b", 0, true, vec![ev(2, 20, "b", STORED, true)]),
            ],
            vec![(1, "a", 2), (2, "b", 2), (3, "a", 0)],
        ),
        // Same time: event id breaks the tie.
        (
            vec![answer(
                "a",
                0,
                true,
                vec![ev(9, 10, "a", PENDING, true), ev(4, 10, "a", PENDING, true)],
            )],
            vec![(4, "a", 0), (9, "a", 0)],
        ),
        // A replayed pending copy loses to a live inserted copy.
        (
            vec![
                answer("a", 0, true, vec![ev(1, 10, "a", PENDING, false)]),
                answer("b", 0, true, vec![ev(1, 10, "b", STORED, true)]),
            ],
            vec![(1, "b", 2)],
        ),
        // Acked-at-replay beats pending, whatever the order of answers.
        (
            vec![
                answer("b", 0, true, vec![ev(1, 10, "b", PENDING, true)]),
                answer("a", 0, true, vec![ev(1, 10, "a", ACKED, false)]),
            ],
            vec![(1, "a", 1)],
        ),
        // Equal copies: the live one, then the lowest relay id.
        (
            vec![
                answer("b", 0, true, vec![ev(1, 10, "b", ACKED, true)]),
                answer("a", 0, true, vec![ev(1, 10, "a", ACKED, true)]),
                answer("c", 0, true, vec![ev(1, 10, "c", ACKED, false)]),
            ],
            vec![(1, "a", 1)],
        ),
        // Nothing anywhere.
        (
            vec![answer("a", 0, true, vec![]), answer("b", 0, true, vec![])],
            vec![],
        ),
    ];
    for (i, (answers, expected)) in cases.into_iter().enumerate() {
        let merged = merge(query(100), answers);
        let got: Vec<(u128, &str, u8)> = merged
            .events
            .iter()
            .map(|e| (e.event_id.as_u128(), e.relay.as_str(), e.path.state.rank()))
            .collect();
        assert_eq!(got, expected, "case {i}");
        assert!(!merged.truncated, "case {i}");
    }
}

#[test]
fn merge_counts_relays_parts_and_keeps_the_newest_under_the_limit() {
    let answers = vec![
        answer("a", 0, false, vec![ev(1, 10, "a", STORED, true)]),
        answer("a", 1, true, vec![ev(2, 20, "a", STORED, true)]),
        answer("b", 0, false, vec![ev(3, 30, "b", STORED, true)]),
        RelayAnswer {
            error: Some("refused".into()),
            ..answer("c", 0, true, vec![])
        },
    ];
    let merged = merge(query(2), answers);
    assert_eq!(merged.relays, vec!["a".to_string(), "c".to_string()]);
    assert_eq!(merged.partial_relays, vec!["b".to_string()]);
    assert_eq!(
        merged.errors,
        vec![("c".to_string(), "refused".to_string())]
    );
    assert!(merged.truncated);
    let ids: Vec<u128> = merged.events.iter().map(|e| e.event_id.as_u128()).collect();
    assert_eq!(ids, vec![2, 3]);
}

#[test]
fn merge_lists_each_dead_frame_once() {
    let frame = |seq: u64, at: i64| DeadFrame {
        subject: "spoor.events.eu.3".into(),
        stream_seq: seq,
        reason: "bad_magic".into(),
        stream_at_ms: at,
    };
    let mut a = answer("a", 0, true, vec![]);
    a.dead_frames = vec![frame(7, 70), frame(5, 50)];
    let mut b = answer("b", 0, true, vec![]);
    b.dead_frames = vec![frame(7, 70)];
    let merged = merge(query(10), [a, b]);
    let seqs: Vec<u64> = merged.dead_frames.iter().map(|f| f.stream_seq).collect();
    assert_eq!(seqs, vec![5, 7]);
}

#[test]
fn http_queries_are_validated() {
    let long = "x".repeat(MAX_ID_BYTES + 1);
    let long_encoded = "%41".repeat(MAX_ID_BYTES + 1);
    // (path id, query string, expected: Ok(subject, window, limit) or Err(kind))
    type Expect = Result<(Subject, i64, usize), &'static str>;
    let cases: Vec<(&str, &str, Expect)> = vec![
        (
            "dev-1",
            "",
            Ok((Subject::Device("dev-1".into()), 3_600_000, DEFAULT_LIMIT)),
        ),
        (
            "dev%201",
            "last=15m&limit=5",
            Ok((Subject::Device("dev 1".into()), 900_000, 5)),
        ),
        (
            "",
            "user_id=u-42&last=2h",
            Ok((Subject::User("u-42".into()), 7_200_000, DEFAULT_LIMIT)),
        ),
        (
            "d%C3%A9v",
            "last=90s",
            Ok((Subject::Device("dév".into()), 90_000, DEFAULT_LIMIT)),
        ),
        ("", "", Err("empty_id")),
        ("", "user_id=", Err("empty_id")),
        (&long, "", Err("id_too_long")),
        (&long_encoded, "", Err("id_too_long")),
        ("a%0Ab", "", Err("id_control_char")),
        ("a%00", "", Err("id_control_char")),
        ("%1B[31m", "", Err("id_control_char")),
        ("%FF%FE", "", Err("id_encoding")),
        ("abc%2", "", Err("id_encoding")),
        ("abc%zz", "", Err("id_encoding")),
        ("d", "last=0s", Err("invalid_duration")),
        ("d", "last=-1h", Err("invalid_duration")),
        ("d", "last=1y", Err("invalid_duration")),
        ("d", "last=99999999999999999h", Err("invalid_duration")),
        ("d", "last=25h", Err("window_too_wide")),
        (
            "d",
            "last=24h",
            Ok((Subject::Device("d".into()), 86_400_000, DEFAULT_LIMIT)),
        ),
        ("d", "limit=0", Err("invalid_limit")),
        ("d", "limit=10001", Err("invalid_limit")),
        ("d", "limit=many", Err("invalid_limit")),
        ("d", "project=", Err("invalid_project")),
        ("d", "project=p%0A", Err("invalid_project")),
        ("d", "bogus=1", Err("unknown_parameter")),
        ("d", "user_id=u", Err("device_and_user")),
    ];
    for (path, qs, expected) in cases {
        let got = DeviceQuery::from_http(path, qs, NOW)
            .map(|q| (q.subject, q.until_ms - 1 - q.since_ms, q.limit))
            .map_err(|e| e.kind());
        assert_eq!(got, expected, "{path:?} ? {qs:?}");
    }
    let q = DeviceQuery::from_http("d", "project=shop", NOW).unwrap();
    assert_eq!(q.project_id.as_deref(), Some("shop"));
    assert_eq!(q.until_ms, NOW + 1);
}

#[test]
fn queries_arriving_over_the_wire_are_revalidated() {
    let mut q = query(10);
    assert_eq!(q.validate(), Ok(()));
    q.since_ms = q.until_ms;
    assert_eq!(q.validate().unwrap_err().kind(), "empty_window");
    let mut q = query(10);
    q.subject = Subject::User("\u{7f}".into());
    assert_eq!(q.validate().unwrap_err().kind(), "id_control_char");
    let mut q = query(10);
    q.limit = usize::MAX;
    assert_eq!(q.validate().unwrap_err().kind(), "invalid_limit");
    // Serialized form round-trips.
    let q = query(10);
    let json = serde_json::to_string(&q).unwrap();
    assert_eq!(serde_json::from_str::<DeviceQuery>(&json).unwrap(), q);
}

#[test]
fn subject_partitions() {
    assert_eq!(subject_partition("spoor.events.eu-west.13"), Some(13));
    assert_eq!(subject_partition("spoor.events.eu-west.x"), None);
    assert_eq!(subject_partition(""), None);
}

#[test]
fn the_rings_cap_the_window_at_a_day_and_the_tables_at_ninety_days() {
    let day = 86_400_000;
    let mut q = query(10);
    q.since_ms = q.until_ms - 2 * day;
    let err = q.validate().unwrap_err();
    assert_eq!(err.kind(), "window_too_wide");
    assert_eq!(
        err.to_string(),
        "the window is 172800000 ms wide; at most 86400000 ms (24h) may be asked for"
    );
    assert_eq!(q.validate_within(MAX_TABLE_WINDOW_MS), Ok(()));
    q.since_ms = q.until_ms - 91 * day;
    assert_eq!(
        q.validate_within(MAX_TABLE_WINDOW_MS)
            .unwrap_err()
            .to_string(),
        "the window is 7862400000 ms wide; at most 7776000000 ms (2160h) may be asked for"
    );
    // The other checks are the same whatever the cap.
    q.since_ms = q.until_ms;
    assert_eq!(
        q.validate_within(MAX_TABLE_WINDOW_MS).unwrap_err().kind(),
        "empty_window"
    );
}

#[test]
fn what_the_rings_do_not_hold_is_the_start_of_the_window() {
    let hour = 3_600_000;
    let asked = DeviceQuery::new(
        Subject::User("u-1".into()),
        Some("proj".into()),
        hour,
        NOW,
        5_000,
    )
    .unwrap();
    let covered = |relays: &[(&str, RingCoverage)]| {
        let mut lookup = merge(asked.clone(), []);
        lookup.relays = relays.iter().map(|(r, _)| r.to_string()).collect();
        lookup.coverage = relays
            .iter()
            .map(|(r, c)| (r.to_string(), c.clone()))
            .collect();
        lookup.not_in_rings()
    };
    let holds_from = |oldest: i64| RingCoverage {
        oldest_stream_ms: Some(oldest),
        events_held: 1,
        rehydrating: false,
    };
    // No relay answered: the whole window, same subject, project and limit.
    assert_eq!(covered(&[]), Some(asked.clone()));
    // Two rings, one holding the last 20 minutes, one the last 40: only
    // what both hold is covered.
    let rest = covered(&[
        ("a", holds_from(NOW - 20 * 60_000)),
        ("b", holds_from(NOW - 40 * 60_000)),
    ])
    .unwrap();
    assert_eq!(
        (rest.since_ms, rest.until_ms),
        (asked.since_ms, NOW - 20 * 60_000)
    );
    assert_eq!(
        (rest.subject, rest.project_id, rest.limit),
        (asked.subject.clone(), asked.project_id.clone(), 5_000)
    );
    // Rings reaching back past the start hold it all.
    assert_eq!(covered(&[("a", holds_from(NOW - 2 * hour))]), None);
    assert_eq!(covered(&[("a", holds_from(asked.since_ms))]), None);
    // A ring rebuilding or empty covers nothing: the whole window.
    let rebuilding = RingCoverage {
        rehydrating: true,
        ..holds_from(NOW - 2 * hour)
    };
    assert_eq!(
        covered(&[("a", holds_from(NOW - 2 * hour)), ("b", rebuilding)]),
        Some(asked.clone())
    );
    assert_eq!(
        covered(&[("a", RingCoverage::default())]),
        Some(asked.clone())
    );
    // A ring whose oldest event is newer than the window's end: all of it.
    assert_eq!(covered(&[("a", holds_from(NOW + hour))]), Some(asked));
}
