//! The relay loop: take frames from the partitions this relay holds,
//! decode, dedup, buffer, insert, then ack.
//!
//! One task does the deciding, in sequence, which is what makes the rules
//! that matter easy to see:
//!
//! - **Ack only after insert.** A message's ack token sits in the `Batcher`
//!   next to its rows and leaves only through `Batcher::take`, which runs
//!   after `ClickHouseSink::insert_isolating` returned `Ok` and the rows it
//!   refused are in stored dead letters (see `refused`).
//! - **Insert only under a valid lease.** Rows are buffered by partition,
//!   and before and during every presence check and insert the pipeline
//!   checks each buffered partition's lease (`ownership::Fence`): a
//!   partition whose lease ran out or changed epoch leaves the buffer, its
//!   messages NAKed for the next owner, and an insert still running when a
//!   lease runs out is abandoned.
//! - **Bounded memory.** The buffer is flushed as soon as a frame takes it
//!   past a bound, so it exceeds `max_rows`/`max_bytes` by at most one frame.
//!   The partition pullers decode frames ahead of the loop, so the next
//!   batch is decoded while this one is inserted, within a budget of
//!   `max_rows` rows (`source::nats::Lookahead`): about two batches in all.
//!   While an insert fails, the loop retries it with backoff and takes no
//!   frames, so the buffer cannot grow; the partition pullers issue no new
//!   pull request (those in flight end within `MAX_FETCH_WAIT`) and
//!   JetStream holds the rest (`max_ack_pending` caps what
//!   is delivered but unacked per partition).
//! - **Progress while working.** While a presence check or an insert runs,
//!   and while a failed insert waits to be retried, the buffered messages
//!   get in-progress acks every third of `ack_wait`, so a slow ClickHouse
//!   never makes JetStream redeliver them to the next owner.
//!
//! Ownership arrives from the lease task (`ownership::leases`): an acquired
//! partition first gets its dedup window rebuilt from the stream (in a task
//! beside the loop), then a puller; a partition to hand over stops pulling,
//! is flushed and acked, and only then is its lease deleted; a lost one
//! leaves the buffer unacked.
//!
//! Shutdown: when the shutdown future resolves the pullers stop (NAKing
//! what they had not passed on), the buffer is flushed, retrying the insert
//! until `drain_timeout` after the signal, acks what was inserted and
//! returns. A signal that arrives mid-insert or mid-progress-ack is noticed
//! there, and every ack, progress ack and NAK is bounded in time
//! (`source::nats::ACK_TIMEOUT`, `NAK_TIMEOUT`), so an unreachable NATS
//! cannot hold the drain past its deadline. If the drain times out, the
//! remaining messages are NAKed so another relay gets them at once instead
//! of after `ack_wait`.
//!
//! It never panics on input: a frame that fails to decode, a frame of a
//! project not served and a row ClickHouse refuses are counted and
//! dead-lettered, and every other failure is retried.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Acker;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::batcher::{Batcher, FlushReason};
use crate::config::RelayConfig;
use crate::debug::{RingFeed, RingUpdate};
use crate::dedup::{DedupKey, DedupWindow, Delivery, Origin, Verdict};
use crate::health::Health;
use crate::internal_events::*;
use crate::metrics::Metrics;
use crate::ownership::leases::Progress;
use crate::ownership::{Fence, Ownership};
use crate::refused::{self, FlushError, Refusals};
use crate::sink::clickhouse::SinkError;
use crate::sink::clickhouse::encoded::EncodedRow;
use crate::sink::clickhouse::ClickHouseSink;
use crate::source::dead_letter;
use crate::source::nats::{self as source, Fetched};

/// Longest the loop sleeps with nothing to do.
const IDLE_WAIT: Duration = Duration::from_secs(1);
const FIRST_RETRY_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) struct Pipeline {
    config: RelayConfig,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// Every partition's consumer, by partition.
    consumers: Vec<PullConsumer>,
    /// Frames up to this stream sequence were delivered by the single
    /// consumer of relays before partition ownership: maybe stored.
    legacy_delivered: u64,
    sink: ClickHouseSink,
    batcher: Batcher<EncodedRow, Acker>,
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
    /// the relay, holds what arrives meanwhile.
    paused: watch::Sender<bool>,
    /// Pullers stopped at shutdown, joined by the drain.
    stopping: Vec<tokio::task::JoinHandle<()>>,
    ownership: OwnershipLink,
    fence: Fence,
    progress: Arc<Progress>,
    /// The debug ring's feed: sends never wait.
    ring: RingFeed,
    /// Frames of projects not served, and rows ClickHouse refuses: to the
    /// dead letters (see `refused`).
    refusals: Refusals,
    /// Keys of buffered rows that may already be in ClickHouse: rows of
    /// redelivered messages, and the whole buffer after a failed insert
    /// attempt (it may have succeeded on the server). Checked, and the
    /// stored ones dropped, before the next insert.
    unverified: HashSet<DedupKey>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
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

/// How a flush ended.
enum Flushed {
    Inserted,
    /// Shutdown's drain timeout passed with the insert still failing.
    Abandoned,
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
        Pipeline {
            js: async_nats::jetstream::new(client.clone()),
            config,
            client,
            consumers: consumers.consumers,
            legacy_delivered: consumers.legacy_delivered,
            sink,
            batcher,
            windows: HashMap::new(),
            held: BTreeMap::new(),
            lookahead,
            fetched_tx,
            fetched,
            paused: watch::channel(false).0,
            stopping: Vec::new(),
            ownership,
            fence,
            progress,
            ring,
            refusals,
            unverified: HashSet::new(),
            metrics,
            health,
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
            if let Some(reason) = self.batcher.flush_reason(now) {
                self.flush(reason, &mut shutdown).await;
                continue;
            }
            let wake = match self.batcher.flush_deadline_ms() {
                Some(deadline) => Duration::from_millis(deadline.saturating_sub(now)),
                None => IDLE_WAIT,
            }
            .min(IDLE_WAIT);
            tokio::select! {
                biased;
                () = shutdown.as_mut() => self.begin_shutdown(),
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
                Some(fetched) = self.fetched.recv() => {
                    let started = Instant::now();
                    self.on_fetched(fetched).await;
                    self.timed("receive", started);
                }
                () = tokio::time::sleep(wake) => {}
            }
        }
        self.drain().await;
    }

    fn begin_shutdown(&mut self) {
        self.begin_shutdown_by(Instant::now() + self.config.drain_timeout);
    }

    /// Starts the drain: fetching stops, and the buffer's insert is tried
    /// until `deadline` (the drain timeout after the shutdown signal).
    fn begin_shutdown_by(&mut self, deadline: Instant) {
        if !self.shutting_down {
            self.shutting_down = true;
            self.drain_deadline = Some(deadline);
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
        for change in changes {
            if let Ownership::Release { partition } = change {
                releasing.push(partition);
                continue;
            }
            self.hand_over(std::mem::take(&mut releasing), shutdown)
                .await;
            self.on_change(change, ready).await;
        }
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
        let groups = self.batcher.groups();
        if partitions.iter().any(|p| groups.contains(p)) {
            self.flush(FlushReason::Handover, shutdown).await;
        }
        for partition in partitions {
            self.held.remove(&partition);
            self.windows.remove(&partition);
            // Whatever is still buffered of it (a flush abandoned by
            // shutdown) goes back to the stream for the next owner.
            self.give_back(partition).await;
            let _ = self.ownership.released.send(partition).await;
        }
    }

    async fn on_change(&mut self, change: Ownership, ready: &mpsc::Sender<WindowReady>) {
        match change {
            Ownership::Acquired { partition, epoch } => {
                let _ = self.stop_pulling(partition);
                // Rows still buffered from an earlier lease on it were
                // pulled under another epoch: never insert them under this one.
                self.give_back(partition).await;
                self.held.insert(
                    partition,
                    Holding {
                        epoch,
                        puller: None,
                    },
                );
                self.rebuild_window(partition, epoch, ready.clone());
            }
            Ownership::Lost { partition } => {
                let _ = self.stop_pulling(partition);
                self.held.remove(&partition);
                self.windows.remove(&partition);
                self.give_back(partition).await;
            }
            // Batched by `on_ownership`.
            Ownership::Release { .. } => {}
        }
    }

    /// Tells the partition's puller to stop; returns its task to wait on.
    fn stop_pulling(&mut self, partition: u32) -> Option<tokio::task::JoinHandle<()>> {
        let puller = self.held.get_mut(&partition)?.puller.take()?;
        let _ = puller.stop.send(true);
        Some(puller.task)
    }

    /// Takes a partition's rows out of the buffer unacked and NAKs their
    /// messages, so its next owner gets them at once.
    async fn give_back(&mut self, partition: u32) {
        let acks = self
            .batcher
            .remove_group(partition, EncodedRow::size);
        self.nak(&acks).await;
    }

    /// NAKs messages given back (bounded by `NAK_TIMEOUT`).
    async fn nak(&self, acks: &[Acker]) {
        if acks.is_empty() {
            return;
        }
        if let Err(e) = source::nak_all(&self.client, acks).await {
            AckSignalFailed {
                kind: "nak",
                error: &e,
            }
            .emit(&self.metrics);
        }
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
            .is_some_and(|h| h.puller.is_some());
        if !pulling {
            // Pulled just before the partition stopped: the next owner's.
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
        self.accept(fetched.partition, fetched.message, fetched.frames)
            .await;
        self.report_buffer();
    }

    /// Decodes one message and buffers its new events (or dead-letters it).
    async fn accept(
        &mut self,
        partition: u32,
        message: async_nats::jetstream::Message,
        frames: Result<Vec<source::PulledFrame>, spoor_core::DecodeError>,
    ) {
        let origin = dead_letter::Origin::of(&message);
        let stream_sequence = origin.stream_sequence;
        let stream_at_ms = source::stream_at_ms(&message);
        // A dead letter replayed by `spoor dead-letters replay` is checked
        // against ClickHouse like a redelivery: the window may hold its
        // ids from the original frame, which was never stored.
        let replayed = message.headers.as_ref().is_some_and(|h| {
            h.get(spoor_core::contract::dead_letter_header::REPLAY_OF_STREAM_SEQ)
                .is_some()
        });
        // So is a frame the pre-ownership consumer delivered (an upgrade).
        let legacy = stream_sequence.is_some_and(|seq| seq <= self.legacy_delivered);
        let delivery = match message.info().ok().map(|i| i.delivered) {
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
    fn buffered_epochs(&self) -> Vec<(u32, u64)> {
        self.batcher
            .groups()
            .into_iter()
            .map(|p| (p, self.held.get(&p).map_or(0, |h| h.epoch)))
            .collect()
    }

    /// Drops from the buffer (unacked, NAKed) every partition whose lease
    /// no longer holds under the epoch its rows were pulled with.
    async fn fence_buffer(&mut self) {
        let now = Instant::now();
        let mut acks = Vec::new();
        for (partition, epoch) in self.buffered_epochs() {
            if !self.fence.valid(partition, epoch, now) {
                let _ = self.stop_pulling(partition);
                self.held.remove(&partition);
                self.windows.remove(&partition);
                acks.extend(
                    self.batcher
                        .remove_group(partition, EncodedRow::size),
                );
            }
        }
        self.nak(&acks).await;
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
        earliest.unwrap_or(now + IDLE_WAIT * 3600)
    }

    /// Runs `work` while sending progress acks for the buffer every third
    /// of `ack_wait`, until it ends, a buffered lease runs out, or the
    /// drain deadline passes. A shutdown signal meanwhile sets `deadline`.
    async fn race<T, S: Future<Output = ()>>(
        &self,
        work: impl Future<Output = T>,
        epochs: &[(u32, u64)],
        deadline: &mut Option<Instant>,
        shutdown: &mut Pin<&mut S>,
    ) -> Raced<T> {
        let mut work = std::pin::pin!(work);
        let every = (self.config.ack_wait / 3).max(Duration::from_millis(100));
        let mut next_progress = Instant::now() + every;
        loop {
            let fence_at = self.fence_deadline(epochs);
            if fence_at <= Instant::now() {
                return Raced::Fenced;
            }
            let drain_at = deadline.unwrap_or(fence_at + IDLE_WAIT);
            tokio::select! {
                biased;
                r = &mut work => return Raced::Done(r),
                () = tokio::time::sleep_until(fence_at) => {}
                () = tokio::time::sleep_until(drain_at), if deadline.is_some() => {
                    return Raced::Abandoned;
                }
                () = shutdown.as_mut(), if deadline.is_none() && !self.shutting_down => {
                    *deadline = Some(Instant::now() + self.config.drain_timeout);
                }
                () = tokio::time::sleep_until(next_progress) => {
                    next_progress = Instant::now() + every;
                    // Bounded by the drain deadline, and cut short by a
                    // shutdown signal, so an unreachable NATS cannot hold
                    // the relay past its drain time.
                    let progress = source::progress_all(&self.client, self.batcher.acks());
                    let sent = match *deadline {
                        Some(at) => tokio::time::timeout_at(at, progress).await.ok(),
                        None => tokio::select! {
                            r = progress => Some(r),
                            () = shutdown.as_mut(), if !self.shutting_down => {
                                *deadline = Some(Instant::now() + self.config.drain_timeout);
                                None
                            }
                        },
                    };
                    if let Some(Err(e)) = sent {
                        AckSignalFailed { kind: "progress", error: &e }.emit(&self.metrics);
                    }
                }
            }
        }
    }

    /// The unverified buffered rows, by project: (days, ids) to ask about.
    fn presence_questions(&self) -> BTreeMap<String, (BTreeSet<u16>, Vec<Uuid>)> {
        let mut asked: BTreeMap<String, (BTreeSet<u16>, Vec<Uuid>)> = BTreeMap::new();
        if self.unverified.is_empty() {
            return asked;
        }
        for row in self.batcher.rows() {
            if self
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

    /// Drops the buffered rows ClickHouse already holds, then clears the
    /// unverified marks.
    fn drop_stored_rows(&mut self, asked: usize, stored: HashSet<DedupKey>, started: Instant) {
        self.unverified.clear();
        let already = crate::debug::inserted_by_device(
            self.batcher
                .rows()
                .iter()
                .filter(|row| stored.contains(&DedupKey::new(row.project_id(), row.event_id))),
        );
        self.batcher.retain_rows(
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

    /// Inserts the buffer, retrying with backoff until it succeeds (or, when
    /// shutting down, until the drain deadline), then acks its messages.
    /// Fetching is paused for as long as this runs.
    async fn flush<S: Future<Output = ()>>(
        &mut self,
        reason: FlushReason,
        shutdown: &mut Pin<&mut S>,
    ) -> Flushed {
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            self.fence_buffer().await;
            if self.batcher.is_empty() {
                return Flushed::Inserted;
            }
            let epochs = self.buffered_epochs();
            let mut deadline = self.drain_deadline;
            let started = Instant::now();

            let asked = self.presence_questions();
            let checked = if asked.is_empty() {
                Raced::Done(Ok(HashSet::new()))
            } else {
                self.race(self.stored(&asked), &epochs, &mut deadline, shutdown)
                    .await
            };
            let result = match checked {
                Raced::Done(Ok(stored)) => {
                    let n = asked.values().map(|(_, ids)| ids.len()).sum();
                    if !asked.is_empty() {
                        self.drop_stored_rows(n, stored, started);
                    }
                    let inserted = Instant::now();
                    // Rows ClickHouse refuses are isolated, and dead-lettered
                    // before anything is acked.
                    let insert = async {
                        let isolated = self.sink.insert_isolating(self.batcher.rows()).await?;
                        self.refusals
                            .dead_letter_rejected(
                                self.batcher.rows(),
                                &isolated,
                                &self.client,
                                &self.metrics,
                                &self.ring,
                            )
                            .await?;
                        Ok::<_, FlushError>(isolated)
                    };
                    let raced = self.race(insert, &epochs, &mut deadline, shutdown).await;
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
            if let Some(deadline) = deadline {
                self.begin_shutdown_by(deadline);
            }
            let error = match result {
                Raced::Abandoned => return Flushed::Abandoned,
                Raced::Fenced => {
                    // The insert may have reached the server; the partitions
                    // still held are checked before the next attempt.
                    self.mark_buffer_unverified();
                    continue;
                }
                Raced::Done(Ok((isolated, inserted))) => {
                    Refusals::drop_rejected(&mut self.batcher, &isolated);
                    let acknowledging = Instant::now();
                    self.inserted(reason, attempt, inserted.elapsed()).await;
                    self.timed("acknowledge", acknowledging);
                    return Flushed::Inserted;
                }
                Raced::Done(Err(error)) => error,
            };
            // The attempt may have stored some or all rows before it
            // failed (a lost response, a timeout after the server took the
            // data): ask before the next one.
            self.mark_buffer_unverified();
            self.paused.send_replace(true);
            let retry_in = backoff(attempt, self.config.max_retry_backoff);
            InsertFailed {
                error_type: error.error_type(),
                error: &error,
                rows: self.batcher.row_count(),
                attempt,
                retry_in,
            }
            .emit(&self.metrics);
            self.health.insert_failed(&error);
            let wake = Instant::now() + retry_in;
            if let Some(deadline) = self.drain_deadline {
                if wake >= deadline {
                    return Flushed::Abandoned;
                }
            }
            // Waiting counts as work: progress acks keep going.
            let epochs = self.buffered_epochs();
            let mut deadline = self.drain_deadline;
            let waited = self
                .race(
                    tokio::time::sleep_until(wake),
                    &epochs,
                    &mut deadline,
                    shutdown,
                )
                .await;
            if let Some(deadline) = deadline {
                // Keep retrying until the drain deadline; the next attempt
                // starts now rather than after the backoff.
                self.begin_shutdown_by(deadline);
            }
            if let Raced::Abandoned = waited {
                return Flushed::Abandoned;
            }
        }
    }

    fn mark_buffer_unverified(&mut self) {
        let keys: Vec<DedupKey> = self
            .batcher
            .rows()
            .iter()
            .map(|r| DedupKey::new(r.project_id(), r.event_id))
            .collect();
        self.unverified.extend(keys);
    }

    /// After a successful insert: tell the ring, ack, count.
    async fn inserted(&mut self, reason: FlushReason, attempts: u32, latency: Duration) {
        let inserted = crate::debug::inserted_by_device(self.batcher.rows());
        let at_ms = crate::debug::wall_ms();
        if !inserted.is_empty() {
            self.ring.send(RingUpdate::Inserted {
                events: inserted,
                at_ms: Some(at_ms),
            });
        }
        let drained = self.batcher.take();
        self.refusals.forget();
        EventsInserted {
            rows: drained.rows,
            bytes: drained.bytes,
            latency,
            reason,
            attempts,
        }
        .emit(&self.metrics);
        self.progress.inserted(drained.rows, at_ms);
        self.paused.send_replace(false);
        self.health.insert_succeeded();
        self.ack(&drained.acks).await;
        self.report_buffer();
    }

    /// Final flush on shutdown.
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
        if !self.batcher.is_empty() {
            // The shutdown future has resolved; this one stands in for it.
            let mut never = std::pin::pin!(std::future::pending::<()>());
            if let Flushed::Abandoned = self.flush(FlushReason::Shutdown, &mut never).await {
                DrainAbandoned {
                    rows: self.batcher.row_count(),
                    messages: self.batcher.message_count(),
                }
                .emit(&self.metrics);
                if let Err(e) = source::nak_all(&self.client, self.batcher.acks()).await {
                    AckSignalFailed {
                        kind: "nak",
                        error: &e,
                    }
                    .emit(&self.metrics);
                }
            }
        }
        tracing::info!("relay pipeline stopped");
    }

    async fn ack(&self, acks: &[Acker]) {
        if acks.is_empty() {
            return;
        }
        match source::ack_all(&self.client, acks).await {
            Ok(count) => MessagesAcked { count }.emit(&self.metrics),
            Err(e) => AckFailed {
                error: &e,
                count: acks.len(),
            }
            .emit(&self.metrics),
        }
    }

    /// Counts the loop's time in `stage` since `started`.
    fn timed(&self, stage: &'static str, started: Instant) {
        PipelineStageTimed {
            stage,
            elapsed: started.elapsed(),
        }
        .emit(&self.metrics);
    }

    fn report_buffer(&self) {
        BufferChanged {
            rows: self.batcher.row_count(),
            bytes: self.batcher.bytes(),
            messages: self.batcher.message_count(),
        }
        .emit(&self.metrics);
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
