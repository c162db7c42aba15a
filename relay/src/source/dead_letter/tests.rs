use super::{header, headers, Origin, Reason};
use spoor_core::DecodeError;
use time::format_description::well_known::Rfc3339;

fn message(msg_id: Option<&str>) -> async_nats::Message {
    let headers = msg_id.map(|id| {
        let mut h = async_nats::HeaderMap::new();
        // As a received message has it: keyed by the standard name.
        h.insert(async_nats::header::NATS_MESSAGE_ID, id);
        h
    });
    async_nats::Message {
        subject: "spoor.events.eu-west.3".into(),
        reply: None,
        payload: bytes::Bytes::from_static(b"junk"),
        headers,
        status: None,
        description: None,
        length: 4,
    }
}

fn get<'a>(h: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

#[test]
fn headers_carry_reason_origin_and_a_deterministic_id() {
    let origin = Origin {
        stream: Some("SPOOR_EVENTS".into()),
        stream_sequence: Some(42),
        published: Some(time::OffsetDateTime::parse("2026-11-22T10:00:00.5Z", &Rfc3339).unwrap()),
    };
    let error = DecodeError::UnsupportedVersion(9);
    let reason = Reason {
        kind: error.kind(),
        error: &error,
    };
    let h = headers(&message(Some("b-1")), &origin, reason);
    assert_eq!(get(&h, header::REASON), Some("unsupported_version"));
    assert_eq!(
        get(&h, header::DETAIL),
        Some("unsupported frame format version 9 (this build reads version 1)")
    );
    assert_eq!(
        get(&h, header::ORIGINAL_SUBJECT),
        Some("spoor.events.eu-west.3")
    );
    assert_eq!(get(&h, header::ORIGINAL_MSG_ID), Some("b-1"));
    assert_eq!(get(&h, header::ORIGINAL_STREAM), Some("SPOOR_EVENTS"));
    assert_eq!(get(&h, header::ORIGINAL_STREAM_SEQ), Some("42"));
    assert_eq!(
        get(&h, header::ORIGINAL_TIME),
        Some("2026-11-22T10:00:00.5Z")
    );
    assert_eq!(get(&h, header::NATS_MSG_ID), Some("dead:SPOOR_EVENTS:42"));
    // Same original, same id: a redelivered frame dedups in JetStream.
    let again = headers(&message(Some("b-1")), &origin, reason);
    assert_eq!(
        get(&again, header::NATS_MSG_ID),
        get(&h, header::NATS_MSG_ID)
    );
}

#[test]
fn without_metadata_there_is_no_dedup_id_and_empty_original_id() {
    let error = DecodeError::BadMagic;
    let h = headers(
        &message(None),
        &Origin::default(),
        Reason {
            kind: error.kind(),
            error: &error,
        },
    );
    assert_eq!(get(&h, header::REASON), Some("bad_magic"));
    assert_eq!(get(&h, header::ORIGINAL_MSG_ID), Some(""));
    assert_eq!(get(&h, header::NATS_MSG_ID), None);
    assert_eq!(get(&h, header::ORIGINAL_STREAM_SEQ), None);
}

#[test]
fn detail_is_a_single_bounded_line() {
    let error = DecodeError::Cbor(format!("bad\r\nvalue {}", "x".repeat(2000)));
    let h = headers(
        &message(None),
        &Origin::default(),
        Reason {
            kind: error.kind(),
            error: &error,
        },
    );
    let detail = get(&h, header::DETAIL).unwrap();
    assert!(detail.starts_with("CBOR body is invalid: bad  value xxx"));
    assert!(!detail.contains(['\r', '\n']));
    assert!(detail.len() <= super::MAX_DETAIL_BYTES);
}

#[test]
fn the_definition_declares_the_contract_names() {
    let file: serde_json::Value = serde_json::from_str(super::DEAD_STREAM_CONFIG_JSON).unwrap();
    assert_eq!(file["name"], super::DEAD_STREAM);
    assert_eq!(
        file["subjects"],
        serde_json::json!([spoor_core::contract::DEAD_FILTER])
    );
}

#[test]
fn a_rows_letter_names_its_original_and_an_id_from_its_rows() {
    let origin = Origin {
        stream: Some("SPOOR_EVENTS".into()),
        stream_sequence: Some(42),
        published: Some(time::OffsetDateTime::parse("2026-11-22T10:00:00.5Z", &Rfc3339).unwrap()),
    };
    let ids = [uuid::Uuid::from_u128(2), uuid::Uuid::from_u128(1)];
    let letter = super::RowsLetter {
        subject: "spoor.events.eu-west.3",
        original_msg_id: "b-1",
        origin: &origin,
        reason: "rejected_by_clickhouse",
        detail: "Code: 469. DB::Exception: Constraint `c`\nis violated",
        event_ids: &ids,
        payload: bytes::Bytes::from_static(b"frame"),
    };
    let h = letter.headers();
    assert_eq!(get(&h, header::REASON), Some("rejected_by_clickhouse"));
    assert_eq!(
        get(&h, header::DETAIL),
        Some("Code: 469. DB::Exception: Constraint `c` is violated")
    );
    assert_eq!(get(&h, header::ROWS), Some("2"));
    assert_eq!(get(&h, header::ORIGINAL_MSG_ID), Some("b-1"));
    assert_eq!(get(&h, header::ORIGINAL_STREAM_SEQ), Some("42"));
    let id = get(&h, header::NATS_MSG_ID).unwrap().to_string();
    assert!(
        id.starts_with("dead:SPOOR_EVENTS:42:rejected_by_clickhouse:"),
        "{id}"
    );
    // The same rows in any order give the same id; other rows another.
    let swapped = [ids[1], ids[0]];
    let same = super::RowsLetter {
        event_ids: &swapped,
        ..letter.clone()
    };
    assert_eq!(same.msg_id().as_deref(), Some(id.as_str()));
    let other = super::RowsLetter {
        event_ids: &ids[..1],
        ..letter.clone()
    };
    assert_ne!(other.msg_id().as_deref(), Some(id.as_str()));
    // Not the undecodable frame's id: both can come from one message.
    assert_ne!(Some(id), origin.dead_letter_msg_id());
    // Without metadata there is no dedup id.
    let bare = Origin::default();
    let none = super::RowsLetter {
        origin: &bare,
        ..letter
    };
    assert_eq!(none.msg_id(), None);
    assert_eq!(get(&none.headers(), header::NATS_MSG_ID), None);
}
