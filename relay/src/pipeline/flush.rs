//! One batch's way into ClickHouse, in a task beside the loop: fence,
//! presence check, insert (isolating refused rows), dead letters, ack.
//!
//! The loop hands a full batch over as a [`Job`] (its rows, their ack
//! tokens, the epochs its partitions were pulled under, which of its rows
//! may be stored already and where its frames came from) and goes on
//! buffering the next one while this runs. At most one job runs at a time,
//! so a relay holds two batches of rows: one inserting, one filling.
//!
//! The rules of the loop hold inside the job:
//! - **Ack only after insert**: the job's ack tokens leave through
//!   `Batcher::take` after the insert returned `Ok` and the refused rows'
//!   dead letters are stored.
//! - **Insert only under a valid lease**: before each attempt, partitions
//!   whose lease ran out or changed epoch leave the job NAKed; an attempt
//!   still running when a lease runs out is abandoned and the job's rows
//!   are checked against ClickHouse before the next one.
//! - **Progress while working**: the job's messages get in-progress acks
//!   every third of `ack_wait` while it checks, inserts or waits to retry.
//! - **Bounded by the drain**: once the loop publishes a drain deadline
//!   (shutdown), the job gives up at it and hands its messages back.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::batcher::{Batcher, FlushReason};
use crate::debug::{RingFeed, RingUpdate};
use crate::dedup::DedupKey;
use crate::health::Health;
use crate::internal_events::*;
use crate::metrics::Metrics;
use crate::ownership::leases::Progress;
use crate::ownership::Fence;
use crate::refused::{FlushError, Origins, Refusals};
use crate::sink::clickhouse::encoded::EncodedRow;
use crate::sink::clickhouse::{ClickHouseSink, SinkError};
use crate::source::nats as source;

const FIRST_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long the fence waits when no buffered partition is known to it.
const NO_LEASE_WAIT: Duration = Duration::from_secs(3600);

/// A batch handed from the loop to the flusher.
pub(super) struct Job {
    pub batcher: Batcher<EncodedRow, Acker>,
    /// Keys of rows that may already be in ClickHouse (redelivered
    /// messages, replayed dead letters): checked before the first insert.
    pub unverified: HashSet<DedupKey>,
    /// Where the batch's frames came from, for refused rows' dead letters.
    pub origins: Origins,
    /// The epoch each buffered partition was pulled under.
    pub epochs: BTreeMap<u32, u64>,
    pub reason: FlushReason,
}

/// How a job ended.
pub(super) enum Flushed {
    Inserted,
    /// The drain deadline passed with the insert still failing: `left`
    /// holds what was not inserted, unacked.
    Abandoned {
        left: Batcher<EncodedRow, Acker>,
    },
}

/// A job's result for the loop.
pub(super) struct Outcome {
    pub flushed: Flushed,
    /// Partitions whose lease ran out or changed hands while the job held
    /// rows of them, with the epoch the rows were pulled under; their rows
    /// left the job NAKed.
    pub fenced: Vec<(u32, u64)>,
}

/// How a presence check or an insert, raced against the leases and the
/// drain deadline, ended.
enum Raced<T> {
    Done(T),
    /// A buffered partition's lease ran out (or changed hands) first.
    Fenced,
    /// The drain deadline passed first.
    Abandoned,
}

/// What a job needs of the relay; cloned into each job's task.
#[derive(Clone)]
pub(super) struct Flusher {
    pub client: async_nats::Client,
    pub sink: ClickHouseSink,
    pub fence: Fence,
    pub progress: Arc<Progress>,
    pub ring: RingFeed,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// True while inserts fail: the partition pullers stop pulling.
    pub paused: Arc<watch::Sender<bool>>,
    /// The drain deadline, once shutdown has begun.
    pub deadline: watch::Receiver<Option<Instant>>,
    pub ack_wait: Duration,
    pub max_retry_backoff: Duration,
}

impl Flusher {
    /// Inserts the job's rows, retrying with backoff until it succeeds (or
    /// the drain deadline passes), then acks its messages.
    pub(super) async fn run(self, mut job: Job) -> Outcome {
        let mut fenced = Vec::new();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            self.fence(&mut job, &mut fenced).await;
            if job.batcher.is_empty() {
                // Nothing left to insert (every partition fenced): the
                // pullers must not stay paused on this job's failures.
                self.paused.send_replace(false);
                return Outcome {
                    flushed: Flushed::Inserted,
                    fenced,
                };
            }
            let epochs = buffered_epochs(&job);
            let started = Instant::now();

            let asked = presence_questions(&job);
            let checked = if asked.is_empty() {
                Raced::Done(Ok(HashSet::new()))
            } else {
                self.race(self.stored(&asked), &job, &epochs).await
            };
            let result = match checked {
                Raced::Done(Ok(stored)) => {
                    if !asked.is_empty() {
                        let n = asked.values().map(|(_, ids)| ids.len()).sum();
                        self.drop_stored_rows(&mut job, n, stored, started);
                    }
                    let inserted = Instant::now();
                    // Rows ClickHouse refuses are isolated, and dead-lettered
                    // before anything is acked.
                    let insert = async {
                        let rows = job.batcher.rows();
                        let isolated = self.sink.insert_isolating(rows).await?;
                        job.origins
                            .dead_letter_rejected(
                                rows,
                                &isolated,
                                &self.client,
                                &self.metrics,
                                &self.ring,
                            )
                            .await?;
                        Ok::<_, FlushError>(isolated)
                    };
                    let raced = self.race(insert, &job, &epochs).await;
                    self.timed("insert", inserted);
                    match raced {
                        Raced::Done(r) => Raced::Done(r.map(|isolated| (isolated, inserted))),
                        Raced::Fenced => Raced::Fenced,
                        Raced::Abandoned => Raced::Abandoned,
                    }
                }
                Raced::Done(Err(e)) => Raced::Done(Err(FlushError::from(e))),
                Raced::Fenced => Raced::Fenced,
                Raced::Abandoned => Raced::Abandoned,
            };
            let error = match result {
                Raced::Abandoned => return abandoned(job, fenced),
                Raced::Fenced => {
                    // The insert may have reached the server; the partitions
                    // still held are checked before the next attempt.
                    mark_unverified(&mut job);
                    continue;
                }
                Raced::Done(Ok((isolated, inserted))) => {
                    Refusals::drop_rejected(&mut job.batcher, &isolated);
                    let acknowledging = Instant::now();
                    self.inserted(&mut job, attempt, inserted.elapsed()).await;
                    self.timed("acknowledge", acknowledging);
                    return Outcome {
                        flushed: Flushed::Inserted,
                        fenced,
                    };
                }
                Raced::Done(Err(error)) => error,
            };
            // The attempt may have stored some or all rows before it
            // failed (a lost response, a timeout after the server took the
            // data): ask before the next one.
            mark_unverified(&mut job);
            self.paused.send_replace(true);
            let retry_in = backoff(attempt, self.max_retry_backoff);
            InsertFailed {
                error_type: error.error_type(),
                error: &error,
                rows: job.batcher.row_count(),
                attempt,
                retry_in,
            }
            .emit(&self.metrics);
            self.health.insert_failed(&error);
            let wake = Instant::now() + retry_in;
            if let Some(deadline) = *self.deadline.borrow() {
                if wake >= deadline {
                    return abandoned(job, fenced);
                }
            }
            // Waiting counts as work: progress acks keep going.
            let epochs = buffered_epochs(&job);
            let waited = self
                .race(tokio::time::sleep_until(wake), &job, &epochs)
                .await;
            if let Raced::Abandoned = waited {
                return abandoned(job, fenced);
            }
        }
    }

    /// Drops from the job (unacked, NAKed) every partition whose lease no
    /// longer holds under the epoch its rows were pulled with.
    async fn fence(&self, job: &mut Job, fenced: &mut Vec<(u32, u64)>) {
        let now = Instant::now();
        let mut acks = Vec::new();
        for (partition, epoch) in buffered_epochs(job) {
            if !self.fence.valid(partition, epoch, now) {
                fenced.push((partition, epoch));
                acks.extend(job.batcher.remove_group(partition, EncodedRow::size));
            }
        }
        nak(&self.client, &self.metrics, &acks).await;
    }

    /// When the first of `epochs`' leases runs out (or now, if one is gone
    /// or changed epoch).
    fn fence_deadline(&self, epochs: &[(u32, u64)]) -> Instant {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for &(partition, epoch) in epochs {
            let until = match self.fence.get(partition) {
                Some(h) if h.epoch == epoch => h.valid_until,
                _ => now,
            };
            earliest = Some(earliest.map_or(until, |e| e.min(until)));
        }
        earliest.unwrap_or(now + NO_LEASE_WAIT)
    }

    /// Runs `work` while sending progress acks for the job's messages every
    /// third of `ack_wait`, until it ends, a buffered lease runs out, or the
    /// drain deadline passes.
    async fn race<T>(
        &self,
        work: impl Future<Output = T>,
        job: &Job,
        epochs: &[(u32, u64)],
    ) -> Raced<T> {
        let mut work = std::pin::pin!(work);
        let mut deadline_rx = self.deadline.clone();
        let every = (self.ack_wait / 3).max(Duration::from_millis(100));
        let mut next_progress = Instant::now() + every;
        loop {
            let fence_at = self.fence_deadline(epochs);
            if fence_at <= Instant::now() {
                return Raced::Fenced;
            }
            let deadline = *deadline_rx.borrow_and_update();
            tokio::select! {
                biased;
                r = &mut work => return Raced::Done(r),
                () = tokio::time::sleep_until(fence_at) => {}
                () = sleep_until_some(deadline) => return Raced::Abandoned,
                // Shutdown began: loop round to race the new deadline.
                Ok(()) = deadline_rx.changed(), if deadline.is_none() => {}
                () = tokio::time::sleep_until(next_progress) => {
                    next_progress = Instant::now() + every;
                    // Bounded by the drain deadline, so an unreachable NATS
                    // cannot hold the relay past its drain time.
                    let progress = source::progress_all(&self.client, job.batcher.acks());
                    let sent = match deadline {
                        Some(at) => tokio::time::timeout_at(at, progress).await.ok(),
                        None => tokio::select! {
                            r = progress => Some(r),
                            Ok(()) = deadline_rx.changed() => None,
                        },
                    };
                    if let Some(Err(e)) = sent {
                        AckSignalFailed { kind: "progress", error: &e }.emit(&self.metrics);
                    }
                }
            }
        }
    }

    /// Asks ClickHouse which of `asked` it holds.
    async fn stored(
        &self,
        asked: &BTreeMap<String, (BTreeSet<u16>, Vec<Uuid>)>,
    ) -> Result<HashSet<DedupKey>, SinkError> {
        let mut stored = HashSet::new();
        for (project, (days, ids)) in asked {
            for id in self.sink.stored_ids(project, days, ids).await? {
                stored.insert(DedupKey::new(project, id));
            }
        }
        Ok(stored)
    }

    /// Drops the job's rows ClickHouse already holds, then clears the
    /// unverified marks.
    fn drop_stored_rows(
        &self,
        job: &mut Job,
        asked: usize,
        stored: HashSet<DedupKey>,
        started: Instant,
    ) {
        job.unverified.clear();
        let already = crate::debug::inserted_by_device(
            job.batcher
                .rows()
                .iter()
                .filter(|row| stored.contains(&DedupKey::new(row.project_id(), row.event_id))),
        );
        job.batcher.retain_rows(
            |row| !stored.contains(&DedupKey::new(row.project_id(), row.event_id)),
            EncodedRow::size,
        );
        if !already.is_empty() {
            self.ring.send(RingUpdate::Inserted {
                events: already,
                at_ms: None,
            });
        }
        PresenceChecked {
            asked,
            stored: stored.len(),
            latency: started.elapsed(),
        }
        .emit(&self.metrics);
        DuplicatesDropped {
            layer: "stored",
            count: stored.len(),
        }
        .emit(&self.metrics);
    }

    /// After a successful insert: tell the ring, ack, count.
    async fn inserted(&self, job: &mut Job, attempts: u32, latency: Duration) {
        let inserted = crate::debug::inserted_by_device(job.batcher.rows());
        let at_ms = crate::debug::wall_ms();
        if !inserted.is_empty() {
            self.ring.send(RingUpdate::Inserted {
                events: inserted,
                at_ms: Some(at_ms),
            });
        }
        let drained = job.batcher.take();
        EventsInserted {
            rows: drained.rows,
            bytes: drained.bytes,
            latency,
            reason: job.reason,
            attempts,
        }
        .emit(&self.metrics);
        self.progress.inserted(drained.rows, at_ms);
        self.paused.send_replace(false);
        self.health.insert_succeeded();
        ack(&self.client, &self.metrics, &drained.acks).await;
    }

    fn timed(&self, stage: &'static str, started: Instant) {
        PipelineStageTimed {
            stage,
            elapsed: started.elapsed(),
        }
        .emit(&self.metrics);
    }
}

fn abandoned(job: Job, fenced: Vec<(u32, u64)>) -> Outcome {
    Outcome {
        flushed: Flushed::Abandoned { left: job.batcher },
        fenced,
    }
}

/// Resolves at `deadline`, or never.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The job's partitions that still have rows or messages in it, with the
/// epoch they were pulled under.
fn buffered_epochs(job: &Job) -> Vec<(u32, u64)> {
    job.batcher
        .groups()
        .into_iter()
        .map(|p| (p, job.epochs.get(&p).copied().unwrap_or(0)))
        .collect()
}

/// The unverified rows of the job, by project: (days, ids) to ask about.
fn presence_questions(job: &Job) -> BTreeMap<String, (BTreeSet<u16>, Vec<Uuid>)> {
    let mut asked: BTreeMap<String, (BTreeSet<u16>, Vec<Uuid>)> = BTreeMap::new();
    if job.unverified.is_empty() {
        return asked;
    }
    for row in job.batcher.rows() {
        if job
            .unverified
            .contains(&DedupKey::new(row.project_id(), row.event_id))
        {
            let entry = asked.entry(row.project_id().to_string()).or_default();
            entry.0.insert(row.event_date);
            entry.1.push(row.event_id);
        }
    }
    asked
}

fn mark_unverified(job: &mut Job) {
    let keys = job
        .batcher
        .rows()
        .iter()
        .map(|r| DedupKey::new(r.project_id(), r.event_id));
    job.unverified.extend(keys);
}

/// Acks messages whose rows are stored.
pub(super) async fn ack(client: &async_nats::Client, metrics: &Metrics, acks: &[Acker]) {
    if acks.is_empty() {
        return;
    }
    match source::ack_all(client, acks).await {
        Ok(count) => MessagesAcked { count }.emit(metrics),
        Err(e) => AckFailed {
            error: &e,
            count: acks.len(),
        }
        .emit(metrics),
    }
}

/// NAKs messages given back (bounded by `NAK_TIMEOUT`).
pub(super) async fn nak(client: &async_nats::Client, metrics: &Metrics, acks: &[Acker]) {
    if acks.is_empty() {
        return;
    }
    if let Err(e) = source::nak_all(client, acks).await {
        AckSignalFailed {
            kind: "nak",
            error: &e,
        }
        .emit(metrics);
    }
}

/// Exponential backoff from 100 ms, doubling per attempt, capped at `max`.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    FIRST_RETRY_BACKOFF.saturating_mul(1u32 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_then_caps() {
        let max = Duration::from_secs(5);
        let got: Vec<u64> = (1..=9)
            .map(|a| backoff(a, max).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            vec![100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
