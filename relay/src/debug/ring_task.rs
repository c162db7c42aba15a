//! The task that owns this relay's debug ring: it applies the pipeline's
//! updates (never making the pipeline wait), the rehydration's replay, and
//! the age expiry, and answers lookups, which go first because a person is
//! waiting on them.

use std::time::Duration;

use spoor_core::debug::{DeadFrame, DeviceQuery, RingCoverage};
use spoor_runtime::Supervisor;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::wall_ms;
use crate::internal_events::*;
use crate::metrics::Metrics;
use crate::ring::{Found, Observed, Ring};

/// Capacity of the pipeline → ring channel, in updates (one per frame or
/// per flush). Beyond it updates are dropped and counted.
const LIVE_CHANNEL: usize = 4_096;

/// A change to the ring.
#[derive(Debug)]
pub(crate) enum RingUpdate {
    /// Events decoded from one frame.
    Observed(Vec<Observed>),
    /// Events now in ClickHouse: each device key with its event ids (one
    /// key per run of rows from the same device, see
    /// [`super::inserted_by_device`]).
    Inserted {
        events: Vec<(String, Vec<Uuid>)>,
        at_ms: Option<i64>,
    },
    /// A frame that could not be decoded.
    Dead(DeadFrame),
}

impl RingUpdate {
    fn len(&self) -> usize {
        match self {
            RingUpdate::Observed(v) => v.len(),
            RingUpdate::Inserted { events, .. } => events.iter().map(|(_, ids)| ids.len()).sum(),
            RingUpdate::Dead(_) => 1,
        }
    }
}

/// The pipeline's side of the ring: never waits.
#[derive(Clone)]
pub(crate) struct RingFeed {
    tx: mpsc::Sender<RingUpdate>,
    metrics: std::sync::Arc<Metrics>,
}

impl RingFeed {
    pub(crate) fn send(&self, update: RingUpdate) {
        if let Err(mpsc::error::TrySendError::Full(update)) = self.tx.try_send(update) {
            RingUpdatesDropped {
                events: update.len(),
            }
            .emit(&self.metrics);
        }
    }
}

struct LookupRequest {
    query: DeviceQuery,
    reply: oneshot::Sender<(Found, RingCoverage)>,
}

/// Asks the ring task for a lookup.
#[derive(Clone)]
pub(crate) struct RingReader {
    tx: mpsc::Sender<LookupRequest>,
}

impl RingReader {
    pub(super) async fn lookup(&self, query: DeviceQuery) -> Option<(Found, RingCoverage)> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(LookupRequest { query, reply }).await.ok()?;
        answer.await.ok()
    }
}

/// The ring task's handles.
pub(crate) struct RingTask {
    pub feed: RingFeed,
    /// Rehydration's channel: it may wait, the pipeline's may not. Closing
    /// it (dropping every sender) ends the "rehydrating" state.
    pub replay: mpsc::Sender<RingUpdate>,
    pub reader: RingReader,
}

/// Starts the task that owns `ring`, as a service of `tasks` (it runs
/// until their stop signal).
pub(crate) fn spawn_ring<E: Send + 'static>(
    ring: Ring,
    metrics: std::sync::Arc<Metrics>,
    tasks: &mut Supervisor<E>,
) -> RingTask {
    let stop = tasks.stop_signal();
    let (live_tx, live_rx) = mpsc::channel(LIVE_CHANNEL);
    let (replay_tx, replay_rx) = mpsc::channel(64);
    let (lookup_tx, lookup_rx) = mpsc::channel(64);
    tasks.spawn_service(
        "the debug ring",
        run_ring(ring, live_rx, replay_rx, lookup_rx, metrics.clone(), stop),
    );
    RingTask {
        feed: RingFeed {
            tx: live_tx,
            metrics,
        },
        replay: replay_tx,
        reader: RingReader { tx: lookup_tx },
    }
}

async fn run_ring(
    mut ring: Ring,
    mut live: mpsc::Receiver<RingUpdate>,
    mut replay: mpsc::Receiver<RingUpdate>,
    mut lookups: mpsc::Receiver<LookupRequest>,
    metrics: std::sync::Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rehydrating = true;
    let mut reported = ring.evictions();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Lookups first: a person is waiting on them.
            biased;
            () = crate::stopped(&mut stop) => return,
            Some(request) = lookups.recv() => {
                let found = ring.lookup(&request.query);
                let _ = request.reply.send((found, ring.coverage(rehydrating)));
                continue;
            }
            Some(update) = live.recv() => apply(&mut ring, update),
            update = replay.recv(), if rehydrating => match update {
                Some(update) => apply(&mut ring, update),
                None => rehydrating = false,
            },
            _ = tick.tick() => ring.expire(wall_ms()),
        }
        let now = ring.evictions();
        RingChanged {
            events: ring.events(),
            bytes: ring.bytes(),
            devices: ring.devices(),
            evicted: crate::ring::Evictions {
                age: now.age - reported.age,
                bytes: now.bytes - reported.bytes,
                device_cap: now.device_cap - reported.device_cap,
            },
        }
        .emit(&metrics);
        reported = now;
    }
}

fn apply(ring: &mut Ring, update: RingUpdate) {
    let now = wall_ms();
    match update {
        RingUpdate::Observed(events) => {
            for event in events {
                ring.observe(event, now);
            }
        }
        RingUpdate::Inserted { events, at_ms } => {
            let events = events
                .iter()
                .flat_map(|(key, ids)| ids.iter().map(move |id| (key.as_str(), *id)));
            ring.mark_inserted(events, at_ms)
        }
        RingUpdate::Dead(frame) => ring.dead_frame(frame, now),
    }
}
