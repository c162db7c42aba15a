//! The debug ring: the recent events this relay has seen, keyed by device,
//! so "what did device X do in the last hour, and where is each event now?"
//! is answered from memory in milliseconds.
//!
//! Pure data structure: time comes in as arguments (`now_ms`, wall-clock
//! epoch ms), there is no I/O and no lock. The relay owns one ring in one
//! task (`debug::ring_task::RingTask`) and feeds it through a channel the pipeline
//! never waits on; lookups are served by the same task.
//!
//! Layout. Events are keyed by their device key (`Event::device_key()`: the
//! `anonymous_id`, else the `user_id`), across projects; each device holds
//! its events ordered by stream time (when JetStream stored the frame, the
//! same on every relay and on replay). A `user_id` index maps a user to the
//! devices it was seen on. A global FIFO of `(stream time, device)` records
//! drives eviction, oldest first, by age (`window_ms`), by the byte budget
//! (`max_bytes`) and per device (`max_events_per_device`). Dead frames
//! (undecodable, so their events are unknown) are kept by partition.
//!
//! Memory accounting (`bytes()`): per event, `ENTRY_OVERHEAD_BYTES` (the
//! `Entry` struct, its slot in the device's deque, its 16-byte FIFO record
//! and the allocator's header for its one text allocation) plus the lengths
//! of its strings (event name, user id, session, properties, packed into
//! that one allocation; the project id is interned); per device,
//! `DEVICE_OVERHEAD_BYTES` plus its key and its user ids twice (device and
//! index). Spare capacity of growing deques and hash maps is not counted,
//! so the estimate is below what the allocator holds: BENCHMARKS.md
//! ("Device debug ring") measures the ratio.
//!
//! The ring must never grow past its byte budget by more than one event,
//! never hold an event older than its window for longer than the next
//! update, and never panic on what an event contains.
//!
//! Why one task and a channel, not a shared `Mutex<Ring>`: a lookup of a busy
//! device (thousands of events, cloned out) would hold up the pipeline's next
//! frame under a lock; with a task the pipeline never waits, and under
//! overload the ring loses updates (counted), never relaying time. The ring
//! orders and evicts by JetStream's stored time (the same on every relay and
//! on replay), windows queries on the edge's receive time, and orders answers
//! by event time then id. Rehydration's "inserted" rule is the durable
//! consumer's ack floor read at start: exact below it, conservative above it
//! (frames acked out of order show as pending on the restarted relay; the
//! relay that inserted them answers "inserted" and the merge keeps the most
//! advanced copy). Acked also covers deduplicated and dead-lettered frames; a
//! dead-lettered frame never decodes, so it shows as a dead frame, not as
//! events. A restart loses the relay receive and insert times of events
//! relayed before it (known only to the dead process).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use spoor_core::debug::{
    subject_partition, DeadFrame, DeviceEvent, DeviceQuery, EventPath, EventState, RingCoverage,
    Subject,
};
use uuid::Uuid;

/// The ring's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLimits {
    /// How far back (stream time) the ring keeps events.
    pub window_ms: i64,
    /// Estimated bytes the ring may hold (see the module docs).
    pub max_bytes: usize,
    /// Most events kept per device key; the oldest go first.
    pub max_events_per_device: usize,
    /// Most dead frames remembered.
    pub max_dead_frames: usize,
}

impl Default for RingLimits {
    fn default() -> Self {
        RingLimits {
            window_ms: 3_600_000,
            max_bytes: 256 << 20,
            max_events_per_device: 2_000,
            max_dead_frames: 10_000,
        }
    }
}

/// Estimated fixed bytes per event: `Entry` itself, the device deque's slot
/// for it, and its record in the eviction FIFO.
pub const ENTRY_OVERHEAD_BYTES: usize =
    std::mem::size_of::<Entry>() + std::mem::size_of::<(i64, u32)>() + 16;
/// Estimated fixed bytes per device: its slot, its map entry and key header.
pub const DEVICE_OVERHEAD_BYTES: usize = std::mem::size_of::<Device>() + 64;

/// One event as it enters the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub event_id: Uuid,
    pub event: String,
    pub project_id: String,
    pub anonymous_id: String,
    pub user_id: String,
    pub session_id: String,
    pub ts_ms: i64,
    pub properties: String,
    pub client_ts_ms: Option<i64>,
    pub edge_received_at_ms: i64,
    pub stream_at_ms: i64,
    pub stream_seq: u64,
    pub relay_received_at_ms: Option<i64>,
    pub state: EventState,
}

impl Observed {
    /// The key the event is held under (the routing key).
    pub fn device_key(&self) -> &str {
        if self.anonymous_id.is_empty() {
            &self.user_id
        } else {
            &self.anonymous_id
        }
    }
}

#[derive(Debug)]
struct Entry {
    stream_at_ms: i64,
    event_id: Uuid,
    ts_ms: i64,
    client_ts_ms: Option<i64>,
    edge_received_at_ms: i64,
    relay_received_at_ms: Option<i64>,
    stream_seq: u64,
    state: EventState,
    /// The event had no `anonymous_id` and is keyed by its `user_id`.
    keyed_by_user: bool,
    /// Interned: one allocation per project, shared by its entries.
    project_id: Arc<str>,
    /// Event name, user id, session id and properties in one allocation
    /// (fewer allocations: less memory and fewer cache misses on lookup).
    text: Box<str>,
    /// Byte lengths of the event name, user id and session id in `text`.
    lens: [u32; 3],
    bytes: usize,
}

impl Entry {
    /// (event name, user id, session id, properties).
    fn fields(&self) -> (&str, &str, &str, &str) {
        let [a, b, c] = self.lens.map(|l| l as usize);
        let t = &*self.text;
        match (
            t.get(..a),
            t.get(a..a + b),
            t.get(a + b..a + b + c),
            t.get(a + b + c..),
        ) {
            (Some(event), Some(user), Some(session), Some(properties)) => {
                (event, user, session, properties)
            }
            // Unreachable by construction (lengths come from the same
            // strings); an empty answer beats a panic.
            _ => ("", "", "", ""),
        }
    }
}

#[derive(Debug)]
struct Device {
    key: Arc<str>,
    /// Ordered by stream time (then arrival).
    entries: VecDeque<Entry>,
    /// FIFO records of this device whose entry was already evicted by the
    /// per-device cap: `records == entries.len() + stale`.
    stale: u32,
    records: u32,
    users: Vec<Arc<str>>,
}

/// Why events left the ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Older than the window.
    pub age: u64,
    /// Over the byte budget.
    pub bytes: u64,
    /// Over the per-device cap.
    pub device_cap: u64,
}

impl Evictions {
    pub fn total(&self) -> u64 {
        self.age + self.bytes + self.device_cap
    }
}

/// A lookup's raw result, before the requester merges relays' answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub events: Vec<DeviceEvent>,
    pub dead_frames: Vec<DeadFrame>,
}

/// The ring. See the module docs.
#[derive(Debug)]
pub struct Ring {
    limits: RingLimits,
    /// Edge partitions, to place a device on its partition for dead frames.
    partitions: u32,
    relay: String,
    slots: Vec<Option<Device>>,
    free: Vec<u32>,
    by_key: HashMap<Arc<str>, u32>,
    by_user: HashMap<Arc<str>, Vec<u32>>,
    order: VecDeque<(i64, u32)>,
    dead: VecDeque<DeadFrame>,
    projects: std::collections::HashSet<Arc<str>>,
    events: u64,
    bytes: usize,
    evicted: Evictions,
}

impl Ring {
    pub fn new(limits: RingLimits, partitions: u32, relay: impl Into<String>) -> Ring {
        Ring {
            limits,
            partitions: partitions.max(1),
            relay: relay.into(),
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            by_user: HashMap::new(),
            order: VecDeque::new(),
            dead: VecDeque::new(),
            projects: std::collections::HashSet::new(),
            events: 0,
            bytes: 0,
            evicted: Evictions::default(),
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Estimated bytes held (see the module docs).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn devices(&self) -> usize {
        self.by_key.len()
    }

    /// Evictions since the ring was created, by reason.
    pub fn evictions(&self) -> Evictions {
        self.evicted
    }

    pub fn limits(&self) -> &RingLimits {
        &self.limits
    }

    /// Adds an event, or advances the state of the copy already held (the
    /// same frame seen live and on replay). An event older than the window
    /// is not added.
    pub fn observe(&mut self, o: Observed, now_ms: i64) {
        if o.stream_at_ms < now_ms.saturating_sub(self.limits.window_ms)
            || o.device_key().is_empty()
        {
            self.expire(now_ms);
            return;
        }
        // Strings longer than u32 cannot be packed; no event is (the edge
        // caps events at 32 KB), but nothing here may panic on input.
        if [&o.event, &o.user_id, &o.session_id]
            .iter()
            .any(|s| u32::try_from(s.len()).is_err())
        {
            return;
        }
        let project_id = self.intern(&o.project_id);
        let slot = self.slot_for(o.device_key());
        let Some(device) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        // The same event from the same frame: keep one, the furthest along.
        let start = device
            .entries
            .partition_point(|e| e.stream_at_ms < o.stream_at_ms);
        let end = device
            .entries
            .partition_point(|e| e.stream_at_ms <= o.stream_at_ms);
        if let Some(existing) = device
            .entries
            .range_mut(start..end)
            .find(|e| e.event_id == o.event_id)
        {
            if o.state.rank() > existing.state.rank() {
                existing.state = o.state;
            }
            if existing.relay_received_at_ms.is_none() {
                existing.relay_received_at_ms = o.relay_received_at_ms;
            }
            return;
        }
        let mut new_user = None;
        if !o.user_id.is_empty() && !device.users.iter().any(|u| **u == *o.user_id) {
            let user: Arc<str> = Arc::from(o.user_id.as_str());
            self.bytes += 2 * user.len();
            device.users.push(user.clone());
            new_user = Some(user);
        }
        let entry = Entry {
            stream_at_ms: o.stream_at_ms,
            event_id: o.event_id,
            ts_ms: o.ts_ms,
            client_ts_ms: o.client_ts_ms,
            edge_received_at_ms: o.edge_received_at_ms,
            relay_received_at_ms: o.relay_received_at_ms,
            stream_seq: o.stream_seq,
            state: o.state,
            keyed_by_user: o.anonymous_id.is_empty(),
            bytes: ENTRY_OVERHEAD_BYTES
                + o.event.len()
                + o.user_id.len()
                + o.session_id.len()
                + o.properties.len(),
            project_id,
            lens: [o.event.len(), o.user_id.len(), o.session_id.len()]
                .map(|l| u32::try_from(l).unwrap_or(0)),
            text: [o.event.as_str(), &o.user_id, &o.session_id, &o.properties]
                .concat()
                .into_boxed_str(),
        };
        self.bytes += entry.bytes;
        self.events += 1;
        device.entries.insert(end, entry);
        device.records += 1;
        self.order.push_back((o.stream_at_ms, slot));
        if device.entries.len() > self.limits.max_events_per_device {
            if let Some(old) = device.entries.pop_front() {
                device.stale += 1;
                self.bytes -= old.bytes;
                self.events -= 1;
                self.evicted.device_cap += 1;
            }
        }
        if let Some(user) = new_user {
            let devices = self.by_user.entry(user).or_default();
            if !devices.contains(&slot) {
                devices.push(slot);
            }
        }
        self.expire(now_ms);
    }

    /// Marks events inserted into ClickHouse at `at_ms` (`None`: known
    /// stored, time unknown). `events` are (device key, event id); ids the
    /// ring does not hold are ignored.
    pub fn mark_inserted<'a>(
        &mut self,
        events: impl IntoIterator<Item = (&'a str, Uuid)>,
        at_ms: Option<i64>,
    ) {
        let mut by_device: HashMap<&str, Vec<Uuid>> = HashMap::new();
        for (key, id) in events {
            by_device.entry(key).or_default().push(id);
        }
        let state = EventState::Inserted { at_ms };
        for (key, mut ids) in by_device {
            let Some(&slot) = self.by_key.get(key) else {
                continue;
            };
            let Some(device) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            ids.sort_unstable();
            // Newest first: what was just inserted sits at the back.
            let mut left = ids.len();
            for entry in device.entries.iter_mut().rev() {
                if left == 0 {
                    break;
                }
                if ids.binary_search(&entry.event_id).is_ok() {
                    left -= 1;
                    if state.rank() > entry.state.rank() {
                        entry.state = state;
                    }
                }
            }
        }
    }

    /// Remembers a frame that could not be decoded.
    pub fn dead_frame(&mut self, frame: DeadFrame, now_ms: i64) {
        if self
            .dead
            .iter()
            .any(|f| f.stream_seq == frame.stream_seq && f.subject == frame.subject)
        {
            return;
        }
        self.dead.push_back(frame);
        while self.dead.len() > self.limits.max_dead_frames {
            self.dead.pop_front();
        }
        self.expire(now_ms);
    }

    /// Drops everything older than the window.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.limits.window_ms);
        while self.order.front().is_some_and(|&(at, _)| at < cutoff) {
            self.evict_oldest(Reason::Age);
        }
        while self.bytes > self.limits.max_bytes && !self.order.is_empty() {
            self.evict_oldest(Reason::Bytes);
        }
        // Dead frames arrive nearly in stream order; a late one just waits
        // for the front to expire.
        while self.dead.front().is_some_and(|f| f.stream_at_ms < cutoff) {
            self.dead.pop_front();
        }
    }

    fn evict_oldest(&mut self, reason: Reason) {
        let Some((_, slot)) = self.order.pop_front() else {
            return;
        };
        let Some(device) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        device.records = device.records.saturating_sub(1);
        if device.stale > 0 {
            device.stale -= 1;
        } else if let Some(old) = device.entries.pop_front() {
            self.bytes -= old.bytes;
            self.events -= 1;
            match reason {
                Reason::Age => self.evicted.age += 1,
                Reason::Bytes => self.evicted.bytes += 1,
            }
        }
        if device.records == 0 {
            self.remove_device(slot);
        }
    }

    /// The shared copy of a project id. Projects are the edge's configured
    /// write keys' projects, a handful, so the set is never pruned.
    fn intern(&mut self, project: &str) -> Arc<str> {
        if let Some(p) = self.projects.get(project) {
            return p.clone();
        }
        let p: Arc<str> = Arc::from(project);
        self.projects.insert(p.clone());
        p
    }

    fn slot_for(&mut self, key: &str) -> u32 {
        if let Some(&slot) = self.by_key.get(key) {
            return slot;
        }
        let key: Arc<str> = Arc::from(key);
        let device = Device {
            key: key.clone(),
            entries: VecDeque::new(),
            stale: 0,
            records: 0,
            users: Vec::new(),
        };
        self.bytes += DEVICE_OVERHEAD_BYTES + key.len();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(device);
                slot
            }
            None => {
                self.slots.push(Some(device));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_key.insert(key, slot);
        slot
    }

    fn remove_device(&mut self, slot: u32) {
        let Some(device) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.bytes -= DEVICE_OVERHEAD_BYTES + device.key.len();
        self.by_key.remove(&device.key);
        for user in &device.users {
            self.bytes -= 2 * user.len();
            if let Some(devices) = self.by_user.get_mut(user) {
                devices.retain(|&s| s != slot);
                if devices.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
        self.free.push(slot);
    }

    /// What the ring covers now.
    pub fn coverage(&self, rehydrating: bool) -> RingCoverage {
        RingCoverage {
            oldest_stream_ms: self
                .slots
                .iter()
                .flatten()
                .filter_map(|d| d.entries.front().map(|e| e.stream_at_ms))
                .min(),
            events_held: self.events,
            rehydrating,
        }
    }

    /// The events the query asks for (window on the edge's receive time,
    /// optional project), and the dead frames on their devices' partitions
    /// in the window. Unordered; at most `query.limit` events, the newest by
    /// event time. The requester merges and caps again.
    pub fn lookup(&self, query: &DeviceQuery) -> Found {
        let slots: Vec<u32> = match &query.subject {
            Subject::Device(id) => self.by_key.get(id.as_str()).copied().into_iter().collect(),
            Subject::User(id) => {
                let mut slots = self.by_user.get(id.as_str()).cloned().unwrap_or_default();
                if let Some(&own) = self.by_key.get(id.as_str()) {
                    if !slots.contains(&own) {
                        slots.push(own);
                    }
                }
                slots
            }
        };
        let mut found = Found::default();
        let mut partitions = vec![spoor_core::route::partition_of(
            query.subject.id(),
            self.partitions,
        )];
        for slot in slots {
            let Some(device) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            let partition = spoor_core::route::partition_of(&device.key, self.partitions);
            if !partitions.contains(&partition) {
                partitions.push(partition);
            }
            let matching = device.entries.iter().rev().filter(|e| {
                e.edge_received_at_ms >= query.since_ms
                    && e.edge_received_at_ms < query.until_ms
                    && query
                        .project_id
                        .as_deref()
                        .is_none_or(|p| p == &*e.project_id)
            });
            for e in matching {
                found.events.push(self.to_event(&device.key, e));
            }
        }
        // The limit keeps the newest by event time (what the merge orders
        // by), not by arrival: collect, then cut.
        if found.events.len() > query.limit {
            let cut = query.limit;
            found
                .events
                .select_nth_unstable_by_key(cut, |e| std::cmp::Reverse((e.ts_ms, e.event_id)));
            found.events.truncate(cut);
        }
        let since_stream = query.since_ms;
        found.dead_frames = self
            .dead
            .iter()
            .filter(|f| {
                f.stream_at_ms >= since_stream
                    && subject_partition(&f.subject).is_some_and(|p| partitions.contains(&p))
            })
            .cloned()
            .collect();
        found
    }

    fn to_event(&self, key: &str, e: &Entry) -> DeviceEvent {
        let anonymous_id = if e.keyed_by_user {
            String::new()
        } else {
            key.to_string()
        };
        let (event, user_id, session_id, properties) = e.fields();
        DeviceEvent {
            event_id: e.event_id,
            event: event.to_string(),
            project_id: e.project_id.to_string(),
            anonymous_id,
            user_id: user_id.to_string(),
            session_id: session_id.to_string(),
            ts_ms: e.ts_ms,
            properties: properties.to_string(),
            path: EventPath {
                client_ts_ms: e.client_ts_ms,
                edge_received_at_ms: e.edge_received_at_ms,
                stream_at_ms: e.stream_at_ms,
                stream_seq: e.stream_seq,
                relay_received_at_ms: e.relay_received_at_ms,
                state: e.state,
            },
            relay: self.relay.clone(),
        }
    }
}

#[derive(Clone, Copy)]
enum Reason {
    Age,
    Bytes,
}

#[cfg(test)]
mod tests;
