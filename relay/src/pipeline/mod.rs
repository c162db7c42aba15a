//! The relay loop: take frames from the partitions this relay holds,
//! dedup, buffer; a full batch goes to the flusher (`flush`), which
//! inserts it and acks its messages while the loop fills the next one.
//!
//! The partition pullers decode each message and encode its rows for the
//! insert (RowBinary and a compressed block per frame,
//! `sink::clickhouse::encoded`) before the loop sees it, so the loop only
//! decides (dedup, buffer, flush) and an insert only sends bytes.
//!
//! One task does the deciding, in sequence, which is what makes the rules
//! that matter easy to see; one job at a time does the inserting:
//!
//! - **Ack only after insert.** A message's ack token sits in the `Batcher`
//!   next to its rows; a full batch moves whole into a `flush::Job`, and
//!   its tokens leave only through `Batcher::take` after
//!   `ClickHouseSink::insert_isolating` returned `Ok` and the rows it
//!   refused are in stored dead letters (see `refused`).
//! - **Insert only under a valid lease.** Rows are buffered by partition
//!   with the epoch of the lease they were pulled under, and before and
//!   during every presence check and insert the job checks each
//!   partition's lease (`ownership::Fence`): a partition whose lease ran
//!   out or changed epoch leaves the job, its messages NAKed for the next
//!   owner, and an insert still running when a lease runs out is abandoned.
//!   The loop then forgets the partition, gives back what it had buffered
//!   of it since, and hands its lease back to the lease task, so it is
//!   acquired again under a new epoch. A message pulled under an earlier
//!   epoch of a partition is NAKed, never taken under the current one.
//! - **Bounded memory: two batches.** One batch is inserted while the next
//!   fills; the filling one is flushed as soon as a frame takes it past a
//!   bound, so each exceeds `max_rows`/`max_bytes` by at most one frame.
//!   When the next batch is full before the insert in flight ends, the loop
//!   takes no frames until it does. The partition pullers decode and
//!   encode frames ahead of the loop within a budget of `max_rows` rows
//!   (`source::nats::Lookahead`). While an insert fails, the job retries it
//!   with backoff and the partition pullers issue no new pull request
//!   (those in flight end within `MAX_FETCH_WAIT`), so JetStream holds the
//!   rest (`max_ack_pending` caps what is delivered but unacked per
//!   partition).
//! - **Progress while working.** While a presence check or an insert runs,
//!   and while a failed insert waits to be retried, the job's messages get
//!   in-progress acks every third of `ack_wait`, and so do the messages of
//!   the batch waiting behind it, so a slow ClickHouse never makes
//!   JetStream redeliver them to the next owner.
//!
//! Ownership arrives from the lease task (`ownership::leases`): an acquired
//! partition first gets its dedup window rebuilt from the stream (in a task
//! beside the loop), then a puller; a partition to hand over stops pulling,
//! the job in flight ends, the buffer is flushed and acked, and only then
//! is its lease deleted; a lost one leaves the buffer unacked.
//!
//! Shutdown: when the shutdown future resolves the pullers stop (NAKing
//! what they had not passed on) and the drain deadline (`drain_timeout`
//! after the signal) goes to the job in flight; it ends, then the buffer
//! is flushed the same way, and what is inserted is acked. A job still
//! failing at the deadline gives up, and its messages are NAKed so another
//! relay gets them at once instead of after `ack_wait`. Every ack,
//! progress ack and NAK is bounded in time (`source::nats::ACK_TIMEOUT`,
//! `NAK_TIMEOUT`), so an unreachable NATS cannot hold the drain past its
//! deadline.
//!
//! It never panics on input: a frame that fails to decode, a frame of a
//! project not served and a row ClickHouse refuses are counted and
//! dead-lettered, and every other failure is retried.

mod flush;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Acker;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::batcher::{Batcher, FlushReason};
use crate::config::RelayConfig;
use crate::debug::{RingFeed, RingUpdate};
use crate::dedup::{DedupKey, DedupWindow, Delivery, Origin, Verdict};
use crate::health::Health;
use crate::internal_events::*;
use crate::metrics::Metrics;
use crate::ownership::leases::Progress;
use crate::ownership::{Fence, Ownership};
use crate::refused::{self, Refusals};
use crate::sink::clickhouse::encoded::EncodedRow;
use crate::sink::clickhouse::ClickHouseSink;
use crate::source::dead_letter;
use crate::source::nats::{self as source, Fetched};

/// Longest the loop sleeps with nothing to do.
const IDLE_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Pipeline {
    config: RelayConfig,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// Every partition's consumer, by partition.
    consumers: Vec<PullConsumer>,
    /// Frames up to this stream sequence were delivered by the single
    /// consumer of relays before partition ownership: maybe stored.
    legacy_delivered: u64,
    /// The batch being filled.
    batcher: Batcher<EncodedRow, Acker>,
    /// The batch being inserted, if any.
    inflight: Option<InFlight>,
    /// Clones of what a job needs, one per job.
    flusher: flush::Flusher,
    /// When a full batch began waiting for the job in flight.
    blocked_since: Option<Instant>,
    /// When the waiting batch's messages next get progress acks.
    filling_progress_at: Instant,
    /// The drain deadline, for the job in flight.
    deadline: watch::Sender<Option<Instant>>,
    /// The dedup window of each partition being pulled.
    windows: HashMap<u32, DedupWindow>,
    /// The partitions held, with the epoch of their lease and their puller
    /// (none while the window is rebuilt, or while handing over).
    held: BTreeMap<u32, Holding>,
    /// The rows the pullers may decode ahead of the loop.
    lookahead: source::Lookahead,
    fetched_tx: mpsc::Sender<Fetched>,
    fetched: mpsc::Receiver<Fetched>,
    /// True while inserts fail: the pullers stop pulling, so JetStream, not
    /// the relay, holds what arrives meanwhile. Set by the jobs.
    paused: Arc<watch::Sender<bool>>,
    /// Pullers stopped at shutdown, joined by the drain.
    stopping: Vec<tokio::task::JoinHandle<()>>,
    ownership: OwnershipLink,
    /// The debug ring's feed: sends never wait.
    ring: RingFeed,
    /// Frames of projects not served, and rows ClickHouse refuses: to the
    /// dead letters (see `refused`).
    refusals: Refusals,
    /// Keys of buffered rows that may already be in ClickHouse: rows of
    /// redelivered messages and replayed dead letters. They go with the
    /// batch, whose job checks them (and, after a failed attempt, the whole
    /// batch) and drops the stored ones before inserting.
    unverified: HashSet<DedupKey>,
    metrics: Arc<Metrics>,
    /// The relay's monotonic clock origin; `now_ms` is measured from here
    /// and handed to the pure dedup and batcher logic.
    epoch: Instant,
    /// Set once the shutdown future has resolved (it must not be polled again).
    shutting_down: bool,
    /// When shutdown gives up on draining.
    drain_deadline: Option<Instant>,
}

/// The pipeline's end of the lease task's channels.
pub(crate) struct OwnershipLink {
    /// What the lease task decided.
    pub changes: mpsc::Receiver<Ownership>,
    /// Partitions handed over (flushed): their leases may be deleted.
    pub released: mpsc::Sender<u32>,
}

/// A job running in its task, with the size of its batch when it left.
struct InFlight {
    task: tokio::task::JoinHandle<flush::Outcome>,
    rows: usize,
    bytes: usize,
    messages: usize,
}

struct Holding {
    epoch: u64,
    puller: Option<Puller>,
}

/// A partition's puller task and its stop switch.
struct Puller {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long the loop waits for a stopped puller: its pull request in
/// flight expires within `source::nats::MAX_FETCH_WAIT`, then it NAKs what
/// that request brought.
const PULLER_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A partition's window, rebuilt beside the loop.
struct WindowReady {
    partition: u32,
    epoch: u64,
    result: Result<(u64, DedupWindow), source::SourceError>,
    started: Instant,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: RelayConfig,
        client: async_nats::Client,
        consumers: source::PartitionConsumers,
        ownership: OwnershipLink,
        fence: Fence,
        progress: Arc<Progress>,
        ring: RingFeed,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        let sink = ClickHouseSink::new(&config.clickhouse, config.ack_wait);
        let batcher = Batcher::new(config.batch);
        // Every message waiting in the channel holds at least one row of
        // the lookahead budget, so the budget, not the channel, is the bound.
        let lookahead = source::Lookahead::new(config.batch.max_rows, config.max_frame_bytes);
        let (fetched_tx, fetched) =
            mpsc::channel(config.batch.max_rows.max(config.fetch_max_messages).max(1));
        let refusals = Refusals::new(config.projects.clone(), config.partitions);
        let paused = Arc::new(watch::channel(false).0);
        let (deadline, deadline_rx) = watch::channel(None);
        let flusher = flush::Flusher {
            client: client.clone(),
            sink,
            fence,
            progress,
            ring: ring.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            paused: paused.clone(),
            deadline: deadline_rx,
            ack_wait: config.ack_wait,
            max_retry_backoff: config.max_retry_backoff,
        };
        Pipeline {
            js: async_nats::jetstream::new(client.clone()),
            config,
            client,
            consumers: consumers.consumers,
            legacy_delivered: consumers.legacy_delivered,
            batcher,
            inflight: None,
            flusher,
            blocked_since: None,
            filling_progress_at: Instant::now(),
            deadline,
            windows: HashMap::new(),
            held: BTreeMap::new(),
            lookahead,
            fetched_tx,
            fetched,
            paused,
            stopping: Vec::new(),
            ownership,
            ring,
            refusals,
            unverified: HashSet::new(),
            metrics,
            epoch: Instant::now(),
            shutting_down: false,
            drain_deadline: None,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs until `shutdown` resolves and the buffer is drained (or the
    /// drain timed out).
    pub(crate) async fn run<S: Future<Output = ()>>(mut self, mut shutdown: Pin<&mut S>) {
        let (ready_tx, mut ready_rx) = mpsc::channel::<WindowReady>(64);
        while !self.shutting_down {
            let now = self.now_ms();
            let due = self.batcher.flush_reason(now);
            if let Some(reason) = due {
                if self.inflight.is_none() {
                    self.start_flush(reason);
                    self.report_buffer();
                    continue;
                }
                // Full while the last batch is still being inserted: take
                // no frames until it is.
                self.blocked_since.get_or_insert_with(Instant::now);
            }
            let blocked = due.is_some();
            let wake = match self.batcher.flush_deadline_ms() {
                Some(deadline) => Duration::from_millis(deadline.saturating_sub(now)),
                None => IDLE_WAIT,
            }
            .min(IDLE_WAIT);
            let waiting = self.inflight.is_some() && !self.batcher.is_empty();
            tokio::select! {
                biased;
                () = shutdown.as_mut() => self.begin_shutdown(),
                result = job_done(&mut self.inflight) => self.on_flushed(result).await,
                Some(change) = self.ownership.changes.recv() => {
                    // Take every change already queued: handovers decided
                    // in one round are done together.
                    let mut changes = vec![change];
                    while let Ok(more) = self.ownership.changes.try_recv() {
                        changes.push(more);
                    }
                    self.on_ownership(changes, &ready_tx, &mut shutdown).await;
                }
                Some(ready) = ready_rx.recv() => self.on_window(ready),
                Some(fetched) = self.fetched.recv(), if !blocked => {
                    let started = Instant::now();
                    self.on_fetched(fetched).await;
                    self.timed("receive", started);
                }
                () = tokio::time::sleep_until(self.filling_progress_at), if waiting => {
                    self.progress_filling(&mut shutdown).await;
                }
                () = tokio::time::sleep(wake), if !blocked => {}
            }
        }
        self.drain().await;
    }

    /// Starts the drain: fetching stops, and the inserts are tried until
    /// the drain timeout after the shutdown signal.
    fn begin_shutdown(&mut self) {
        let deadline = Instant::now() + self.config.drain_timeout;
        if !self.shutting_down {
            self.shutting_down = true;
            self.drain_deadline = Some(deadline);
            self.deadline.send_replace(Some(deadline));
            let partitions: Vec<u32> = self.held.keys().copied().collect();
            for partition in partitions {
                if let Some(task) = self.stop_pulling(partition) {
                    self.stopping.push(task);
                }
            }
            tracing::info!(
                rows = self.batcher.row_count(),
                messages = self.batcher.message_count(),
                "shutdown requested; draining the buffer"
            );
        }
    }

    /// Applies ownership changes in order; consecutive handovers are done
    /// together (their pullers stopped at once, one flush).
    async fn on_ownership<S: Future<Output = ()>>(
        &mut self,
        changes: Vec<Ownership>,
        ready: &mpsc::Sender<WindowReady>,
        shutdown: &mut Pin<&mut S>,
    ) {
        let mut releasing = Vec::new();
        // What lost partitions leave behind, NAKed together: with NATS
        // unreachable each NAK waits out its timeout.
        let mut given_back = Vec::new();
        for change in changes {
            if let Ownership::Release { partition } = change {
                releasing.push(partition);
                continue;
            }
            self.hand_over(std::mem::take(&mut releasing), shutdown)
                .await;
            given_back.extend(self.on_change(change, ready));
        }
        self.nak(&given_back).await;
        self.hand_over(releasing, shutdown).await;
    }

    /// Hands partitions over: their pulls in flight end (NAKing what they
    /// bring) before the leases go, so nothing of them is delivered here
    /// afterwards; what is buffered of them is inserted and acked; then the
    /// lease task may delete their leases.
    async fn hand_over<S: Future<Output = ()>>(
        &mut self,
        partitions: Vec<u32>,
        shutdown: &mut Pin<&mut S>,
    ) {
        if partitions.is_empty() {
            return;
        }
        let stopping: Vec<_> = partitions
            .iter()
            .filter_map(|&p| self.stop_pulling(p))
            .collect();
        let _ = tokio::time::timeout(
            PULLER_STOP_TIMEOUT,
            futures_util::future::join_all(stopping),
        )
        .await;
        // The job in flight may hold rows of them: it ends first.
        self.settle(shutdown).await;
        let groups = self.batcher.groups();
        if partitions.iter().any(|p| groups.contains(p)) {
            self.flush_now(FlushReason::Handover, shutdown).await;
        }
        let mut given_back = Vec::new();
        for &partition in &partitions {
            self.held.remove(&partition);
            self.windows.remove(&partition);
            // Whatever is still buffered of it (a flush abandoned by
            // shutdown) goes back to the stream for the next owner.
            given_back.extend(self.take_back(partition));
        }
        self.nak(&given_back).await;
        for partition in partitions {
            let _ = self.ownership.released.send(partition).await;
        }
    }

    /// Applies one acquisition or loss; returns the messages to NAK.
    fn on_change(&mut self, change: Ownership, ready: &mpsc::Sender<WindowReady>) -> Vec<Acker> {
        match change {
            Ownership::Acquired { partition, epoch } => {
                let _ = self.stop_pulling(partition);
                // Rows still buffered from an earlier lease on it were
                // pulled under another epoch: never insert them under this one.
                let given_back = self.take_back(partition);
                self.held.insert(
                    partition,
                    Holding {
                        epoch,
                        puller: None,
                    },
                );
                self.rebuild_window(partition, epoch, ready.clone());
                given_back
            }
            Ownership::Lost { partition } => {
                let _ = self.stop_pulling(partition);
                self.held.remove(&partition);
                self.windows.remove(&partition);
                self.take_back(partition)
            }
            // Batched by `on_ownership`.
            Ownership::Release { .. } => Vec::new(),
        }
    }

    /// Tells the partition's puller to stop; returns its task to wait on.
    fn stop_pulling(&mut self, partition: u32) -> Option<tokio::task::JoinHandle<()>> {
        let puller = self.held.get_mut(&partition)?.puller.take()?;
        let _ = puller.stop.send(true);
        Some(puller.task)
    }

    /// Takes a partition's rows out of the buffer unacked and returns
    /// their messages, to NAK so its next owner gets them at once.
    fn take_back(&mut self, partition: u32) -> Vec<Acker> {
        self.batcher.remove_group(partition, EncodedRow::size)
    }

    /// NAKs messages given back (bounded by `NAK_TIMEOUT`).
    async fn nak(&self, acks: &[Acker]) {
        if acks.is_empty() {
            return;
        }
        flush::nak(&self.client, &self.metrics, acks).await;
        self.report_buffer();
    }

    /// Reads the partition's recent ids from the stream in a task beside
    /// the loop; the puller starts when it is done.
    fn rebuild_window(&self, partition: u32, epoch: u64, ready: mpsc::Sender<WindowReady>) {
        let js = self.js.clone();
        let (stream, consumer) = (self.config.stream.clone(), self.config.consumer.clone());
        let window_ms = u64::try_from(self.config.dedup_window.as_millis()).unwrap_or(u64::MAX);
        let max_ids = self.config.dedup_max_ids / self.config.partitions.max(1) as usize;
        let (window, max_frame_bytes) = (self.config.dedup_window, self.config.max_frame_bytes);
        let clock = self.epoch;
        tokio::spawn(async move {
            let started = Instant::now();
            let mut ids = DedupWindow::new(window_ms, max_ids.max(1));
            let now = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
            let result = source::recent_ids(
                &js,
                &stream,
                &consumer,
                partition,
                window,
                max_frame_bytes,
                |project, id| ids.claim(DedupKey::new(project, id), now),
            )
            .await
            .map(|frames| (frames, ids));
            let _ = ready
                .send(WindowReady {
                    partition,
                    epoch,
                    result,
                    started,
                })
                .await;
        });
    }

    fn on_window(&mut self, ready: WindowReady) {
        let current = self.held.get(&ready.partition).map(|h| h.epoch);
        if current != Some(ready.epoch) || self.shutting_down {
            return; // lost or handed over meanwhile
        }
        match ready.result {
            Ok((frames, window)) => {
                WindowRebuilt {
                    partition: ready.partition,
                    frames,
                    ids: window.len() as u64,
                    latency: ready.started.elapsed(),
                }
                .emit(&self.metrics);
                self.windows.insert(ready.partition, window);
                self.start_pulling(ready.partition);
            }
            Err(error) => {
                WindowRebuildFailed {
                    partition: ready.partition,
                    error: &error,
                }
                .emit(&self.metrics);
                // Hand it back untouched; the lease task tries again later.
                self.held.remove(&ready.partition);
                let _ = self.ownership.released.try_send(ready.partition);
            }
        }
    }

    fn start_pulling(&mut self, partition: u32) {
        let Some(consumer) = self.consumers.get(partition as usize).cloned() else {
            return;
        };
        let Some(holding) = self.held.get_mut(&partition) else {
            return;
        };
        let (stop, stop_rx) = watch::channel(false);
        let metrics = self.metrics.clone();
        let task = tokio::spawn(source::pull_partition(source::Pull {
            client: self.client.clone(),
            consumer,
            partition,
            epoch: holding.epoch,
            max_messages: self.config.fetch_max_messages,
            lookahead: self.lookahead.clone(),
            tx: self.fetched_tx.clone(),
            paused: self.paused.subscribe(),
            stop: stop_rx,
            failed: move |e: &dyn std::fmt::Display| FetchFailed { error: e }.emit(&metrics),
        }));
        holding.puller = Some(Puller { stop, task });
    }

    async fn on_fetched(&mut self, fetched: Fetched) {
        let pulling = self
            .held
            .get(&fetched.partition)
            .is_some_and(|h| h.puller.is_some() && h.epoch == fetched.epoch);
        if !pulling {
            // Pulled just before the partition stopped, or under an earlier
            // lease on it: the next owner's. (The window rebuilt for a new
            // lease counts that delivery, so taking it now would drop its
            // events as already claimed; NAKed, it comes back redelivered
            // and is checked against ClickHouse.)
            let (_, acker) = fetched.message.split();
            let _ = source::nak_all(&self.client, [&acker]).await;
            return;
        }
        MessagesReceived { count: 1 }.emit(&self.metrics);
        // Decoded by the puller, beside the loop.
        PipelineStageTimed {
            stage: "decode",
            elapsed: fetched.decoding,
        }
        .emit(&self.metrics);
        self.accept(
            fetched.partition,
            fetched.message,
            fetched.meta,
            fetched.frames,
        )
        .await;
        self.report_buffer();
    }

    /// Decodes one message and buffers its new events (or dead-letters it).
    async fn accept(
        &mut self,
        partition: u32,
        message: async_nats::jetstream::Message,
        meta: source::Meta,
        frames: Result<Vec<source::PulledFrame>, spoor_core::DecodeError>,
    ) {
        let source::Meta {
            origin,
            stream_at_ms,
            delivered,
        } = meta;
        let stream_sequence = origin.stream_sequence;
        // A dead letter replayed by `spoor dead-letters replay` is checked
        // against ClickHouse like a redelivery: the window may hold its
        // ids from the original frame, which was never stored.
        let replayed = message.headers.as_ref().is_some_and(|h| {
            h.get(spoor_core::contract::dead_letter_header::REPLAY_OF_STREAM_SEQ)
                .is_some()
        });
        // So is a frame the pre-ownership consumer delivered (an upgrade).
        let legacy = stream_sequence.is_some_and(|seq| seq <= self.legacy_delivered);
        let delivery = match delivered {
            _ if replayed || legacy => Delivery::Redelivered,
            Some(n) if n > 1 => Delivery::Redelivered,
            // A message without metadata cannot be told apart; treat it as
            // possibly stored.
            None => Delivery::Redelivered,
            Some(_) => Delivery::First,
        };
        let (message, acker) = message.split();
        // One message holds one frame or a bundle of frames an edge link
        // coalesced; all of them are buffered under the message's one ack.
        let frames = match frames {
            Ok(frames) => frames,
            Err(error) => {
                FrameDecodeFailed {
                    kind: error.kind(),
                    error: &error,
                    subject: message.subject.as_str(),
                    stream_sequence,
                    bytes: message.payload.len(),
                }
                .emit(&self.metrics);
                let reason = dead_letter::Reason {
                    kind: error.kind(),
                    error: &error,
                };
                // Acked only after the dead letter's PubAck; on failure
                // (already logged and counted) it is redelivered.
                if dead_letter::dead_letter(
                    &self.client,
                    &acker,
                    &message,
                    &origin,
                    reason,
                    &self.metrics,
                )
                .await
                .is_ok()
                {
                    MessagesAcked { count: 1 }.emit(&self.metrics);
                    self.ring
                        .send(RingUpdate::Dead(spoor_core::debug::DeadFrame {
                            subject: message.subject.to_string(),
                            stream_seq: stream_sequence.unwrap_or(0),
                            reason: error.kind().to_string(),
                            stream_at_ms,
                        }));
                }
                return;
            }
        };
        if !self.windows.contains_key(&partition) {
            return;
        }
        // Frames of projects this relay does not serve go to the dead letters
        // before dedup sees their events.
        let Some(frames) = self
            .refusals
            .screen(
                frames,
                &message,
                &origin,
                stream_at_ms,
                &self.client,
                &self.metrics,
                &self.ring,
            )
            .await
        else {
            return;
        };
        // A replayed dead letter of rows: never stored, so not a duplicate
        // of its own earlier copies; checked against ClickHouse instead.
        let rows_replay = refused::is_rows_replay(&message);
        let now = self.now_ms();
        let Some(window) = self.windows.get_mut(&partition) else {
            return;
        };
        let total: usize = frames.iter().map(|f| f.rows.len()).sum();
        let (mut own, mut recent) = (0usize, 0usize);
        let mut rows = Vec::with_capacity(total);
        let mut seen = Vec::with_capacity(total);
        for frame in frames {
            FrameDecoded {
                batch_id: &frame.batch_id,
                events: frame.rows.len(),
            }
            .emit(&self.metrics);
            // The pullers encoded the rows and made the ring's view of
            // them (one per row, in order); the loop only decides.
            let mut observed = frame.observed.into_iter();
            for row in frame.rows {
                let view = observed.next();
                let key = DedupKey::new(&frame.project_id, row.event_id);
                // Marked as this relay's as the row enters the buffer: the row
                // then either reaches ClickHouse or stays buffered for retry, so
                // dropping a later copy never loses the event.
                let verdict = if rows_replay {
                    Verdict::KeepIfNotStored
                } else {
                    window.observe(key, delivery, now)
                };
                match verdict {
                    Verdict::Duplicate(Origin::Own) => own += 1,
                    Verdict::Duplicate(Origin::Claimed) => recent += 1,
                    verdict => {
                        if verdict == Verdict::KeepIfNotStored {
                            self.unverified.insert(key);
                        }
                        seen.extend(view);
                        let size = row.size();
                        rows.push((row, size));
                    }
                }
            }
        }
        DuplicatesDropped {
            layer: "own",
            count: own,
        }
        .emit(&self.metrics);
        DuplicatesDropped {
            layer: "window",
            count: recent,
        }
        .emit(&self.metrics);
        if !seen.is_empty() {
            self.ring.send(RingUpdate::Observed(seen));
        }
        self.batcher.push_in(partition, rows, acker, now);
        self.metrics
            .dedup_window_ids
            .set(self.windows.values().map(|w| w.len() as i64).sum());
    }

    /// The epochs the buffered partitions were pulled under.
    fn buffered_epochs(&self) -> BTreeMap<u32, u64> {
        self.batcher
            .groups()
            .into_iter()
            .map(|p| (p, self.held.get(&p).map_or(0, |h| h.epoch)))
            .collect()
    }

    /// Hands the buffer to the flusher as a job and starts a new one. The
    /// caller makes sure no job is running.
    fn start_flush(&mut self, reason: FlushReason) {
        debug_assert!(self.inflight.is_none());
        if let Some(blocked) = self.blocked_since.take() {
            self.timed("wait_insert", blocked);
        }
        let epochs = self.buffered_epochs();
        let batcher = std::mem::replace(&mut self.batcher, Batcher::new(self.config.batch));
        let (rows, bytes, messages) = (
            batcher.row_count(),
            batcher.bytes(),
            batcher.message_count(),
        );
        let job = flush::Job {
            batcher,
            unverified: std::mem::take(&mut self.unverified),
            origins: self.refusals.take_origins(),
            epochs,
            reason,
        };
        let task = tokio::spawn(self.flusher.clone().run(job));
        self.inflight = Some(InFlight {
            task,
            rows,
            bytes,
            messages,
        });
        // The next batch's messages get their first progress ack a third
        // of ack_wait from now, if this job is still running then.
        self.filling_progress_at = Instant::now() + self.progress_every();
    }

    fn progress_every(&self) -> Duration {
        (self.config.ack_wait / 3).max(Duration::from_millis(100))
    }

    /// The job in flight ended: forget the partitions it found fenced
    /// (unless held again under a new epoch), hand back what it abandoned.
    async fn on_flushed(&mut self, result: Result<flush::Outcome, tokio::task::JoinError>) {
        let Some(job) = self.inflight.take() else {
            return;
        };
        match result {
            Ok(outcome) => {
                let mut given_back = Vec::new();
                for (partition, epoch) in outcome.fenced {
                    if self.held.get(&partition).map(|h| h.epoch) == Some(epoch) {
                        let _ = self.stop_pulling(partition);
                        self.held.remove(&partition);
                        self.windows.remove(&partition);
                        // Pulled under the same lease: never inserted now.
                        given_back.extend(self.take_back(partition));
                        // The lease may still be this relay's on the server
                        // (a renewal late, not lost): give it up, so that the
                        // partition is acquired again under a new epoch
                        // (here or elsewhere) instead of staying leased and
                        // unpulled.
                        let _ = self.ownership.released.try_send(partition);
                    }
                }
                if let flush::Flushed::Abandoned { mut left } = outcome.flushed {
                    // The drain deadline passed: nothing more is inserted,
                    // so the batch behind it goes back too, in the same NAK.
                    let behind = self.batcher.take();
                    DrainAbandoned {
                        rows: left.row_count() + behind.rows,
                        messages: left.message_count() + behind.acks.len(),
                    }
                    .emit(&self.metrics);
                    given_back.extend(left.take().acks);
                    given_back.extend(behind.acks);
                    // And what the stopped pullers left in the channel, in
                    // the same NAK: past the deadline, every NAK timeout
                    // an unreachable NATS costs delays the exit.
                    while let Ok(fetched) = self.fetched.try_recv() {
                        given_back.push(fetched.message.split().1);
                    }
                }
                flush::nak(&self.client, &self.metrics, &given_back).await;
            }
            Err(error) => {
                // Its messages were neither acked nor NAKed: JetStream
                // redelivers them after ack_wait, and the presence check
                // keeps what was stored from being stored twice.
                FlushTaskFailed {
                    rows: job.rows,
                    messages: job.messages,
                    error: &error,
                }
                .emit(&self.metrics);
            }
        }
        self.report_buffer();
    }

    /// Waits for the job in flight, if any, to end: progress acks keep
    /// going for the batch that waits, and a shutdown signal meanwhile
    /// starts the drain (the job then gives up at the drain deadline).
    async fn settle<S: Future<Output = ()>>(&mut self, shutdown: &mut Pin<&mut S>) {
        while self.inflight.is_some() {
            tokio::select! {
                biased;
                () = shutdown.as_mut(), if !self.shutting_down => self.begin_shutdown(),
                result = job_done(&mut self.inflight) => self.on_flushed(result).await,
                () = tokio::time::sleep_until(self.filling_progress_at),
                    if !self.batcher.is_empty() => self.progress_filling(shutdown).await,
            }
        }
    }

    /// Flushes the buffer now and waits for it, after any job in flight.
    async fn flush_now<S: Future<Output = ()>>(
        &mut self,
        reason: FlushReason,
        shutdown: &mut Pin<&mut S>,
    ) {
        self.settle(shutdown).await;
        if !self.batcher.is_empty() {
            self.start_flush(reason);
            self.settle(shutdown).await;
        }
    }

    /// In-progress acks for the batch being filled while a job runs, so a
    /// slow insert of one batch cannot get the next one redelivered. Bounded
    /// by the drain deadline, and cut short by a shutdown signal, so an
    /// unreachable NATS cannot hold the relay past its drain time.
    async fn progress_filling<S: Future<Output = ()>>(&mut self, shutdown: &mut Pin<&mut S>) {
        self.filling_progress_at = Instant::now() + self.progress_every();
        let progress = source::progress_all(&self.client, self.batcher.acks());
        let mut stopping = false;
        let sent = match self.drain_deadline {
            Some(at) => tokio::time::timeout_at(at, progress).await.ok(),
            None => tokio::select! {
                r = progress => Some(r),
                () = shutdown.as_mut(), if !self.shutting_down => {
                    stopping = true;
                    None
                }
            },
        };
        if stopping {
            self.begin_shutdown();
        }
        if let Some(Err(e)) = sent {
            AckSignalFailed {
                kind: "progress",
                error: &e,
            }
            .emit(&self.metrics);
        }
    }

    /// Final flush on shutdown: the job in flight ends (or gives up at the
    /// drain deadline), then the buffer gets its own.
    async fn drain(mut self) {
        // Messages pulled but not yet taken: back to the stream, once every
        // puller has ended its pull in flight.
        self.fetched.close();
        let stopping = std::mem::take(&mut self.stopping);
        let _ = tokio::time::timeout(
            PULLER_STOP_TIMEOUT,
            futures_util::future::join_all(stopping),
        )
        .await;
        let mut handed_back = Vec::new();
        while let Ok(fetched) = self.fetched.try_recv() {
            handed_back.push(fetched.message.split().1);
        }
        if !handed_back.is_empty() {
            let _ = source::nak_all(&self.client, &handed_back).await;
        }
        // The shutdown future has resolved; this one stands in for it.
        let mut never = std::pin::pin!(std::future::pending::<()>());
        self.flush_now(FlushReason::Shutdown, &mut never).await;
        tracing::info!("relay pipeline stopped");
    }

    /// Counts the loop's time in `stage` since `started`.
    fn timed(&self, stage: &'static str, started: Instant) {
        PipelineStageTimed {
            stage,
            elapsed: started.elapsed(),
        }
        .emit(&self.metrics);
    }

    /// The rows held: the batch being filled and the one being inserted.
    fn report_buffer(&self) {
        let (rows, bytes, messages) = self
            .inflight
            .as_ref()
            .map_or((0, 0, 0), |j| (j.rows, j.bytes, j.messages));
        BufferChanged {
            rows: rows + self.batcher.row_count(),
            bytes: bytes + self.batcher.bytes(),
            messages: messages + self.batcher.message_count(),
        }
        .emit(&self.metrics);
    }
}

/// Resolves when the job in `inflight` ends; never if there is none.
async fn job_done(
    inflight: &mut Option<InFlight>,
) -> Result<flush::Outcome, tokio::task::JoinError> {
    match inflight {
        Some(job) => (&mut job.task).await,
        None => std::future::pending().await,
    }
}
