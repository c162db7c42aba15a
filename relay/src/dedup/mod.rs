//! The relay's dedup window: remembers the `event_id`s it has buffered for a
//! bounded time and count, so the same event arriving in two frames (an SDK
//! retry the edge could not collapse, a JetStream redelivery after a lost ack)
//! becomes one row.
//!
//! This is pure logic: time comes in as `now_ms` from the caller, never from a
//! clock, so tests can drive it deterministically. It must never grow without
//! bound: entries leave by age (`window_ms`) and, when the count bound is
//! reached, oldest first. It is a best-effort first line; the events table's
//! `ReplacingMergeTree` on `event_id` is the backstop for what falls outside the
//! window (a restart empties it).

use std::collections::{HashSet, VecDeque};
use uuid::Uuid;

/// A time- and count-bounded set of recently seen event ids.
///
/// Memory per id: one `Uuid` (16 bytes) in the `HashSet` plus one control byte
/// and load-factor slack, and one `(u64, Uuid)` (24 bytes) in the `VecDeque`:
/// about 45 bytes when the containers are full, up to about 85 bytes just
/// after they double. The default bound of 2,000,000 ids therefore costs
/// roughly 90–170 MB at the worst moment, which is what a 10-minute window at
/// ~3,300 events/s needs; size `max_ids` to the expected rate × window.
#[derive(Debug)]
pub struct DedupWindow {
    window_ms: u64,
    max_ids: usize,
    seen: HashSet<Uuid>,
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
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id` as seen at `now_ms`. Returns `true` when it was not in
    /// the window (the caller keeps the event) and `false` for a duplicate.
    ///
    /// A duplicate does not refresh the id's age: the window measures time
    /// since the first copy, which is what bounds how long a retry may lag.
    pub fn insert(&mut self, id: Uuid, now_ms: u64) -> bool {
        self.evict_expired(now_ms);
        if self.max_ids == 0 {
            return true;
        }
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back((now_ms, id));
        while self.order.len() > self.max_ids {
            self.pop_oldest();
        }
        true
    }

    /// Whether `id` is currently remembered (as of the last `insert`/`evict_expired`).
    pub fn contains(&self, id: &Uuid) -> bool {
        self.seen.contains(id)
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

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.seen.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests;
