//! Rows the relay will not insert, and where they go instead: the
//! dead-letter stream, re-encoded as frames that `spoor dead-letters replay`
//! puts back on the events stream once the cause is fixed.
//!
//! Two kinds, each with its reason (a `SPOOR_DEAD` subject token and a
//! metric label):
//!
//! - `unknown_project`: a frame whose project id is empty, or not in the
//!   relay's `--projects`. Checked as a message is accepted, before dedup
//!   sees its events: the refused frames are published (PubAck awaited) and
//!   the message's other frames buffered as usual, so the message is acked
//!   only with them. If the dead letter cannot be stored, nothing of the
//!   message is buffered and it comes back after `ack_wait`.
//! - `rejected_by_clickhouse`: rows ClickHouse refused for what they hold,
//!   found by the sink's bisection (`sink::clickhouse::isolate`). Published
//!   after the other rows are stored and before the buffer's messages are
//!   acked; if a dead letter cannot be stored the flush fails and is
//!   retried (the stored rows are then found by the presence check, the
//!   refused ones refused and dead-lettered again).
//!
//! So the ack rule holds row by row: a message is acked only when every
//! row it carried is in ClickHouse, a duplicate, or in a stored dead letter.
//!
//! A dead letter of rows carries `Spoor-Dead-Rows` (its event count) and
//! the original message's subject, id and sequence, one per original
//! message (and per server error); its `Nats-Msg-Id` is derived from the
//! original and the rows' ids, so a redelivered message dead-letters its
//! rows again as a JetStream duplicate. Replayed, it carries
//! `Spoor-Replay-Of-Dead-Rows`: its events were never stored, yet may still
//! sit in the dedup window as this relay's own, so the pipeline checks
//! ClickHouse for them instead of dropping them as duplicates
//! ([`is_rows_replay`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use spoor_core::contract::{dead_letter_header as header, events_subject};
use spoor_core::WireBatch;
use uuid::Uuid;

use crate::batcher::Batcher;
use crate::debug::{RingFeed, RingUpdate};
use crate::internal_events::{InternalEvent, ProjectRefused, RowsRefused};
use crate::metrics::Metrics;
use crate::sink::clickhouse::encoded::{EncodedRow, Rebuilder};
use crate::sink::clickhouse::isolate::Isolated;
use crate::sink::clickhouse::{EventRow, SinkError};
use crate::source::dead_letter::{self, DeadLetterError, RowsLetter};
use crate::source::nats::PulledFrame;

/// Reason of frames whose project the relay does not serve.
pub const UNKNOWN_PROJECT: &str = "unknown_project";
/// Reason of rows ClickHouse refused.
pub const REJECTED_BY_CLICKHOUSE: &str = "rejected_by_clickhouse";

/// The projects a relay inserts (`--projects`, `SPOOR_PROJECTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Projects {
    /// No list configured: any non-empty project id.
    #[default]
    AnyNonEmpty,
    /// Only these.
    Only(BTreeSet<String>),
}

impl Projects {
    /// Whether rows of `project` may be inserted. An empty id never may.
    pub fn admits(&self, project: &str) -> bool {
        match self {
            _ if project.is_empty() => false,
            Projects::AnyNonEmpty => true,
            Projects::Only(list) => list.contains(project),
        }
    }

    /// Why `project` is refused, for the dead letter's detail.
    fn refusal(&self, project: &str) -> String {
        match self {
            _ if project.is_empty() => "the frame's project id is empty".to_string(),
            Projects::AnyNonEmpty => format!("project {project:?} is refused"),
            Projects::Only(list) => format!(
                "project {project:?} is not one of this relay's --projects ({})",
                list.iter().cloned().collect::<Vec<_>>().join(",")
            ),
        }
    }
}

/// Parses `--projects a,b,c`: comma-separated, whitespace around names
/// ignored; an empty name (or an empty list) is an error.
pub fn parse_projects(list: &str) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    for name in list.split(',') {
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "`{list}` has an empty project name; list them like `shop,blog` \
                 (leave --projects unset to accept every non-empty project)"
            ));
        }
        out.insert(name.to_string());
    }
    Ok(out)
}

/// Whether `message` is a replayed rows dead letter (see the module docs).
pub fn is_rows_replay(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(header::REPLAY_OF_DEAD_ROWS).is_some())
}

/// The message a buffered frame came in.
#[derive(Debug)]
struct MessageOrigin {
    subject: String,
    msg_id: String,
    origin: dead_letter::Origin,
    stream_at_ms: i64,
}

/// The pipeline's side of refused rows: the project check, and where the
/// buffer's frames came from (for the dead letters of refused rows).
pub(crate) struct Refusals {
    projects: Projects,
    /// Where the frames of the batch being filled came from; handed over
    /// with the batch ([`Refusals::take_origins`]), so it holds at most one
    /// entry per buffered frame.
    origins: Origins,
}

/// By batch id, the message each frame of one batch came in: where the
/// dead letter of a row ClickHouse refuses says it came from.
#[derive(Debug)]
pub(crate) struct Origins {
    partitions: u32,
    by_batch: HashMap<spoor_store::Shared, Arc<MessageOrigin>>,
}

impl Refusals {
    pub(crate) fn new(projects: Projects, partitions: u32) -> Self {
        Refusals {
            projects,
            origins: Origins {
                partitions,
                by_batch: HashMap::new(),
            },
        }
    }

    /// Moves the frames of `frames` whose project is not served to the
    /// dead letters and returns the others, remembering their message. `None`
    /// when a dead letter could not be stored (logged and counted): the
    /// caller then buffers nothing of the message, which comes back after
    /// `ack_wait`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn screen(
        &mut self,
        frames: Vec<PulledFrame>,
        message: &async_nats::Message,
        origin: &dead_letter::Origin,
        stream_at_ms: i64,
        client: &async_nats::Client,
        metrics: &Metrics,
        ring: &RingFeed,
    ) -> Option<Vec<PulledFrame>> {
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let from = Arc::new(MessageOrigin {
            subject: message.subject.to_string(),
            msg_id,
            origin: origin.clone(),
            stream_at_ms,
        });
        let (kept, refused): (Vec<PulledFrame>, Vec<PulledFrame>) = frames
            .into_iter()
            .partition(|f| self.projects.admits(&f.project_id));
        if !refused.is_empty() {
            // The refused frames as they came (the pullers kept only their
            // encoding): the message decoded again, which it did when pulled.
            let mut batches: Vec<Option<WireBatch>> =
                match spoor_core::decode_message(&message.payload, usize::MAX) {
                    Ok(batches) => batches.into_iter().map(Some).collect(),
                    // Decoding is deterministic, so this cannot happen; if
                    // it did, nothing of the message is buffered (it comes
                    // back after ack_wait), never its frames lost.
                    Err(error) => {
                        tracing::error!(%error, "a pulled message no longer decodes");
                        return None;
                    }
                };
            // One dead letter per refused project.
            let mut by_project: BTreeMap<String, Vec<WireBatch>> = BTreeMap::new();
            for frame in refused {
                if let Some(batch) = batches.get_mut(frame.index).and_then(Option::take) {
                    by_project
                        .entry(batch.project_id.clone())
                        .or_default()
                        .push(batch);
                }
            }
            for (project, batches) in by_project {
                let events: Vec<Uuid> = batches
                    .iter()
                    .flat_map(|b| b.events.iter().map(|e| e.event_id))
                    .collect();
                ProjectRefused {
                    project: &project,
                    frames: batches.len(),
                    events: events.len(),
                    subject: &from.subject,
                    stream_sequence: origin.stream_sequence,
                }
                .emit(metrics);
                let detail = self.projects.refusal(&project);
                if publish(
                    client,
                    &from,
                    UNKNOWN_PROJECT,
                    &detail,
                    &batches,
                    &events,
                    metrics,
                    ring,
                )
                .await
                .is_err()
                {
                    return None;
                }
            }
        }
        for frame in &kept {
            self.origins
                .by_batch
                .entry(frame.batch_id.clone())
                .or_insert_with(|| from.clone());
        }
        Some(kept)
    }

    /// The origins of the batch filled so far, which leaves for its
    /// insert; the next batch starts with none.
    pub(crate) fn take_origins(&mut self) -> Origins {
        let partitions = self.origins.partitions;
        std::mem::replace(
            &mut self.origins,
            Origins {
                partitions,
                by_batch: HashMap::new(),
            },
        )
    }

    /// Drops the refused rows from the buffer (their dead letters are
    /// stored); their messages stay, acked with the next insert.
    pub(crate) fn drop_rejected(batcher: &mut Batcher<EncodedRow, Acker>, isolated: &Isolated) {
        if isolated.rejected.is_empty() {
            return;
        }
        let mut refused = isolated.rejected.iter().map(|r| r.index).peekable();
        let mut index = 0usize;
        // `retain` visits the rows once each, in order.
        batcher.retain_rows(
            |_| {
                let drop = refused.peek() == Some(&index);
                if drop {
                    refused.next();
                }
                index += 1;
                !drop
            },
            EncodedRow::size,
        );
    }
}

impl Origins {
    /// Dead-letters the rows of `rows` that `isolated` says ClickHouse
    /// refused: one dead letter per original message and server error.
    pub(crate) async fn dead_letter_rejected(
        &self,
        rows: &[EncodedRow],
        isolated: &Isolated,
        client: &async_nats::Client,
        metrics: &Metrics,
        ring: &RingFeed,
    ) -> Result<(), DeadLetterError> {
        let Some(first) = isolated.rejected.first() else {
            return Ok(());
        };
        RowsRefused {
            rows: rows.len(),
            refused: isolated.rejected.len(),
            inserts: isolated.inserts,
            error: &first.error,
        }
        .emit(metrics);
        // (subject, stream seq, error) -> (origin, rows), in a stable order.
        type Key<'a> = (String, Option<u64>, &'a str);
        let mut groups: BTreeMap<Key<'_>, (Arc<MessageOrigin>, Vec<EventRow>)> = BTreeMap::new();
        let mut rebuild = Rebuilder::default();
        for rejected in &isolated.rejected {
            let Some(encoded) = rows.get(rejected.index) else {
                continue;
            };
            // The row's values, for the dead letter's frame: its message
            // decoded again (it decoded when pulled). Were that to fail,
            // the flush fails and is retried: the row is never dropped
            // without its dead letter.
            let Some(row) = rebuild.event_row(encoded) else {
                return Err(DeadLetterError::Rebuild {
                    event_id: encoded.event_id,
                });
            };
            let from = self.origin_of(encoded);
            let key = (
                from.subject.clone(),
                from.origin.stream_sequence,
                rejected.error.as_str(),
            );
            groups
                .entry(key)
                .or_insert_with(|| (from, Vec::new()))
                .1
                .push(row);
        }
        for ((_, _, error), (from, rows)) in groups {
            let batches = spoor_store::row::batches_of(rows.iter());
            let events: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
            publish(
                client,
                &from,
                REJECTED_BY_CLICKHOUSE,
                error,
                &batches,
                &events,
                metrics,
                ring,
            )
            .await?;
        }
        Ok(())
    }

    /// The message a row's frame came in; for a row whose frame is not
    /// known (it cannot happen while the buffer and the map agree), the
    /// subject its device routes to, without a sequence.
    fn origin_of(&self, row: &EncodedRow) -> Arc<MessageOrigin> {
        let frame = row.frame();
        if let Some(from) = self.by_batch.get(&frame.batch_id) {
            return from.clone();
        }
        let partition = spoor_core::route::partition_of(row.device_key(), self.partitions);
        Arc::new(MessageOrigin {
            subject: events_subject(&frame.edge_region, partition),
            msg_id: String::new(),
            origin: dead_letter::Origin::default(),
            stream_at_ms: crate::debug::wall_ms(),
        })
    }
}

/// Encodes `batches` as one payload (a frame, or a bundle of frames) and
/// publishes it as a rows dead letter of `from`; tells the ring.
#[allow(clippy::too_many_arguments)]
async fn publish(
    client: &async_nats::Client,
    from: &MessageOrigin,
    reason: &'static str,
    detail: &str,
    batches: &[WireBatch],
    events: &[Uuid],
    metrics: &Metrics,
    ring: &RingFeed,
) -> Result<(), DeadLetterError> {
    let payload = encode(batches).map_err(|e| {
        let error = DeadLetterError::Encode(e);
        crate::internal_events::DeadLetterFailed {
            reason,
            stream_sequence: from.origin.stream_sequence,
            error: &error,
        }
        .emit(metrics);
        error
    })?;
    let letter = RowsLetter {
        subject: &from.subject,
        original_msg_id: &from.msg_id,
        origin: &from.origin,
        reason,
        detail,
        event_ids: events,
        payload,
    };
    dead_letter::publish_rows(client, &letter, metrics).await?;
    ring.send(RingUpdate::Dead(spoor_core::debug::DeadFrame {
        subject: from.subject.clone(),
        stream_seq: from.origin.stream_sequence.unwrap_or(0),
        reason: reason.to_string(),
        stream_at_ms: from.stream_at_ms,
    }));
    Ok(())
}

/// One frame, or a bundle when there are several.
fn encode(batches: &[WireBatch]) -> Result<Bytes, spoor_core::codec::EncodeError> {
    let frames = batches
        .iter()
        .map(spoor_core::encode_batch)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match frames.as_slice() {
        [one] => Bytes::from(one.clone()),
        _ => Bytes::from(spoor_core::codec::encode_bundle(&frames)),
    })
}

/// What a flush can fail on: the insert, or storing the dead letters of
/// the rows ClickHouse refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlushError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the rows ClickHouse refused could not be dead-lettered (the others are stored): {0}")]
    DeadLetter(#[from] DeadLetterError),
}

impl FlushError {
    /// The `error_type` of the failure's warning and count.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            FlushError::Sink(_) => "clickhouse",
            FlushError::DeadLetter(_) => "dead_letter",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_projects, Projects};

    #[test]
    fn a_list_admits_its_projects_and_nothing_admits_an_empty_id() {
        let only = Projects::Only(parse_projects(" shop, blog ,shop").unwrap());
        assert_eq!(
            only,
            Projects::Only(["blog".to_string(), "shop".to_string()].into())
        );
        assert!(only.admits("shop") && only.admits("blog"));
        assert!(!only.admits("Shop") && !only.admits("other") && !only.admits(""));
        let any = Projects::AnyNonEmpty;
        assert!(any.admits("anything") && !any.admits(""));
        assert_eq!(
            only.refusal("x"),
            "project \"x\" is not one of this relay's --projects (blog,shop)"
        );
        assert_eq!(any.refusal(""), "the frame's project id is empty");
    }

    #[test]
    fn a_list_with_an_empty_name_is_refused() {
        for bad in ["", " ", "a,,b", "a,", ",a"] {
            assert!(parse_projects(bad).is_err(), "{bad:?}");
        }
    }
}
