//! The relay's dedup window: remembers recent `event_id`s for a bounded time
//! and count, so the same event arriving in two frames (an SDK retry the edge
//! could not collapse, a JetStream redelivery after a lost ack) becomes one
//! row.
//!
//! Each id remembers where the relay learned it:
//!
//! - [`Origin::Own`]: this relay buffered the event itself. Its row is in the
//!   buffer or already in ClickHouse, so any later copy is a duplicate.
//! - [`Origin::Claimed`]: another relay (or an earlier run of this one)
//!   announced that it buffered the event, through the claims stream (see
//!   `crate::claims`). The claimer's message stays unacked until its row is
//!   inserted, so a *first delivery* of another copy can be dropped: if the
//!   claimer dies, its message comes back as a redelivery and is stored then.
//!   A *redelivered* copy must not trust a claim (the claim may be its own
//!   dead claimer's); the pipeline asks ClickHouse instead.
//!
//! This is pure logic: time comes in as `now_ms` from the caller, never from a
//! clock, so tests can drive it deterministically. It never grows without
//! bound: entries leave by age (`window_ms`) and, when the count bound is
//! reached, oldest first. The events table's `ReplacingMergeTree` on
//! `event_id` is the backstop for what falls outside the window.
//!
//! # The four dedup layers
//!
//! This window is the second of four, each with its window and cost:
//!
//! 1. JetStream's duplicate window on `Nats-Msg-Id`, 10 minutes. A frame's id
//!    is a hash of its project, partition and event ids; an edge link's
//!    coalesced message (a bundle) goes under a hash of its frames' ids, so
//!    the link's own retry of that message is a duplicate, and each link
//!    remembers the ids of the frames it stored in the last 2 minutes (at
//!    most 100,000) so a frame handed to it again is not published again. A
//!    resend that reaches another link, or comes later, reaches the stream
//!    twice and is caught by layer 2.
//! 2. This window, shared by the region's relays: 10 minutes and at most 2M
//!    ids per relay (50-90 bytes each, so 100-180 MB at worst, since it holds
//!    the whole region's ids). Shared through the claims stream
//!    (fire-and-forget publishes, 16 bytes an id, kept 15 minutes) and rebuilt
//!    from it at start, so it holds across relays and restarts. It catches SDK
//!    resends.
//! 3. The presence check: rows that may already be stored (redelivered
//!    frames, a buffer whose insert attempt failed) are looked up in
//!    ClickHouse by project, day and id before inserting. One query per 4,000
//!    such ids, only after a crash, an outage or a lost ack.
//! 4. ReplacingMergeTree on the sorting key, which ends in `event_id`: the
//!    backstop that collapses at merge time what slips through.
//!
//! Why claims and not partition ownership: an assignment of partitions to
//! relays would make the window local by construction, but JetStream has no
//! consumer-group rebalancing, and building one (leases in KV, pinned
//! priority groups) would tie scaling relays up and down to a coordinator.
//! Claims keep every relay interchangeable. The residual race: two copies of
//! one event in different frames, first delivered to two relays within a
//! claim's propagation time (about a millisecond), or both redelivered to two
//! relays at once after a crash, can both be inserted; ReplacingMergeTree
//! collapses them and `spoor reconcile` reports them.

use std::collections::{HashMap, VecDeque};
use uuid::Uuid;

/// How the window learned an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Buffered by this relay.
    Own,
    /// Announced by another relay, or by an earlier run of this one.
    Claimed,
}

/// How a copy of an event reached the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The message's first delivery: no relay can have inserted its rows.
    First,
    /// A redelivery: a relay may have inserted its rows and died before the
    /// ack, so claims prove nothing and ClickHouse must be asked.
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
/// Memory per id: one `(Uuid, Origin)` entry (17 bytes, padded to 20) in the
/// `HashMap` plus a control byte and load-factor slack, and one `(u64, Uuid)`
/// (24 bytes) in the `VecDeque`: about 50 bytes when the containers are
/// full, up to about 90 bytes just after they double. The default bound of
/// 2,000,000 ids therefore costs roughly 100–180 MB at the worst moment,
/// which is what a 10-minute window at ~3,300 events/s needs across every
/// relay of the region (claims from peers are held too); size `max_ids` to
/// the region's expected rate × window.
#[derive(Debug)]
pub struct DedupWindow {
    window_ms: u64,
    max_ids: usize,
    seen: HashMap<Uuid, Origin>,
    /// Insertion order with the time each id was first seen; `now_ms` is
    /// monotonic, so the front is always the oldest.
    order: VecDeque<(u64, Uuid)>,
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
    pub fn observe(&mut self, id: Uuid, delivery: Delivery, now_ms: u64) -> Verdict {
        self.evict_expired(now_ms);
        if self.max_ids == 0 {
            return match delivery {
                Delivery::First => Verdict::Keep,
                Delivery::Redelivered => Verdict::KeepIfNotStored,
            };
        }
        match (self.seen.get(&id).copied(), delivery) {
            (Some(Origin::Own), _) => Verdict::Duplicate(Origin::Own),
            (Some(Origin::Claimed), Delivery::First) => Verdict::Duplicate(Origin::Claimed),
            (Some(Origin::Claimed), Delivery::Redelivered) => {
                // Upgraded in place: the id keeps its age.
                self.seen.insert(id, Origin::Own);
                Verdict::KeepIfNotStored
            }
            (None, delivery) => {
                self.remember(id, Origin::Own, now_ms);
                match delivery {
                    Delivery::First => Verdict::Keep,
                    Delivery::Redelivered => Verdict::KeepIfNotStored,
                }
            }
        }
    }

    /// Records a first-delivery copy and says whether to keep it: the plain
    /// single-relay dedup, `observe(id, Delivery::First, now_ms) == Keep`.
    pub fn insert(&mut self, id: Uuid, now_ms: u64) -> bool {
        self.observe(id, Delivery::First, now_ms) == Verdict::Keep
    }

    /// Records that another relay (or an earlier run of this one) buffered
    /// `id`. An id already known keeps its origin and age.
    pub fn claim(&mut self, id: Uuid, now_ms: u64) {
        self.evict_expired(now_ms);
        if self.max_ids > 0 && !self.seen.contains_key(&id) {
            self.remember(id, Origin::Claimed, now_ms);
        }
    }

    /// How the window knows `id`, if it does.
    pub fn origin(&self, id: &Uuid) -> Option<Origin> {
        self.seen.get(id).copied()
    }

    /// Whether `id` is currently remembered (as of the last call).
    pub fn contains(&self, id: &Uuid) -> bool {
        self.seen.contains_key(id)
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

    fn remember(&mut self, id: Uuid, origin: Origin, now_ms: u64) {
        self.seen.insert(id, origin);
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
