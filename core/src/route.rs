//! Routing: which JetStream subject a batch goes to, and the deterministic ids
//! that make retries idempotent (derived event ids, batch ids).
//!
//! Events without an `event_id` get a derived one: a UUID-shaped xxh3-128
//! hash of the project and the event's exact JSON text (version nibble 8). An
//! SDK resending the same event text then dedups as if it had sent an id; the
//! documented cost is that two genuinely identical events sent separately
//! collapse into one. Every id that decides dedup is deterministic (client
//! `event_id`, else the derived id; `Nats-Msg-Id` a hash of project,
//! partition and event ids), so retries never mint new ids.

use uuid::Uuid;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64};

use crate::contract::{events_subject, EVENTS_SUBJECT_PREFIX};

/// The partition of a device or user key, stable across edges and releases
/// (xxh3 is specified, not an implementation detail like std's hasher).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (xxh3_64(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// The events subject of `region`'s `partition` ([`events_subject`]).
pub fn subject(region: &str, partition: u32) -> String {
    events_subject(region, partition)
}

/// The partition an events subject names (its last token), if it is one.
pub fn partition_of_subject(subject: &str) -> Option<u32> {
    subject
        .strip_prefix(EVENTS_SUBJECT_PREFIX)?
        .rsplit('.')
        .next()?
        .parse()
        .ok()
}

/// True when `region` is a single NATS subject token we accept in config.
pub fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The id given to an event the client sent without one: a hash of the
/// project and the event's exact JSON text, shaped as a UUID (version 8,
/// "custom"). A resend of the same event text gets the same id, so it
/// deduplicates like a client-supplied id would.
pub fn derived_event_id(project_id: &str, event_json: &[u8]) -> Uuid {
    let seed = xxh3_64(project_id.as_bytes());
    let h = xxh3_128_with_seed(event_json, seed);
    uuid::Builder::from_custom_bytes(h.to_be_bytes()).into_uuid()
}

/// The id of one published message, used as `Nats-Msg-Id`: a hash of the
/// project, partition and event ids it carries. Identical content publishes
/// under an identical id, which JetStream's duplicate window drops.
pub fn batch_id(project_id: &str, partition: u32, event_ids: &[Uuid]) -> String {
    let mut buf = Vec::with_capacity(project_id.len() + 5 + event_ids.len() * 16);
    buf.extend_from_slice(project_id.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&partition.to_be_bytes());
    for id in event_ids {
        buf.extend_from_slice(id.as_bytes());
    }
    format!("{:032x}", xxh3_128_with_seed(&buf, 0x5eed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        // Pinned: changing the hash would re-route every device.
        assert_eq!(partition_of("device-1", 16), partition_of("device-1", 16));
        for i in 0..1000 {
            assert!(partition_of(&format!("d{i}"), 16) < 16);
        }
        assert_eq!(partition_of("x", 0), 0);
        assert_eq!(subject("eu-west", 3), "spoor.events.eu-west.3");
        assert_eq!(partition_of_subject("spoor.events.eu-west.3"), Some(3));
        assert_eq!(partition_of_subject("spoor.events.eu-west.x"), None);
        assert_eq!(partition_of_subject("other.eu.3"), None);
    }

    #[test]
    fn regions() {
        assert!(valid_region("eu-west_1"));
        assert!(!valid_region(""));
        assert!(!valid_region("a.b"));
        assert!(!valid_region("a b"));
        assert!(!valid_region(">"));
    }

    #[test]
    fn derived_ids_are_deterministic_and_project_scoped() {
        let a = derived_event_id("p1", br#"{"event":"x"}"#);
        assert_eq!(a, derived_event_id("p1", br#"{"event":"x"}"#));
        assert_ne!(a, derived_event_id("p2", br#"{"event":"x"}"#));
        assert_eq!(a.get_version_num(), 8);
    }

    #[test]
    fn batch_ids_depend_on_content() {
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let b = batch_id("p", 1, &ids);
        assert_eq!(b, batch_id("p", 1, &ids));
        assert_ne!(b, batch_id("p", 2, &ids));
        assert_ne!(b, batch_id("p", 1, &ids[..1]));
        assert_eq!(b.len(), 32);
    }
}
