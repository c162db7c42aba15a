//! `spoor-loadtest record`: saves a time range of real traffic from the
//! events stream as a recording (`recording`) that `replay` sends again.
//!
//! It reads `SPOOR_EVENTS` through `spoor_runtime::stream_read` (an
//! ephemeral ordered consumer, the same read-only pass `spoor reconcile`
//! makes, as the ops role), decodes each message with spoor-core's codec
//! and rebuilds the requests the edge accepted. It never acks, never binds
//! to the relays' durable consumers and writes nothing to NATS. A message
//! that does not decode is skipped and reported (the relays dead-letter it),
//! never a reason to lose the rest.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use spoor_runtime::{stream_read, window, NatsEndpoint};
use time::OffsetDateTime;

use crate::recording::{self, RecordedRequest, RecordingHeader, StreamMessage};

/// How long the first NATS connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Undecodable messages listed in the summary; the count stays exact.
const UNDECODABLE_LISTED: usize = 5;

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub nats: NatsEndpoint,
    pub stream: String,
    /// Messages stored at or after this time (all when unset).
    pub since: Option<OffsetDateTime>,
    /// Messages stored before this time (up to the stream's last as of the
    /// start when unset).
    pub until: Option<OffsetDateTime>,
    /// Only this project's requests.
    pub project: Option<String>,
    /// Largest uncompressed frame decoded (the relay's `--max-frame-bytes`).
    pub max_frame_bytes: usize,
}

/// A recording made, with what was read to make it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub header: RecordingHeader,
    pub requests: Vec<RecordedRequest>,
    /// Stream messages read in the range.
    pub messages: usize,
    /// Frames decoded from them.
    pub frames: usize,
    /// Messages skipped because they do not decode.
    pub undecodable: usize,
    /// The first of those: (stream sequence, why).
    pub undecodable_first: Vec<(u64, String)>,
    /// Requests by project.
    pub projects: BTreeMap<String, usize>,
}

impl Recorded {
    /// Writes the recording: the header line, then a line per request.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        writeln!(w, "{}", recording::to_line(&self.header)?)?;
        for r in &self.requests {
            writeln!(w, "{}", recording::to_line(r)?)?;
        }
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recorded {} requests ({} events) from {} messages ({} frames) of {}",
            self.header.requests,
            self.header.events,
            self.messages,
            self.frames,
            self.header.source
        )?;
        if !self.projects.is_empty() {
            let by: Vec<String> = self
                .projects
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect();
            write!(f, "; requests by project: {}", by.join(", "))?;
        }
        if self.undecodable > 0 {
            let first: Vec<String> = self
                .undecodable_first
                .iter()
                .map(|(seq, why)| format!("seq {seq}: {why}"))
                .collect();
            write!(
                f,
                "\n{} undecodable message(s) skipped (the relays dead-letter them): {}",
                self.undecodable,
                first.join("; ")
            )?;
        }
        Ok(())
    }
}

/// Reads the range from the stream and rebuilds its requests.
pub async fn record(cfg: &RecordConfig) -> anyhow::Result<Recorded> {
    let client = cfg
        .nats
        .connect("spoor-loadtest", Some(CONNECT_TIMEOUT))
        .await?;
    let js = async_nats::jetstream::new(client);
    let mut messages = Vec::new();
    let mut read = 0usize;
    let mut frames = 0usize;
    let mut undecodable = 0usize;
    let mut undecodable_first = Vec::new();
    stream_read::read(&js, &cfg.stream, cfg.since, cfg.until, |m| {
        read += 1;
        match spoor_core::decode_message(&m.payload, cfg.max_frame_bytes) {
            Ok(mut batches) => {
                frames += batches.len();
                if let Some(p) = &cfg.project {
                    batches.retain(|b| &b.project_id == p);
                }
                if !batches.is_empty() {
                    let published_ms =
                        i64::try_from(m.published.unix_timestamp_nanos() / 1_000_000)
                            .unwrap_or(i64::MAX);
                    messages.push(StreamMessage {
                        published_ms,
                        batches,
                    });
                }
            }
            Err(e) => {
                undecodable += 1;
                if undecodable_first.len() < UNDECODABLE_LISTED {
                    undecodable_first.push((m.seq, e.to_string()));
                }
            }
        }
    })
    .await?;
    let requests = recording::requests_from_stream(&messages);
    let mut projects = BTreeMap::new();
    for r in &requests {
        *projects.entry(r.project.clone()).or_default() += 1;
    }
    let events = requests
        .iter()
        .map(|r| r.body["batch"].as_array().map_or(0, Vec::len))
        .sum();
    let mut source = format!("nats stream {}", cfg.stream);
    if let Some(p) = &cfg.project {
        source.push_str(&format!(", project {p}"));
    }
    Ok(Recorded {
        header: RecordingHeader {
            spoor_recording: recording::FORMAT_VERSION,
            source,
            since: cfg.since.map(window::format_time),
            until: cfg.until.map(window::format_time),
            requests: requests.len(),
            events,
        },
        requests,
        messages: read,
        frames,
        undecodable,
        undecodable_first,
        projects,
    })
}
