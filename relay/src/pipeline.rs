//! The relay loop: fetch frames, decode, dedup, buffer, insert, then ack.
//!
//! One task does all of it in sequence, which is what makes the two rules
//! that matter easy to see:
//!
//! - **Ack only after insert.** A message's ack token sits in the `Batcher`
//!   next to its rows and leaves only through `Batcher::take`, which runs
//!   after `ClickHouseSink::insert_isolating` returned `Ok` and the rows it
//!   refused are in stored dead letters (see `refused`).
//! - **Bounded memory.** The buffer is flushed as soon as a frame takes it
//!   past a bound, so it exceeds `max_rows`/`max_bytes` by at most one frame.
//!   While an insert fails, the loop retries it with backoff and does not
//!   fetch, so the buffer cannot grow; JetStream holds the rest (and
//!   `max_ack_pending` caps what is delivered but unacked). The one pull
//!   request in flight adds at most `fetch_max_messages` frames.
//!
//! Shutdown: when the shutdown future resolves the loop stops issuing pull
//! requests, finishes the one in flight (it expires within a second), then
//! flushes the buffer, retrying the insert until `drain_timeout` after the
//! signal, acks what was inserted and returns. A signal that arrives
//! mid-insert or mid-progress-ack is noticed there, and every ack, progress
//! ack and NAK is bounded in time (`source::nats::ACK_TIMEOUT`,
//! `NAK_TIMEOUT`), so an unreachable NATS cannot hold the drain past its
//! deadline. If the drain times out, the remaining messages are NAKed so
//! another relay gets them at once instead of after `ack_wait`.
//!
//! It never panics on input: a frame that fails to decode, a frame of a
//! project not served and a row ClickHouse refuses are counted and
//! dead-lettered, and every other failure is retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Acker;
use futures_util::StreamExt;
use tokio::time::Instant;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::batcher::{Batcher, FlushReason};
use crate::config::RelayConfig;
use crate::debug::{RingFeed, RingUpdate};
use crate::dedup::{DedupWindow, Delivery, Origin, Verdict};
use crate::health::Health;
use crate::internal_events::*;
use crate::metrics::Metrics;
use crate::refused::{self, FlushError, Refusals};
use crate::sink::clickhouse::SinkError;
use crate::sink::clickhouse::{ClickHouseSink, EventRow};
use crate::source::claims::{ClaimPublisher, Claimed};
use crate::source::dead_letter;
use crate::source::nats as source;

/// Longest a pull request waits for messages. It bounds how long shutdown
/// waits for the request in flight.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(1);
/// Shortest pull request worth making; below this, flushing first is cheaper.
const MIN_FETCH_WAIT: Duration = Duration::from_millis(10);
const FIRST_RETRY_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) struct Pipeline {
    config: RelayConfig,
    client: async_nats::Client,
    consumer: PullConsumer,
    sink: ClickHouseSink,
    batcher: Batcher<EventRow, Acker>,
    dedup: DedupWindow,
    claims: Claims,
    /// The debug ring's feed: sends never wait.
    ring: RingFeed,
    /// Frames of projects not served, and rows ClickHouse refuses: to the
    /// dead letters (see `refused`).
    refusals: Refusals,
    /// Ids of buffered rows that may already be in ClickHouse: rows of
    /// redelivered messages, and the whole buffer after a failed insert
    /// attempt (it may have succeeded on the server). Checked, and the
    /// stored ones dropped, before the next insert.
    unverified: HashSet<Uuid>,
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

/// The dedup window's link to the other relays (see `source::claims`).
pub(crate) struct Claims {
    /// Ids other relays buffered.
    pub incoming: mpsc::Receiver<Claimed>,
    /// Where this relay announces what it buffers.
    pub publisher: ClaimPublisher,
}

/// How a flush ended.
enum Flushed {
    Inserted,
    /// Shutdown's drain timeout passed with the insert still failing.
    Abandoned,
}

impl Pipeline {
    pub(crate) fn new(
        config: RelayConfig,
        client: async_nats::Client,
        consumer: PullConsumer,
        claims: Claims,
        ring: RingFeed,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        let sink = ClickHouseSink::new(&config.clickhouse, config.ack_wait);
        let batcher = Batcher::new(config.batch);
        let window_ms = u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX);
        let dedup = DedupWindow::new(window_ms, config.dedup_max_ids);
        let refusals = Refusals::new(config.projects.clone(), config.partitions);
        Pipeline {
            config,
            client,
            consumer,
            sink,
            batcher,
            dedup,
            claims,
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
        let mut fetch_failures = 0u32;
        while !self.shutting_down {
            let now = self.now_ms();
            if let Some(reason) = self.batcher.flush_reason(now) {
                self.flush(reason, &mut shutdown).await;
                continue;
            }
            let expires = match self.batcher.flush_deadline_ms() {
                Some(deadline) => Duration::from_millis(deadline.saturating_sub(now)),
                None => MAX_FETCH_WAIT,
            }
            .clamp(MIN_FETCH_WAIT, MAX_FETCH_WAIT);

            let fetched = tokio::select! {
                r = source::fetch(&self.consumer, self.config.fetch_max_messages, expires) => r,
                () = shutdown.as_mut() => { self.begin_shutdown(); break; }
            };
            let failed = match fetched {
                Ok(batch) => self.receive(batch, &mut shutdown).await,
                Err(e) => {
                    FetchFailed { error: &e }.emit(&self.metrics);
                    true
                }
            };
            if failed {
                // NATS is unreachable or refused the pull; the client
                // reconnects by itself, so wait rather than spin.
                fetch_failures = fetch_failures.saturating_add(1);
                let delay = backoff(fetch_failures, self.config.max_retry_backoff);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.as_mut(), if !self.shutting_down => self.begin_shutdown(),
                }
            } else {
                fetch_failures = 0;
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
            tracing::info!(
                rows = self.batcher.row_count(),
                messages = self.batcher.message_count(),
                "shutdown requested; draining the buffer"
            );
        }
    }

    /// Takes every message of one pull request into the buffer. Returns
    /// whether the request ended in an error. Shutdown does not cut the
    /// request short: its messages are already delivered to us, and
    /// dropping them would leave them waiting out `ack_wait`.
    async fn receive<S: Future<Output = ()>>(
        &mut self,
        batch: async_nats::jetstream::consumer::pull::Batch,
        shutdown: &mut Pin<&mut S>,
    ) -> bool {
        let mut batch = std::pin::pin!(batch);
        let mut received = 0usize;
        let failed = loop {
            let item = tokio::select! {
                item = batch.next() => item,
                () = shutdown.as_mut(), if !self.shutting_down => { self.begin_shutdown(); continue; }
            };
            match item {
                None => break false,
                Some(Ok(message)) => {
                    received += 1;
                    self.accept(message).await;
                    // Flush mid-request rather than after it: one pull may
                    // carry many frames, and the row and byte bounds should
                    // hold to within one frame. The rest of the request waits
                    // in the subscription meanwhile.
                    if let Some(reason) = self.batcher.flush_reason(self.now_ms()) {
                        self.flush(reason, shutdown).await;
                    }
                }
                Some(Err(e)) => {
                    FetchFailed { error: &e }.emit(&self.metrics);
                    break true;
                }
            }
        };
        if received > 0 {
            MessagesReceived { count: received }.emit(&self.metrics);
            self.report_buffer();
        }
        failed
    }

    /// Decodes one message and buffers its new events (or dead-letters it).
    async fn accept(&mut self, message: async_nats::jetstream::Message) {
        let origin = dead_letter::Origin::of(&message);
        let stream_sequence = origin.stream_sequence;
        let stream_at_ms = message
            .info()
            .ok()
            .and_then(|i| i64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).ok())
            .unwrap_or_else(crate::debug::wall_ms);
        let delivery = match message.info().ok().map(|i| i.delivered) {
            Some(n) if n > 1 => Delivery::Redelivered,
            // A message without metadata cannot be told apart; treat it as
            // possibly stored.
            None => Delivery::Redelivered,
            Some(_) => Delivery::First,
        };
        let (message, acker) = message.split();
        // One message holds one frame or a bundle of frames an edge link
        // coalesced; all of them are buffered under the message's one ack.
        let batches =
            match spoor_core::decode_message(&message.payload, self.config.max_frame_bytes) {
                Ok(batches) => batches,
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
        // Frames of projects this relay does not serve go to the dead letters
        // before dedup sees their events.
        let Some(batches) = self
            .refusals
            .screen(
                batches,
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
        self.take_claims();
        let now = self.now_ms();
        let total: usize = batches.iter().map(|b| b.events.len()).sum();
        let (mut own, mut claimed) = (0usize, 0usize);
        let mut kept_ids = Vec::with_capacity(total);
        let mut rows = Vec::with_capacity(total);
        let mut seen = Vec::with_capacity(total);
        let relay_now = crate::debug::wall_ms();
        for mut batch in batches {
            FrameDecoded {
                batch_id: &batch.batch_id,
                events: batch.events.len(),
            }
            .emit(&self.metrics);
            let events = std::mem::take(&mut batch.events);
            for event in events {
                // Marked as this relay's as the row enters the buffer: the row
                // then either reaches ClickHouse or stays buffered for retry, so
                // dropping a later copy never loses the event.
                let verdict = if rows_replay {
                    Verdict::KeepIfNotStored
                } else {
                    self.dedup.observe(event.event_id, delivery, now)
                };
                match verdict {
                    Verdict::Duplicate(Origin::Own) => own += 1,
                    Verdict::Duplicate(Origin::Claimed) => claimed += 1,
                    verdict => {
                        if verdict == Verdict::KeepIfNotStored {
                            self.unverified.insert(event.event_id);
                        }
                        kept_ids.push(event.event_id);
                        let row = EventRow::new(&batch, event);
                        seen.push(crate::debug::observed_row(
                            &row,
                            stream_at_ms,
                            stream_sequence.unwrap_or(0),
                            relay_now,
                        ));
                        let size = row.estimated_size();
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
            layer: "claim",
            count: claimed,
        }
        .emit(&self.metrics);
        if !kept_ids.is_empty() {
            let error = self.claims.publisher.publish(&kept_ids).await.err();
            ClaimsPublished {
                ids: kept_ids.len(),
                error: error.as_ref().map(|e| e as &dyn std::fmt::Display),
            }
            .emit(&self.metrics);
        }
        if !seen.is_empty() {
            self.ring.send(RingUpdate::Observed(seen));
        }
        self.batcher.push(rows, acker, now);
        self.metrics.dedup_window_ids.set(self.dedup.len() as i64);
    }

    /// Adds every claim that has arrived from other relays to the window.
    fn take_claims(&mut self) {
        let now = self.now_ms();
        let mut received = 0usize;
        while let Ok(ids) = self.claims.incoming.try_recv() {
            received += ids.len();
            for id in ids {
                self.dedup.claim(id, now);
            }
        }
        if received > 0 {
            ClaimsReceived { ids: received }.emit(&self.metrics);
        }
    }

    /// Drops the buffered rows whose ids ClickHouse already holds, among
    /// those marked unverified, then clears the marks.
    async fn drop_stored_rows(&mut self) -> Result<(), SinkError> {
        if self.unverified.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        // project -> (days, ids) of the unverified rows.
        let mut asked: BTreeMap<&str, (BTreeSet<u16>, Vec<Uuid>)> = BTreeMap::new();
        for row in self.batcher.rows() {
            if self.unverified.contains(&row.event_id) {
                let entry = asked.entry(row.project_id.as_str()).or_default();
                entry.0.insert(row.event_date);
                entry.1.push(row.event_id);
            }
        }
        let mut stored = HashSet::new();
        let mut asked_ids = 0usize;
        for (project, (days, ids)) in &asked {
            asked_ids += ids.len();
            stored.extend(self.sink.stored_ids(project, days, ids).await?);
        }
        let unverified = std::mem::take(&mut self.unverified);
        let mut already = Vec::new();
        self.batcher.retain_rows(
            |row| {
                let drop = unverified.contains(&row.event_id) && stored.contains(&row.event_id);
                if drop {
                    already.push((crate::debug::row_key(row).to_string(), row.event_id));
                }
                !drop
            },
            EventRow::estimated_size,
        );
        if !already.is_empty() {
            self.ring.send(RingUpdate::Inserted {
                events: already,
                at_ms: None,
            });
        }
        PresenceChecked {
            asked: asked_ids,
            stored: stored.len(),
            latency: started.elapsed(),
        }
        .emit(&self.metrics);
        DuplicatesDropped {
            layer: "stored",
            count: stored.len(),
        }
        .emit(&self.metrics);
        Ok(())
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
        let mut last_progress = Instant::now();
        loop {
            attempt = attempt.saturating_add(1);
            let started = Instant::now();
            let drain_deadline = self.drain_deadline;
            let drain_timeout = self.config.drain_timeout;
            // A shutdown that arrives mid-insert starts the drain clock at
            // once; the insert may go on until the drain deadline.
            let mut stopped_at = None;
            let insert = async {
                self.drop_stored_rows().await?;
                // Rows ClickHouse refuses are isolated, and dead-lettered
                // before anything is acked.
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
            let result = match drain_deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, insert).await.ok(),
                None => {
                    let mut insert = std::pin::pin!(insert);
                    tokio::select! {
                        r = &mut insert => Some(r),
                        () = shutdown.as_mut() => {
                            let deadline = Instant::now() + drain_timeout;
                            stopped_at = Some(deadline);
                            tokio::time::timeout_at(deadline, insert).await.ok()
                        }
                    }
                }
            };
            if let Some(deadline) = stopped_at {
                self.begin_shutdown_by(deadline);
            }
            let Some(result) = result else {
                return Flushed::Abandoned;
            };
            match result {
                Ok(isolated) => {
                    Refusals::drop_rejected(&mut self.batcher, &isolated);
                    let latency = started.elapsed();
                    let inserted: Vec<(String, Uuid)> = self
                        .batcher
                        .rows()
                        .iter()
                        .map(|r| (crate::debug::row_key(r).to_string(), r.event_id))
                        .collect();
                    if !inserted.is_empty() {
                        self.ring.send(RingUpdate::Inserted {
                            events: inserted,
                            at_ms: Some(crate::debug::wall_ms()),
                        });
                    }
                    let drained = self.batcher.take();
                    self.refusals.forget();
                    EventsInserted {
                        rows: drained.rows,
                        bytes: drained.bytes,
                        latency,
                        reason,
                        attempts: attempt,
                    }
                    .emit(&self.metrics);
                    self.health.insert_succeeded();
                    self.ack(&drained.acks).await;
                    self.report_buffer();
                    return Flushed::Inserted;
                }
                Err(error) => {
                    // The attempt may have stored some or all rows before it
                    // failed (a lost response, a timeout after the server
                    // took the data): ask before the next one.
                    self.unverified
                        .extend(self.batcher.rows().iter().map(|r| r.event_id));
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
                    // Keep JetStream from redelivering what we still hold;
                    // a shutdown meanwhile is noticed, and a drain deadline
                    // bounds the wait.
                    if last_progress.elapsed() >= self.config.ack_wait / 2 {
                        let progress = source::progress_all(&self.client, self.batcher.acks());
                        let sent = match self.drain_deadline {
                            Some(deadline) => {
                                tokio::time::timeout_at(deadline, progress).await.ok()
                            }
                            None => tokio::select! {
                                r = progress => Some(r),
                                () = shutdown.as_mut() => None,
                            },
                        };
                        match sent {
                            Some(Err(e)) => AckSignalFailed {
                                kind: "progress",
                                error: &e,
                            }
                            .emit(&self.metrics),
                            Some(Ok(_)) => {}
                            None => self.begin_shutdown(),
                        }
                        last_progress = Instant::now();
                    }
                    let wake = Instant::now() + retry_in;
                    if let Some(deadline) = self.drain_deadline {
                        if wake >= deadline {
                            return Flushed::Abandoned;
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(wake) => {}
                        () = shutdown.as_mut(), if !self.shutting_down => {
                            // Keep retrying until the drain deadline; the
                            // next attempt starts now rather than after the backoff.
                            self.begin_shutdown();
                        }
                    }
                }
            }
        }
    }

    /// Final flush on shutdown.
    async fn drain(mut self) {
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
