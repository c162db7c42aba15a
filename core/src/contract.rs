//! The NATS contract: every stream, subject and header name, and every
//! default, that Spoor's processes must agree on. The edge publishes to the
//! events subjects, the relay consumes them and writes the dead-letter and
//! claims streams and answers debug lookups, and the `spoor` CLI, the load
//! generator and the tests read all of them; each takes the names from here.
//!
//! Pure constants and functions: no NATS client, no runtime, so the edge
//! (wasm32) shares them. The stream *definitions* (retention, limits; the
//! JSON in `deploy/nats/`) are applied by the relay and stay there; the
//! names below are what those definitions must declare, and the relay's
//! unit tests check that they do.
//!
//! Invariants: a name here is part of the wire contract between deployed
//! processes of possibly different versions, so changing one is a
//! migration, not a refactor.

/// The events stream's default name (`--stream` / `SPOOR_STREAM` choose
/// another; the name is configurable, the subjects are not).
pub const DEFAULT_EVENTS_STREAM: &str = "SPOOR_EVENTS";

/// Subject prefix of the events stream; the full subject is
/// `spoor.events.<region>.<partition>`.
pub const EVENTS_SUBJECT_PREFIX: &str = "spoor.events";

/// Every subject the edge publishes to: `spoor.events.<region>.<partition>`.
pub const EVENTS_FILTER: &str = "spoor.events.>";

/// The subject one partition of one region publishes to.
pub fn events_subject(region: &str, partition: u32) -> String {
    format!("{EVENTS_SUBJECT_PREFIX}.{region}.{partition}")
}

/// The dead-letter stream's name: frames the relay can never insert.
pub const DEAD_STREAM: &str = "SPOOR_DEAD";
/// Dead letters are published to `spoor.dead.<reason>`.
pub const DEAD_SUBJECT_PREFIX: &str = "spoor.dead.";
/// Everything in the dead-letter stream.
pub const DEAD_FILTER: &str = "spoor.dead.>";

/// Header names on a dead letter. The relay writes them; `spoor
/// dead-letters` and `spoor reconcile` read them back.
pub mod dead_letter_header {
    /// The `DecodeError::kind()` label, e.g. `bad_magic`, or why rows of a
    /// decoded frame were not inserted (`unknown_project`,
    /// `rejected_by_clickhouse`).
    pub const REASON: &str = "Spoor-Dead-Reason";
    /// The decode error's text, for a person.
    pub const DETAIL: &str = "Spoor-Dead-Detail";
    pub const ORIGINAL_STREAM: &str = "Spoor-Original-Stream";
    pub const ORIGINAL_SUBJECT: &str = "Spoor-Original-Subject";
    /// The original's `Nats-Msg-Id` (empty if it had none).
    pub const ORIGINAL_MSG_ID: &str = "Spoor-Original-Msg-Id";
    pub const ORIGINAL_STREAM_SEQ: &str = "Spoor-Original-Stream-Seq";
    /// When JetStream stored the original, RFC 3339.
    pub const ORIGINAL_TIME: &str = "Spoor-Original-Time";
    /// On a replayed frame: the events-stream sequence of the frame it replays.
    pub const REPLAY_OF_STREAM_SEQ: &str = "Spoor-Replay-Of-Stream-Seq";
    /// On a dead letter that holds some events of the original message,
    /// re-encoded as a frame (or a bundle) of the events stream's format,
    /// rather than the original bytes: how many events it holds. The
    /// relay writes it for rows it would not insert (`unknown_project`,
    /// `rejected_by_clickhouse`); the rest of the original was inserted.
    pub const ROWS: &str = "Spoor-Dead-Rows";
    /// On a replayed rows dead letter (one with [`ROWS`]), instead of
    /// [`REPLAY_OF_STREAM_SEQ`]: the dead letter's sequence. Its events were
    /// never stored, so the relay does not drop them as duplicates of the
    /// original's copies; it checks ClickHouse for them instead.
    pub const REPLAY_OF_DEAD_ROWS: &str = "Spoor-Replay-Of-Dead-Rows";
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
}

/// The subjects of one partition across regions: `spoor.events.*.<partition>`.
/// Each partition has its own durable consumer with this filter.
pub fn partition_filter(partition: u32) -> String {
    format!("{EVENTS_SUBJECT_PREFIX}.*.{partition}")
}

/// The durable consumer of one partition: `<consumer>-p<partition>`. Only
/// the relay holding the partition's lease pulls from it.
pub fn partition_consumer(consumer: &str, partition: u32) -> String {
    format!("{consumer}-p{partition}")
}

/// The KV bucket holding the relays' partition leases and their presence
/// records, for an events stream: `<stream>_LEASES` (its JetStream stream is
/// `KV_<stream>_LEASES`).
pub fn leases_bucket(events_stream: &str) -> String {
    format!("{events_stream}_LEASES")
}

/// The lease key of one partition in [`leases_bucket`].
pub fn lease_key(partition: u32) -> String {
    format!("{LEASE_KEY_PREFIX}{partition}")
}

/// Prefix of partition lease keys.
pub const LEASE_KEY_PREFIX: &str = "partition.";

/// The presence key of one relay instance in [`leases_bucket`].
pub fn relay_key(instance: &str) -> String {
    format!("{RELAY_KEY_PREFIX}{instance}")
}

/// Prefix of relay presence keys.
pub const RELAY_KEY_PREFIX: &str = "relay.";

/// The value of a partition's lease key: who holds it, since when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    pub relay: String,
    /// Wall-clock milliseconds when the holder acquired the lease.
    pub acquired_ms: i64,
}

/// The value of a relay's presence key, rewritten at every lease renewal:
/// what `spoor relays` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayRecord {
    pub relay: String,
    pub host: String,
    pub pid: u32,
    pub started_ms: i64,
    /// When this record was written.
    pub updated_ms: i64,
    /// Partitions whose lease the relay holds, ascending.
    pub partitions: Vec<u32>,
    /// When its last insert into ClickHouse succeeded, if one has.
    pub last_insert_ms: Option<i64>,
    /// Rows it has inserted since it started.
    pub rows_inserted: u64,
}

/// The subject every relay of `events_stream`'s region answers device
/// debug lookups on (request/reply, no queue group).
pub fn debug_subject(events_stream: &str) -> String {
    format!("spoor.debug.{events_stream}.device")
}

/// The relays' default consumer name: partition `p` is consumed through
/// the durable consumer [`partition_consumer`]`(name, p)`.
pub const DEFAULT_CONSUMER: &str = "spoor-relay";

/// The edge's default `PARTITIONS`: how many events subjects a region's
/// devices are spread over (the relay needs the same number to place a
/// device on its partition).
pub const DEFAULT_PARTITIONS: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_cover_their_subjects() {
        assert_eq!(EVENTS_FILTER, format!("{EVENTS_SUBJECT_PREFIX}.>"));
        assert_eq!(events_subject("eu-west", 3), "spoor.events.eu-west.3");
        assert_eq!(DEAD_FILTER, format!("{DEAD_SUBJECT_PREFIX}>"));
        assert_eq!(partition_filter(3), "spoor.events.*.3");
        assert_eq!(partition_consumer("spoor-relay", 3), "spoor-relay-p3");
        assert_eq!(leases_bucket("OTHER"), "OTHER_LEASES");
        assert_eq!(lease_key(3), "partition.3");
        assert_eq!(relay_key("r1"), "relay.r1");
        assert_eq!(
            debug_subject(DEFAULT_EVENTS_STREAM),
            "spoor.debug.SPOOR_EVENTS.device"
        );
    }
}
