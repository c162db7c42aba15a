//! Partition ownership: which relay consumes which partition of the events
//! stream, through leases in a NATS KV bucket.
//!
//! The edge spreads a region's devices over `partitions` subjects
//! (`spoor.events.<region>.<p>`), and each partition has its own durable
//! consumer (`<consumer>-p<p>`, filter `spoor.events.*.<p>`). A relay pulls
//! from a partition's consumer only while it holds the partition's lease:
//! key `partition.<p>` in the bucket `<stream>_LEASES`, whose `max_age` is the
//! lease's time to live. The holder renews it (a compare-and-set on the key's
//! revision) every third of that time; a relay that dies stops renewing, the
//! key expires, and another relay creates it. Each relay also keeps a
//! presence key, `relay.<instance>`, on the same clock, so every relay knows
//! how many are alive and takes `ceil(partitions / relays)` partitions: a
//! relay that joins finds itself short and the others over, and the others
//! hand partitions over gracefully (stop pulling, insert and ack what they
//! hold, then delete the key).
//!
//! # Why KV leases and not a consumer's exclusive binding
//!
//! JetStream's pinned-client priority groups would also give one puller per
//! consumer, but the server unpins silently after the pin's TTL: a relay
//! stalled in a long insert would not know it had lost the partition, and
//! its insert could land after the next relay had started on the same
//! frames. A lease the relay renews itself carries an expiry the relay can
//! check on its own clock before every insert (fencing), and the revision at
//! which it created the key is an epoch that orders owners. KV is also what
//! `spoor relays` reads to show who owns what.
//!
//! # Fencing
//!
//! A lease renewed by a request sent at `t` is valid for the holder until
//! `t + ttl - margin`: the server wrote the renewal after `t`, so it expires
//! the key no earlier than `t + ttl`, and only then can another relay create
//! it. The pipeline inserts a partition's rows only while that bound lies
//! ahead, and abandons an insert when it passes (see `Fence`); so a relay
//! cut off from NATS stops inserting before anyone else can start. What it
//! held stays unacked and is redelivered to the next owner, which checks
//! redelivered rows in ClickHouse before inserting them.
//!
//! The pure decisions (validity, the share, what to take and give up) live
//! here; the KV I/O is in `leases`.

pub mod leases;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The holder's view of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The KV revision at which this relay created the key: it grows with
    /// every new owner, so it orders them.
    pub epoch: u64,
    /// The key's current revision, for the next compare-and-set renewal.
    pub revision: u64,
    /// Until when this relay may insert the partition's rows.
    pub valid_until: Instant,
}

/// How long a lease lasts and how early its holder stops trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
}

impl LeaseTiming {
    /// How often the holder renews: a third of the TTL, so two renewals in a
    /// row may fail before the lease is at risk.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How much earlier than the server's expiry the holder stops inserting:
    /// a tenth of the TTL, at least 200 ms (clock-rate drift between the
    /// relay and the server, and the server's expiry timer).
    pub fn margin(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(200))
    }

    /// The validity a renewal (or creation) sent at `sent_at` buys.
    pub fn valid_until(&self, sent_at: Instant) -> Instant {
        sent_at + self.ttl.saturating_sub(self.margin())
    }
}

/// The partitions a relay should hold when `relays` relays share
/// `partitions`: the ceiling of the even share, so that together they
/// cover every partition.
pub fn share(partitions: u32, relays: usize) -> u32 {
    let relays = u32::try_from(relays.max(1)).unwrap_or(u32::MAX);
    partitions.div_ceil(relays)
}

/// One ownership change to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Try to create the partition's lease.
    Acquire(u32),
    /// Hand the partition over: stop pulling, flush, delete the lease.
    Release(u32),
}

/// What one relay sees at a rebalancing tick.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub partitions: u32,
    /// Live relays, this one included.
    pub relays: usize,
    /// Partitions whose lease key exists (held by anyone, this relay too).
    pub leased: BTreeSet<u32>,
    /// Partitions this relay holds.
    pub mine: BTreeSet<u32>,
    /// Partitions this relay is already handing over.
    pub releasing: BTreeSet<u32>,
}

/// The steps that bring this relay to its share: release the highest
/// partitions it holds above the share, or acquire free ones up to it,
/// scanning from `offset` so that relays starting together try different
/// partitions first.
pub fn plan(view: &View, offset: u32) -> Vec<Step> {
    let target = share(view.partitions, view.relays) as usize;
    let keeping = view.mine.len().saturating_sub(view.releasing.len());
    if keeping > target {
        return view
            .mine
            .iter()
            .rev()
            .filter(|p| !view.releasing.contains(p))
            .take(keeping - target)
            .map(|&p| Step::Release(p))
            .collect();
    }
    if view.partitions == 0 || !view.releasing.is_empty() {
        return Vec::new();
    }
    let wanted = target.saturating_sub(view.mine.len());
    (0..view.partitions)
        .map(|i| (offset.wrapping_add(i)) % view.partitions)
        .filter(|p| !view.leased.contains(p))
        .take(wanted)
        .map(Step::Acquire)
        .collect()
}

/// The leases this relay holds, shared between the lease task (which
/// renews them) and the pipeline (which checks them before inserting).
#[derive(Debug, Clone, Default)]
pub struct Fence {
    held: Arc<Mutex<BTreeMap<u32, Held>>>,
}

impl Fence {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Held>> {
        // The map is only ever replaced whole-entry; a panic elsewhere
        // cannot leave it half-written, so a poisoned lock is still sound.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease on `partition`, if this relay holds it.
    pub fn get(&self, partition: u32) -> Option<Held> {
        self.lock().get(&partition).copied()
    }

    /// Whether this relay may still insert `partition`'s rows at `now`
    /// under the lease of `epoch`.
    pub fn valid(&self, partition: u32, epoch: u64, now: Instant) -> bool {
        self.get(partition)
            .is_some_and(|h| h.epoch == epoch && h.valid_until > now)
    }

    /// The earliest end of validity among `partitions`; None when one of
    /// them is not held, or the list is empty.
    pub fn valid_until(&self, partitions: &[u32]) -> Option<Instant> {
        let held = self.lock();
        let mut earliest: Option<Instant> = None;
        for p in partitions {
            let v = held.get(p)?.valid_until;
            earliest = Some(earliest.map_or(v, |e| e.min(v)));
        }
        earliest
    }

    /// The partitions held, ascending.
    pub fn partitions(&self) -> Vec<u32> {
        self.lock().keys().copied().collect()
    }

    pub(crate) fn set(&self, partition: u32, held: Held) {
        self.lock().insert(partition, held);
    }

    pub(crate) fn remove(&self, partition: u32) -> Option<Held> {
        self.lock().remove(&partition)
    }
}

/// What the lease task tells the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The relay now holds `partition` under `epoch`: rebuild its dedup
    /// window, then start pulling.
    Acquired { partition: u32, epoch: u64 },
    /// Hand `partition` over: stop pulling, insert and ack what is held,
    /// then tell the lease task it may delete the key.
    Release { partition: u32 },
    /// The lease on `partition` is gone (expired, or another relay holds
    /// it): stop pulling and drop its rows unacked.
    Lost { partition: u32 },
}

#[cfg(test)]
mod tests;
