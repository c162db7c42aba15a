//! The relay's configuration: the plain `RelayConfig` that [`crate::run`]
//! takes, and the clap arguments (flags with `SPOOR_*` environment
//! fallbacks) that `main.rs` turns into it.
//!
//! Nothing here reads the environment or the clock by itself; clap does the
//! reading in `main`, and tests build a `RelayConfig` directly.

use std::time::Duration;

use spoor_core::contract::{DEFAULT_CONSUMER, DEFAULT_EVENTS_STREAM, DEFAULT_PARTITIONS};
use spoor_runtime::nats::{NatsArgs, NatsConnectError, NatsEndpoint};

use crate::batcher::BatchLimits;
use crate::refused::parse_projects;
pub use crate::refused::Projects;
use crate::ring::RingLimits;
pub use crate::source::nats::StreamLimits;
use spoor_core::fullness::{parse_threshold, DEFAULT_DEGRADED_AT};
use spoor_store::retention::{self, Retention};

/// Everything the relay needs besides its listener and shutdown signal.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The NATS server, its CA and the relay's nkey (`run` uses the relay
    /// role's, `migrate` the admin's).
    pub nats: NatsEndpoint,
    pub clickhouse: ClickHouseConfig,
    /// JetStream stream to consume. The embedded stream definition is applied
    /// under this name.
    pub stream: String,
    /// Replicas of every stream the relay applies (events, dead letters)
    /// and of its leases bucket: 1 on a single nats-server, 3 on a
    /// three-node cluster.
    pub stream_replicas: usize,
    /// Consumer name: partition N is consumed through `<consumer>-pN`;
    /// relays sharing it share the partitions.
    pub consumer: String,
    pub batch: BatchLimits,
    /// How long an `event_id` is remembered for dedup.
    pub dedup_window: Duration,
    /// Most ids the dedup window holds (see `dedup::DedupWindow` for memory).
    pub dedup_max_ids: usize,
    /// Most messages one pull request asks for. With JetStream's 2 MiB
    /// message limit this bounds one fetch's frames to `fetch_max_messages`
    /// × 2 MiB in the worst case.
    pub fetch_max_messages: usize,
    /// How long JetStream waits for an ack before redelivering. While an
    /// insert is being retried, the relay extends it with progress acks.
    pub ack_wait: Duration,
    /// On shutdown, how long the relay keeps retrying the final insert
    /// before it gives up and leaves the rest unacked for redelivery.
    pub drain_timeout: Duration,
    /// How often consumer info is polled for the lag gauge.
    pub lag_poll_interval: Duration,
    /// Largest uncompressed frame the decoder will inflate.
    pub max_frame_bytes: usize,
    /// Longest wait between insert retries.
    pub max_retry_backoff: Duration,
    /// Days `events` keeps; 0 keeps it forever.
    pub retention_days: u32,
    /// Days the device tables keep (issue 4); 0 keeps them forever.
    pub device_retention_days: u32,
    /// Days the rollup tables keep; 0 keeps them forever. At least
    /// `retention_days` when both are on ([`RelayConfig::validate`]).
    pub rollup_retention_days: u32,
    /// The device debug ring's bounds.
    pub ring: RingLimits,
    /// The edge's partition count (its `PARTITIONS`), to find a device's
    /// partition when listing dead frames that may hold its events.
    pub partitions: u32,
    /// How long a region-wide debug lookup (`GET /debug/device`) waits for
    /// the relays' answers.
    pub debug_timeout: Duration,
    /// How long a partition lease lives without renewal: the longest a dead
    /// relay's partitions stay unowned (the leases bucket's `max_age`).
    pub lease_ttl: Duration,
    /// The events stream's size limits where they differ from
    /// `deploy/nats/events-stream.json` (applied by `run` and `migrate`).
    pub stream_limits: StreamLimits,
    /// Fullness of the events stream at which `/healthz` says "degraded"
    /// (polled every `lag_poll_interval`).
    pub stream_degraded_at: f64,
    /// The projects whose rows are inserted; frames of others (and of an
    /// empty project id, always) go to the dead letters as
    /// `unknown_project`.
    pub projects: Projects,
}

/// Where and as whom the relay writes.
pub use spoor_store::ClickHouseConfig;

impl RelayConfig {
    /// A config with the documented defaults for everything but the endpoints.
    pub fn new(nats: impl Into<NatsEndpoint>, clickhouse: ClickHouseConfig) -> Self {
        RelayConfig {
            nats: nats.into(),
            clickhouse,
            stream: DEFAULT_EVENTS_STREAM.to_string(),
            stream_replicas: 1,
            consumer: DEFAULT_CONSUMER.to_string(),
            batch: BatchLimits {
                max_rows: 50_000,
                max_bytes: 32 * 1024 * 1024,
                max_messages: 50_000,
                flush_interval_ms: 1_000,
            },
            dedup_window: Duration::from_secs(600),
            dedup_max_ids: 2_000_000,
            fetch_max_messages: 128,
            ack_wait: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            lag_poll_interval: Duration::from_secs(5),
            max_frame_bytes: spoor_core::Limits::default().max_frame_bytes,
            max_retry_backoff: Duration::from_secs(5),
            retention_days: retention::DEFAULT_RETENTION_DAYS,
            device_retention_days: retention::DEFAULT_DEVICE_RETENTION_DAYS,
            rollup_retention_days: retention::DEFAULT_ROLLUP_RETENTION_DAYS,
            ring: RingLimits::default(),
            partitions: DEFAULT_PARTITIONS,
            debug_timeout: Duration::from_millis(300),
            lease_ttl: Duration::from_secs(15),
            stream_limits: StreamLimits::default(),
            stream_degraded_at: DEFAULT_DEGRADED_AT,
            projects: Projects::AnyNonEmpty,
        }
    }

    /// Every table family's retention.
    pub fn retention(&self) -> Retention {
        Retention {
            raw_days: self.retention_days,
            device_days: self.device_retention_days,
            rollup_days: self.rollup_retention_days,
        }
    }

    /// Checks what clap cannot check flag by flag; [`crate::run`] refuses
    /// to start on an error.
    pub fn validate(&self) -> Result<(), retention::PolicyError> {
        self.retention().validate()
    }

    /// Each partition consumer's `max_ack_pending`: everything the two
    /// batches may hold (one being inserted, one filling), as much again
    /// decoded ahead of them (`source::nats::Lookahead`), plus one fetch in
    /// flight. JetStream stops delivering at this bound, which is the second
    /// half of the relay's memory bound.
    pub fn max_ack_pending(&self) -> i64 {
        let buffered = self.batch.max_messages.min(self.batch.max_rows.max(1));
        i64::try_from(
            buffered
                .saturating_mul(3)
                .saturating_add(self.fetch_max_messages),
        )
        .unwrap_or(i64::MAX)
    }
}

/// Where to find NATS and ClickHouse; shared by `run` and `migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "SPOOR_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
    /// ClickHouse database (created if missing).
    #[arg(long, env = "SPOOR_CLICKHOUSE_DB", default_value = "spoor")]
    pub clickhouse_db: String,
    #[arg(long, env = "SPOOR_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    #[arg(long, env = "SPOOR_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,
    /// JetStream stream name.
    #[arg(long, env = "SPOOR_STREAM", default_value = DEFAULT_EVENTS_STREAM)]
    pub stream: String,
    /// Replicas of the streams the relay creates or updates (events, dead
    /// letters) and of its leases bucket: 1 for a single nats-server, 3 for a
    /// three-node cluster (deploy/nats/nats-server-r3.conf). Changing it
    /// scales existing streams at the next start.
    #[arg(long, env = "SPOOR_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// The events stream's max_bytes (e.g. 40GiB) instead of
    /// deploy/nats/events-stream.json's; see deploy/README.md for sizing.
    /// Never below what the stream holds (the relay refuses to start).
    #[arg(long, env = "SPOOR_STREAM_MAX_BYTES", value_parser = parse_stream_bytes)]
    pub stream_max_bytes: Option<i64>,
    /// The events stream's max_msgs instead of the definition's.
    #[arg(long, env = "SPOOR_STREAM_MAX_MSGS", value_parser = clap::value_parser!(i64).range(1..))]
    pub stream_max_msgs: Option<i64>,
}

/// Flags of `spoor-relay run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Address for /healthz and /metrics.
    #[arg(long, env = "SPOOR_RELAY_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// Durable consumer name.
    #[arg(long, env = "SPOOR_CONSUMER", default_value = DEFAULT_CONSUMER)]
    pub consumer: String,
    /// Flush when this many rows are buffered.
    #[arg(long, env = "SPOOR_BATCH_MAX_ROWS", default_value_t = 50_000)]
    pub batch_max_rows: usize,
    /// Flush when buffered rows reach this size as RowBinary (e.g. 32MiB,
    /// 500KB, 1048576). A batch also holds its frames' compressed copy and
    /// their messages' payloads, both smaller.
    #[arg(long, env = "SPOOR_BATCH_MAX_BYTES", default_value = "32MiB", value_parser = parse_byte_size)]
    pub batch_max_bytes: usize,
    /// Flush when the oldest buffered message is this old.
    #[arg(long, env = "SPOOR_FLUSH_INTERVAL_MS", default_value_t = 1_000)]
    pub flush_interval_ms: u64,
    /// How long an event_id is remembered for dedup.
    #[arg(long, env = "SPOOR_DEDUP_WINDOW_SECS", default_value_t = 600)]
    pub dedup_window_secs: u64,
    /// Most event ids remembered for dedup (about 45–85 bytes each).
    #[arg(long, env = "SPOOR_DEDUP_MAX_IDS", default_value_t = 2_000_000)]
    pub dedup_max_ids: usize,
    /// On shutdown, how long to keep retrying the final insert.
    #[arg(long, env = "SPOOR_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// How long JetStream waits for an ack before redelivering a frame to
    /// another relay: how soon a crashed relay's frames move on. Keep it
    /// above the longest insert (the relay sends progress acks while it
    /// retries).
    #[arg(long, env = "SPOOR_ACK_WAIT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_wait_secs: u64,
    /// Largest uncompressed frame the relay inflates (e.g. 8MiB); bigger
    /// frames, and frames whose rows would take over 16 times this (each
    /// row repeats the frame's request fields), are dead-lettered as
    /// `too_large`. Defaults to the edge's own frame limit.
    #[arg(long, env = "SPOOR_MAX_FRAME_BYTES", value_parser = parse_byte_size)]
    pub max_frame_bytes: Option<usize>,
    /// Days `events` keeps (whole UTC days, dropped hourly by partition);
    /// 0 keeps it forever.
    #[arg(long, env = "SPOOR_RETENTION_DAYS", default_value_t = retention::DEFAULT_RETENTION_DAYS)]
    pub retention_days: u32,
    /// Days the device tables (`events_by_device`, `device_users`) and the
    /// identity tables (`identity_links`, `user_traits`, `group_traits`)
    /// keep (whole UTC days, dropped hourly by partition); 0 keeps them
    /// forever.
    #[arg(long, env = "SPOOR_DEVICE_RETENTION_DAYS", default_value_t = retention::DEFAULT_DEVICE_RETENTION_DAYS)]
    pub device_retention_days: u32,
    /// Days the rollup tables keep (whole months, dropped once the month
    /// is entirely past); 0 keeps them forever. At least --retention-days
    /// when both are on.
    #[arg(long, env = "SPOOR_ROLLUP_RETENTION_DAYS", default_value_t = retention::DEFAULT_ROLLUP_RETENTION_DAYS)]
    pub rollup_retention_days: u32,
    /// How far back the device debug ring keeps events (rebuilt from the
    /// stream at start).
    #[arg(long, env = "SPOOR_RING_WINDOW_SECS", default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub ring_window_secs: u64,
    /// Memory budget of the device debug ring (estimated; e.g. 256MiB).
    #[arg(long, env = "SPOOR_RING_MAX_BYTES", default_value = "256MiB", value_parser = parse_byte_size)]
    pub ring_max_bytes: usize,
    /// Most events the debug ring keeps per device; the oldest go first.
    #[arg(
        long,
        env = "SPOOR_RING_MAX_EVENTS_PER_DEVICE",
        default_value_t = 2_000
    )]
    pub ring_max_events_per_device: usize,
    /// The edge's PARTITIONS: one durable consumer and one lease per
    /// partition, and where a device's events go. Must equal the edge's.
    #[arg(long, env = "SPOOR_PARTITIONS", default_value_t = DEFAULT_PARTITIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// How long GET /debug/device waits for every relay's answer.
    #[arg(long, env = "SPOOR_DEBUG_TIMEOUT_MS", default_value_t = 300)]
    pub debug_timeout_ms: u64,
    /// How long a partition lease lives without renewal: a dead relay's
    /// partitions move to the others within this. The first relay creates
    /// the leases bucket with it; an existing bucket's value wins.
    #[arg(long, env = "SPOOR_LEASE_TTL_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl_secs: u64,
    /// Fullness of the events stream (0-1, the nearer of bytes/max_bytes
    /// and messages/max_msgs) at which /healthz says "degraded".
    #[arg(long, env = "SPOOR_STREAM_FULLNESS_DEGRADED", default_value = "0.8", value_parser = parse_threshold)]
    pub stream_fullness_degraded: f64,
    /// The projects this relay inserts, comma-separated (the projects of the
    /// edge's WRITE_KEYS). Frames of any other project, and of an empty
    /// project id, go to the dead letters as `unknown_project`. Unset: every
    /// non-empty project id is inserted.
    #[arg(long, env = "SPOOR_PROJECTS", value_parser = parse_projects)]
    pub projects: Option<std::collections::BTreeSet<String>>,
}

impl ConnectionArgs {
    pub fn clickhouse(&self) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.clickhouse_url.clone(),
            database: self.clickhouse_db.clone(),
            user: self.clickhouse_user.clone(),
            password: self.clickhouse_password.clone(),
        }
    }

    /// A config for `migrate`, which only uses the endpoints and the stream
    /// name. Fails when the nkey seed file cannot be read.
    pub fn into_config(self) -> Result<RelayConfig, NatsConnectError> {
        let mut config = RelayConfig::new(self.nats.endpoint()?, self.clickhouse());
        config.stream = self.stream;
        config.stream_replicas = usize::from(self.stream_replicas);
        config.stream_limits = StreamLimits {
            max_bytes: self.stream_max_bytes,
            max_msgs: self.stream_max_msgs,
        };
        Ok(config)
    }
}

impl RunArgs {
    pub fn into_config(self) -> Result<RelayConfig, NatsConnectError> {
        let mut config = self.connection.into_config()?;
        config.consumer = self.consumer;
        config.batch.max_rows = self.batch_max_rows.max(1);
        config.batch.max_bytes = self.batch_max_bytes.max(1);
        // A run of all-duplicate frames adds acks but no rows; cap the acks at
        // the row bound so max_ack_pending stays tied to the buffer bound.
        config.batch.max_messages = config.batch.max_rows;
        config.batch.flush_interval_ms = self.flush_interval_ms;
        config.dedup_window = Duration::from_secs(self.dedup_window_secs);
        config.dedup_max_ids = self.dedup_max_ids;
        config.drain_timeout = Duration::from_secs(self.drain_timeout_secs);
        config.ack_wait = Duration::from_secs(self.ack_wait_secs);
        if let Some(max) = self.max_frame_bytes {
            config.max_frame_bytes = max.max(1);
        }
        config.retention_days = self.retention_days;
        config.device_retention_days = self.device_retention_days;
        config.rollup_retention_days = self.rollup_retention_days;
        config.ring = RingLimits {
            window_ms: i64::try_from(self.ring_window_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            max_bytes: self.ring_max_bytes,
            max_events_per_device: self.ring_max_events_per_device.max(1),
            ..RingLimits::default()
        };
        config.partitions = self.partitions;
        config.debug_timeout = Duration::from_millis(self.debug_timeout_ms);
        config.lease_ttl = Duration::from_secs(self.lease_ttl_secs);
        config.stream_degraded_at = self.stream_fullness_degraded;
        config.projects = match self.projects {
            Some(list) => Projects::Only(list),
            None => Projects::AnyNonEmpty,
        };
        Ok(config)
    }
}

/// A stream's max_bytes: a byte size of at least 1 KiB (JetStream's
/// limits are i64).
fn parse_stream_bytes(s: &str) -> Result<i64, String> {
    let n = parse_byte_size(s)?;
    match i64::try_from(n) {
        Ok(n) if n >= 1024 => Ok(n),
        _ => Err(format!("`{s}` must be from 1KiB to 8EiB")),
    }
}

/// Parses `1048576`, `512KB`, `32MiB`, `1GiB`, `2 mb` (decimal or binary
/// units, case-insensitive).
pub fn parse_byte_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a byte size like 32MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown byte unit `{other}` in `{s}` (use B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_byte_size;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        run: super::RunArgs,
    }

    #[test]
    fn run_flags_reach_the_config() {
        use clap::Parser as _;
        use std::time::Duration;
        let c =
            Flags::try_parse_from(["relay", "--ack-wait-secs", "7", "--max-frame-bytes", "1MiB"])
                .unwrap()
                .run
                .into_config()
                .unwrap();
        assert_eq!(c.ack_wait, Duration::from_secs(7));
        assert_eq!(c.max_frame_bytes, 1 << 20);
        let d = Flags::try_parse_from(["relay"])
            .unwrap()
            .run
            .into_config()
            .unwrap();
        assert_eq!(d.ack_wait, Duration::from_secs(60));
        assert_eq!(
            d.max_frame_bytes,
            spoor_core::Limits::default().max_frame_bytes
        );
        assert_eq!(d.device_retention_days, 7);
        assert_eq!((d.retention_days, d.rollup_retention_days), (90, 400));
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.stream_replicas, 1);
        let r3 = Flags::try_parse_from(["relay", "--stream-replicas", "3"])
            .unwrap()
            .run
            .into_config()
            .unwrap();
        assert_eq!(r3.stream_replicas, 3);
        assert!(Flags::try_parse_from(["relay", "--stream-replicas", "0"]).is_err());
        assert!(Flags::try_parse_from(["relay", "--stream-replicas", "6"]).is_err());
        let r = Flags::try_parse_from([
            "relay",
            "--device-retention-days",
            "2",
            "--retention-days",
            "30",
            "--rollup-retention-days",
            "0",
        ])
        .unwrap()
        .run
        .into_config()
        .unwrap();
        assert_eq!(
            r.retention(),
            spoor_store::retention::Retention {
                raw_days: 30,
                device_days: 2,
                rollup_days: 0
            }
        );
        assert_eq!(r.validate(), Ok(()));
        // Rollups shorter than raw events parse but do not validate.
        let short = Flags::try_parse_from(["relay", "--rollup-retention-days", "30"])
            .unwrap()
            .run
            .into_config()
            .unwrap();
        assert!(short.validate().is_err());
        assert!(Flags::try_parse_from(["relay", "--retention-days", "-1"]).is_err());
        assert!(Flags::try_parse_from(["relay", "--ack-wait-secs", "0"]).is_err());
        assert!(Flags::try_parse_from(["relay", "--max-frame-bytes", "lots"]).is_err());
        let r = Flags::try_parse_from([
            "relay",
            "--ring-max-bytes",
            "1MiB",
            "--ring-window-secs",
            "60",
            "--ring-max-events-per-device",
            "5",
            "--partitions",
            "4",
        ])
        .unwrap()
        .run
        .into_config()
        .unwrap();
        assert_eq!(r.ring.max_bytes, 1 << 20);
        assert_eq!(r.ring.window_ms, 60_000);
        assert_eq!(r.ring.max_events_per_device, 5);
        assert_eq!(r.partitions, 4);
        assert_eq!(d.ring, crate::ring::RingLimits::default());
        assert!(Flags::try_parse_from(["relay", "--partitions", "0"]).is_err());
        assert_eq!(d.stream_limits, super::StreamLimits::default());
        assert_eq!(d.stream_degraded_at, 0.8);
        let s = Flags::try_parse_from([
            "relay",
            "--stream-max-bytes",
            "64KiB",
            "--stream-max-msgs",
            "500",
            "--stream-fullness-degraded",
            "0.5",
        ])
        .unwrap()
        .run
        .into_config()
        .unwrap();
        assert_eq!(
            s.stream_limits,
            super::StreamLimits {
                max_bytes: Some(65_536),
                max_msgs: Some(500)
            }
        );
        assert_eq!(s.stream_degraded_at, 0.5);
        for bad in [
            ["relay", "--stream-max-bytes", "12"],
            ["relay", "--stream-max-msgs", "0"],
            ["relay", "--stream-fullness-degraded", "1.2"],
            ["relay", "--stream-fullness-degraded", "0"],
        ] {
            assert!(Flags::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert_eq!(d.projects, super::Projects::AnyNonEmpty);
        let p = Flags::try_parse_from(["relay", "--projects", "shop,demo"])
            .unwrap()
            .run
            .into_config()
            .unwrap();
        assert_eq!(
            p.projects,
            super::Projects::Only(["demo".to_string(), "shop".to_string()].into())
        );
        assert!(Flags::try_parse_from(["relay", "--projects", ""]).is_err());
        assert!(Flags::try_parse_from(["relay", "--projects", "a,,b"]).is_err());
    }

    #[test]
    fn byte_sizes() {
        let cases = [
            ("1048576", Some(1_048_576)),
            ("32MiB", Some(32 << 20)),
            ("32mib", Some(32 << 20)),
            ("500KB", Some(500_000)),
            ("2 MB", Some(2_000_000)),
            ("1GiB", Some(1 << 30)),
            ("12B", Some(12)),
            ("", None),
            ("MiB", None),
            ("3 parsecs", None),
            ("-1", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_byte_size(input).ok(), expected, "{input:?}");
        }
    }
}
