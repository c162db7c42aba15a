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
