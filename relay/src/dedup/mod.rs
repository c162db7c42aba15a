//! A partition's dedup window: remembers the (project, `event_id`) keys a
//! partition carried recently, for a bounded time and count, so the same
//! event arriving in two frames (an SDK retry the edge could not collapse,
//! a spill or dead-letter replay, a JetStream redelivery after a lost ack)
//! becomes one row.
//!
//! Each key remembers where the relay learned it:
//!
//! - [`Origin::Own`]: this relay buffered the event itself under its lease.
//!   Its row is in the buffer or already in ClickHouse, so any later copy is
//!   a duplicate.
//! - [`Origin::Claimed`]: the event was in a frame the partition's consumer
//!   delivered before this relay took the partition (read back from the
//!   stream when the lease was acquired, see `source::nats::recent_ids`).
//!   That frame was either acked (its rows stored, deduplicated or
//!   dead-lettered) or is still unacked and comes back to this relay as a
//!   redelivery, so a *first delivery* of another copy can be dropped. A
//!   *redelivered* copy must not trust the window (it may be that very
//!   frame, whose rows a crashed owner may or may not have stored); the
//!   pipeline asks ClickHouse instead.
//!
//! This is pure logic: time comes in as `now_ms` from the caller, never from a
//! clock, so tests can drive it deterministically. It never grows without
//! bound: entries leave by age (`window_ms`) and, when the count bound is
//! reached, oldest first.
//!
//! # The dedup layers, and what each guards
//!
//! 1. JetStream's duplicate window on `Nats-Msg-Id`, 10 minutes: the edge's
//!    own retries of a publish, and an SDK resending the identical request.
//!    A frame's id is a hash of its project, partition and event ids; an
//!    edge link's coalesced message (a bundle) goes under a hash of its
//!    frames' ids, and each link remembers the ids of the frames it stored
//!    in the last 2 minutes (at most 100,000) so a frame handed to it again
//!    is not published again.
//! 2. This window, one per partition, kept by the partition's only owner
//!    (`crate::ownership`): 10 minutes by default (`--dedup-window-secs`).
//!    Because a device's events always go to the same partition and only
//!    the lease holder inserts a partition's rows, the window is exact: it
//!    catches every resend, spill replay and dead-letter replay whose first
//!    copy the partition carried within the window, whichever relay took it.
//!    A relay taking a partition over rebuilds the window from the stream
//!    before its first pull, so ownership moving never reopens it.
//! 3. The presence check: rows that may already be stored (redelivered
//!    frames, a buffer whose insert attempt failed or was fenced off) are
//!    looked up in ClickHouse by project, day and id before inserting. One
//!    query per 4,000 such ids, only after a crash, an outage, a handover
//!    or a lost ack. It guards redelivery after a crash, at any age.
//! 4. ReplacingMergeTree on the sorting key, which ends in `event_id`: the
//!    backstop for copies further apart than the window. The rollups have no
//!    such backstop, which is why layers 1-3 must be exact.
//!
//! Memory: at most `--dedup-max-ids` keys per relay in all (each partition
//! window gets that bound divided by the partition count).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use uuid::Uuid;

/// What dedup compares: the project and the event id. The same id in two
/// projects is two events. The project is kept as a 64-bit xxh3 hash (a
/// collision between two projects' names is what it would take to confuse
/// them), so a key is 24 bytes whatever the project's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub project: u64,
    pub id: Uuid,
}

impl DedupKey {
    pub fn new(project_id: &str, id: Uuid) -> DedupKey {
        DedupKey {
            project: xxhash_rust::xxh3::xxh3_64(project_id.as_bytes()),
            id,
        }
    }
}

impl From<&Uuid> for DedupKey {
    fn from(id: &Uuid) -> DedupKey {
        DedupKey::from(*id)
    }
}

/// A bare id is keyed under the empty project (single-project callers).
impl From<Uuid> for DedupKey {
    fn from(id: Uuid) -> DedupKey {
        DedupKey::new("", id)
    }
}

/// How the window learned an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Buffered by this relay.
    Own,
    /// Carried by the partition before this relay held it (read back from
    /// the stream when the lease was acquired).
    Claimed,
}

/// How a copy of an event reached the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The message's first delivery: no relay can have inserted its rows.
    First,
    /// A redelivery: a relay may have inserted its rows and died before the
    /// ack, so the window proves nothing and ClickHouse must be asked.
    Redelivered,
}

/// What to do with one copy of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the row.
    Keep,
    /// Keep the row, but check ClickHouse for it before inserting.
    KeepIfNotStored,
    /// Drop it: a copy is buffered here, stored, or held by a live claim.
    Duplicate(Origin),
}

/// A time- and count-bounded map of recently seen event ids.
///
/// Memory per id: one `(DedupKey, Origin)` entry (25 bytes, padded to 32)
/// in the `HashMap` plus a control byte and load-factor slack, and one
/// `(u64, DedupKey)` (32 bytes) in the `VecDeque`: about 70 bytes when the
/// containers are full, up to about 120 bytes just after they double. The
/// default bound of 2,000,000 ids therefore costs roughly 140–240 MB at the
/// worst moment, which is what a 10-minute window at ~3,300 events/s needs
/// for a relay holding every partition; size `max_ids` to the region's
/// expected rate × window.
#[derive(Debug)]
pub struct DedupWindow {
    window_ms: u64,
    max_ids: usize,
    seen: HashMap<DedupKey, Origin>,
    /// Insertion order with the time each id was first seen; `now_ms` is
    /// monotonic, so the front is always the oldest.
    order: VecDeque<(u64, DedupKey)>,
}

impl DedupWindow {
    /// A window that remembers ids for `window_ms` and at most `max_ids` ids.
    /// A `max_ids` of zero disables dedup (every id is new).
    pub fn new(window_ms: u64, max_ids: usize) -> Self {
        DedupWindow {
            window_ms,
            max_ids,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Decides on one copy of `id` arriving at `now_ms` and, when it is kept,
    /// records it as this relay's own.
    pub fn observe(&mut self, id: impl Into<DedupKey>, delivery: Delivery, now_ms: u64) -> Verdict {
        let id = id.into();
        self.evict_expired(now_ms);
        if self.max_ids == 0 {
            return match delivery {
                Delivery::First => Verdict::Keep,
                Delivery::Redelivered => Verdict::KeepIfNotStored,
            };
        }
        // One hash and probe per copy: the loop asks this for every event.
        match self.seen.entry(id) {
            Entry::Occupied(mut known) => match (*known.get(), delivery) {
                (Origin::Own, _) => Verdict::Duplicate(Origin::Own),
                (Origin::Claimed, Delivery::First) => Verdict::Duplicate(Origin::Claimed),
                (Origin::Claimed, Delivery::Redelivered) => {
                    // Upgraded in place: the id keeps its age.
                    known.insert(Origin::Own);
                    Verdict::KeepIfNotStored
                }
            },
            Entry::Vacant(new) => {
                new.insert(Origin::Own);
                self.record_order(id, now_ms);
                match delivery {
                    Delivery::First => Verdict::Keep,
                    Delivery::Redelivered => Verdict::KeepIfNotStored,
                }
            }
        }
    }

    /// Records a first-delivery copy and says whether to keep it: the plain
    /// single-relay dedup, `observe(id, Delivery::First, now_ms) == Keep`.
    pub fn insert(&mut self, id: impl Into<DedupKey>, now_ms: u64) -> bool {
        self.observe(id, Delivery::First, now_ms) == Verdict::Keep
    }

    /// Records that the partition carried `id` before this relay held it
    /// (read back from the stream). An id already known keeps its origin
    /// and age.
    pub fn claim(&mut self, id: impl Into<DedupKey>, now_ms: u64) {
        let id = id.into();
        self.evict_expired(now_ms);
        if self.max_ids > 0 && !self.seen.contains_key(&id) {
            self.remember(id, Origin::Claimed, now_ms);
        }
    }

    /// How the window knows `id`, if it does.
    pub fn origin(&self, id: impl Into<DedupKey>) -> Option<Origin> {
        self.seen.get(&id.into()).copied()
    }

    /// Whether `id` is currently remembered (as of the last call).
    pub fn contains(&self, id: impl Into<DedupKey>) -> bool {
        self.seen.contains_key(&id.into())
    }

    /// Forgets every id first seen at or before `now_ms - window_ms`.
    pub fn evict_expired(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.window_ms);
        while let Some(&(t, _)) = self.order.front() {
            // `now_ms < window_ms` means nothing can have expired yet.
            if now_ms < self.window_ms || t > cutoff {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn remember(&mut self, id: DedupKey, origin: Origin, now_ms: u64) {
        self.seen.insert(id, origin);
        self.record_order(id, now_ms);
    }

    /// Appends a newly remembered `id` to the age order, then holds the
    /// count bound.
    fn record_order(&mut self, id: DedupKey, now_ms: u64) {
        self.order.push_back((now_ms, id));
        while self.order.len() > self.max_ids {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.seen.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests;
