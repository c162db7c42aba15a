use super::*;

#[test]
fn dates_are_utc_days() {
    for (days, want) in [
        (0, "1970-01-01"),
        (19_783, "2024-03-01"),
        (u16::MAX, "2149-06-06"),
    ] {
        assert_eq!(date_text(days), want);
    }
}

#[test]
fn relay_counters_sum_labelled_series_and_ignore_comments() {
    let page = "\
# HELP spoor_relay_dead_lettered Frames moved
# TYPE spoor_relay_dead_lettered counter
spoor_relay_messages_received_total 12
spoor_relay_events_received_total 40
spoor_relay_events_deduped_total 3
spoor_relay_rows_inserted_total 37
spoor_relay_dead_lettered_total{reason=\"bad_magic\"} 2
spoor_relay_dead_lettered_total{reason=\"too_large\"} 1
spoor_relay_dead_letter_errors_total 5
";
    let c = parse_relay_counters("http://r", page);
    assert_eq!(
        c,
        RelayCounters {
            url: "http://r".into(),
            messages_received: 12.0,
            events_received: 40.0,
            events_deduped: 3.0,
            rows_inserted: 37.0,
            dead_lettered: 3.0,
        }
    );
}

fn report() -> ReconcileReport {
    ReconcileReport {
        stream: "SPOOR_EVENTS".into(),
        since: "2026-11-22T10:00:00Z".into(),
        until: "2026-11-22T11:00:00Z".into(),
        project: None,
        frames: 5,
        frames_decoded: 4,
        dead_lettered_frames: 1,
        dead_lettered_bytes: 25,
        dead_lettered_by_reason: BTreeMap::from([("bad_magic".to_string(), 1)]),
        replayed_frames: 0,
        other_project_frames: 0,
        undecodable: vec![],
        accepted_events: 10,
        dead_lettered_events: 0,
        dead_lettered_events_by_reason: BTreeMap::new(),
        unique_events: 8,
        deduped: 2,
        inserted: 8,
        stored_rows: 8,
        missing: vec![],
        duplicated: vec![],
        relays: vec![],
    }
}

#[test]
fn an_exact_report_says_so_with_its_numbers() {
    let r = report();
    assert!(r.is_exact());
    assert!(r.gaps().is_empty());
    let text = r.render(20);
    assert!(
        text.contains("frames   5 in window = 4 decoded + 1 dead-lettered + 0 replayed\n"),
        "{text}"
    );
    assert!(text.contains("events   accepted 10 = inserted 8 + deduped 2 + dead-lettered (1 frame(s), 25 bytes, events unknown)\n"), "{text}");
    assert!(text.contains("dead     bad_magic=1\n"), "{text}");
    assert!(text.ends_with("result   EXACT\n"), "{text}");
}

#[test]
fn dead_lettered_rows_are_part_of_the_balance() {
    let r = ReconcileReport {
        accepted_events: 12,
        dead_lettered_events: 2,
        dead_lettered_events_by_reason: BTreeMap::from([("rejected_by_clickhouse".to_string(), 2)]),
        ..report()
    };
    let text = r.render(20);
    assert!(text.contains("events   accepted 12 = inserted 8 + deduped 2 + dead-lettered (1 frame(s), 25 bytes, events unknown) + dead-lettered rows 2\n"), "{text}");
    assert!(
        text.contains("dead     bad_magic=1 rejected_by_clickhouse=2 rows\n"),
        "{text}"
    );
}

#[test]
fn every_kind_of_gap_is_named() {
    let mut r = report();
    let id = Uuid::from_u128(7);
    r.inserted = 6;
    r.stored_rows = 7;
    r.missing = vec![
        MissingEvent {
            event_id: id,
            project_id: "p".into(),
            event_date: "2026-11-22".into(),
            stream_seq: 3,
        },
        MissingEvent {
            event_id: Uuid::from_u128(8),
            project_id: "p".into(),
            event_date: "2026-11-22".into(),
            stream_seq: 4,
        },
    ];
    r.duplicated = vec![DuplicatedEvent {
        event_id: Uuid::from_u128(9),
        project_id: "p".into(),
        rows: 2,
    }];
    r.undecodable = vec![UndecodableFrame {
        stream_seq: 5,
        reason: "bad_magic",
        detail: "not a Spoor frame (bad magic)".into(),
    }];
    assert!(!r.is_exact());
    assert_eq!(
        r.gaps(),
        vec![
            "2 accepted event(s) missing from ClickHouse",
            "1 event id(s) stored more than once (1 extra row(s))",
            "1 undecodable frame(s) without a dead letter",
        ]
    );
    let text = r.render(1);
    assert!(text.contains(" + MISSING 2\n"), "{text}");
    assert!(text.contains("missing  2 event(s) (first 1):\n  00000000-0000-0000-0000-000000000007  project p  date 2026-11-22  frame seq 3\n"), "{text}");
    assert!(
        !text.contains("00000000-0000-0000-0000-000000000008"),
        "{text}"
    );
    assert!(
        text.contains("00000000-0000-0000-0000-000000000009  project p  2 rows"),
        "{text}"
    );
    assert!(
        text.contains("undecodable frame seq 5 (bad_magic)"),
        "{text}"
    );
    assert!(
        text.contains("result   GAP: 2 accepted event(s) missing"),
        "{text}"
    );
}

mod ledger {
    use super::super::ledger::{self, Ledger};
    use spoor_core::enrich::{Device, Geo};
    use spoor_core::event::{Context, Event, WireBatch};
    use std::collections::{HashMap, HashSet};
    use uuid::Uuid;

    const MAX: usize = 1024 * 1024;
    /// 2024-03-01T00:00:00Z: day 19783.
    const TS_MS: i64 = 1_709_251_200_000;

    fn frame(project: &str, ids: &[u128]) -> Vec<u8> {
        let batch = WireBatch {
            batch_id: "b".into(),
            project_id: project.into(),
            region: "eu".into(),
            received_at_ms: TS_MS,
            sent_at_ms: None,
            geo: Geo::default(),
            device: Device::default(),
            ip_prefix: String::new(),
            events: ids
                .iter()
                .map(|&id| Event {
                    event_id: Uuid::from_u128(id),
                    event_id_derived: false,
                    event: "page_view".into(),
                    user_id: String::new(),
                    anonymous_id: "dev-1".into(),
                    session_id: String::new(),
                    client_ts_ms: None,
                    ts_ms: TS_MS,
                    properties: "{}".into(),
                    context: Context::default(),
                })
                .collect(),
        };
        spoor_core::encode_batch(&batch).unwrap()
    }

    #[test]
    fn every_frame_is_decoded_dead_lettered_replayed_undecodable_or_another_projects() {
        let frames = vec![
            (1, frame("shop", &[1, 2])),
            (2, frame("shop", &[2, 3])), // a resend of event 2
            (3, b"garbage".to_vec()),    // dead-lettered
            (4, frame("shop", &[9])),    // superseded by its replay (seq 6)
            (5, frame("other", &[7])),
            (6, frame("shop", &[9])),
            (7, b"more garbage".to_vec()), // no dead letter
        ];
        let dead = HashMap::from([(3, ("bad_magic".to_string(), 7))]);
        let superseded = HashSet::from([4]);
        let l = Ledger::build(frames, &superseded, &dead, Some("shop"), MAX);
        assert_eq!(l.frames, 7);
        assert_eq!(l.frames_decoded, 3);
        assert_eq!((l.dead_lettered_frames, l.dead_lettered_bytes), (1, 7));
        assert_eq!(l.dead_lettered_by_reason.get("bad_magic"), Some(&1));
        assert_eq!(l.replayed_frames, 1);
        assert_eq!(l.other_project_frames, 1);
        assert_eq!(l.undecodable.len(), 1);
        assert_eq!(l.undecodable[0].stream_seq, 7);
        assert_eq!(l.accepted_events, 5);
        let mut ids: Vec<u128> = l.unique.keys().map(|id| id.as_u128()).collect();
        ids.sort();
        assert_eq!(ids, [1, 2, 3, 9]);
        let two = &l.unique[&Uuid::from_u128(2)];
        assert_eq!((two.stream_seq, two.event_date), (1, 19_783));
        assert_eq!(l.by_partition()[&("shop", 19_783)].len(), 4);
    }

    #[test]
    fn events_of_dead_lettered_rows_are_not_expected_and_the_rest_of_their_frame_is() {
        let frames = vec![
            (1, frame("shop", &[1, 2, 3])),
            (2, frame("shop", &[3])), // a resend of the refused event
        ];
        let dead_events =
            HashMap::from([(Uuid::from_u128(3), "rejected_by_clickhouse".to_string())]);
        let l = Ledger::build_with_rows(
            frames,
            &HashSet::new(),
            &HashMap::new(),
            &dead_events,
            None,
            MAX,
        );
        assert_eq!((l.frames_decoded, l.dead_lettered_frames), (2, 0));
        assert_eq!(l.accepted_events, 4);
        let mut ids: Vec<u128> = l.unique.keys().map(|id| id.as_u128()).collect();
        ids.sort();
        assert_eq!(ids, [1, 2]);
        assert_eq!(l.dead_events, HashSet::from([Uuid::from_u128(3)]));
        assert_eq!(
            l.dead_events_by_reason.get("rejected_by_clickhouse"),
            Some(&1)
        );
    }

    #[test]
    fn stored_counts_name_the_missing_and_the_duplicated() {
        let frames = vec![(1, frame("shop", &[1, 2])), (2, frame("shop", &[3]))];
        let l = Ledger::build(frames, &HashSet::new(), &HashMap::new(), None, MAX);
        let stored = HashMap::from([(Uuid::from_u128(1), 1), (Uuid::from_u128(3), 2)]);
        let missing = ledger::missing(&stored, &l.unique);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].event_id, Uuid::from_u128(2));
        assert_eq!(missing[0].event_date, "2024-03-01");
        assert_eq!(missing[0].stream_seq, 1);
        let duplicated = ledger::duplicated(&stored, &l.unique);
        assert_eq!(duplicated.len(), 1);
        assert_eq!(
            (
                duplicated[0].event_id,
                duplicated[0].rows,
                duplicated[0].project_id.as_str()
            ),
            (Uuid::from_u128(3), 2, "shop")
        );
    }
}
