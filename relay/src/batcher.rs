//! The relay's buffer and its flush decision: rows waiting for the next
//! ClickHouse insert, and the NATS messages to acknowledge once that insert
//! succeeds.
//!
//! Pure: no I/O, no clock (callers pass `now_ms`). The invariant it exists to
//! keep is that a message's ack token leaves the buffer only together with
//! every row decoded from it, through [`Batcher::take`], which the caller
//! invokes only after a successful insert. A failed insert leaves the buffer
//! untouched, so the same rows are retried and nothing is acked early.

/// When the buffer must be flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Flush once this many rows are buffered.
    pub max_rows: usize,
    /// Flush once the rows' estimated size reaches this many bytes.
    pub max_bytes: usize,
    /// Flush once this many messages await their ack, even if they carried
    /// few rows (a run of all-duplicate frames must not pile up unacked).
    pub max_messages: usize,
    /// Flush once the oldest buffered message is this old.
    pub flush_interval_ms: u64,
}

/// Why a flush is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    Rows,
    Bytes,
    Messages,
    Age,
    /// The relay is shutting down and drains what it holds.
    Shutdown,
    /// A partition is being handed over to another relay.
    Handover,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Rows => "rows",
            FlushReason::Bytes => "bytes",
            FlushReason::Messages => "messages",
            FlushReason::Age => "age",
            FlushReason::Shutdown => "shutdown",
            FlushReason::Handover => "handover",
        }
    }
}

/// Rows of type `R` plus ack tokens of type `A`, in arrival order.
#[derive(Debug)]
pub struct Batcher<R, A> {
    limits: BatchLimits,
    rows: Vec<R>,
    acks: Vec<A>,
    /// The group (the stream partition) of each row and of each ack, so a
    /// partition whose lease is lost can leave the buffer on its own.
    row_groups: Vec<u32>,
    ack_groups: Vec<u32>,
    bytes: usize,
    /// When the oldest message still held entered the buffer.
    oldest_ms: Option<u64>,
}

/// What a successful insert releases: the ack tokens to acknowledge.
#[derive(Debug)]
pub struct Drained<A> {
    pub rows: usize,
    pub bytes: usize,
    pub acks: Vec<A>,
}

impl<R, A> Batcher<R, A> {
    pub fn new(limits: BatchLimits) -> Self {
        Batcher {
            limits,
            rows: Vec::new(),
            acks: Vec::new(),
            row_groups: Vec::new(),
            ack_groups: Vec::new(),
            bytes: 0,
            oldest_ms: None,
        }
    }

    pub fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    /// Adds one message's rows (each with its estimated size in bytes) and the
    /// token that acknowledges the message. A message may carry no rows (all
    /// its events were duplicates); its ack still waits for the next insert,
    /// so a duplicate is never acked before the copy it duplicates is stored.
    pub fn push(&mut self, rows: impl IntoIterator<Item = (R, usize)>, ack: A, now_ms: u64) {
        self.push_in(0, rows, ack, now_ms);
    }

    /// [`Batcher::push`] for a message of `group` (its stream partition).
    pub fn push_in(
        &mut self,
        group: u32,
        rows: impl IntoIterator<Item = (R, usize)>,
        ack: A,
        now_ms: u64,
    ) {
        for (row, size) in rows {
            self.rows.push(row);
            self.row_groups.push(group);
            self.bytes = self.bytes.saturating_add(size);
        }
        self.acks.push(ack);
        self.ack_groups.push(group);
        self.oldest_ms.get_or_insert(now_ms);
    }

    /// The groups that have messages in the buffer, ascending.
    pub fn groups(&self) -> Vec<u32> {
        let mut groups = self.ack_groups.clone();
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    /// Takes every row and ack of `group` out of the buffer (its partition
    /// went to another relay) and returns the acks, so the caller can hand
    /// the messages back. Nothing of it is inserted or acked here.
    pub fn remove_group(&mut self, group: u32, size: impl Fn(&R) -> usize) -> Vec<A> {
        if !self.ack_groups.contains(&group) {
            return Vec::new();
        }
        let mut groups = self.row_groups.iter();
        self.rows
            .retain(|_| groups.next().is_some_and(|&g| g != group));
        self.row_groups.retain(|&g| g != group);
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(self.acks.len());
        for (ack, g) in std::mem::take(&mut self.acks)
            .into_iter()
            .zip(&self.ack_groups)
        {
            if *g == group {
                removed.push(ack);
            } else {
                kept.push(ack);
            }
        }
        self.acks = kept;
        self.ack_groups.retain(|&g| g != group);
        self.bytes = self.rows.iter().map(size).fold(0, usize::saturating_add);
        if self.acks.is_empty() {
            self.oldest_ms = None;
        }
        removed
    }

    /// The reason to flush now, if any. Size bounds win over age so the
    /// reported reason says which limit the traffic is hitting.
    pub fn flush_reason(&self, now_ms: u64) -> Option<FlushReason> {
        if self.acks.is_empty() {
            return None;
        }
        if self.rows.len() >= self.limits.max_rows {
            return Some(FlushReason::Rows);
        }
        if self.bytes >= self.limits.max_bytes {
            return Some(FlushReason::Bytes);
        }
        if self.acks.len() >= self.limits.max_messages {
            return Some(FlushReason::Messages);
        }
        match self.flush_deadline_ms() {
            Some(deadline) if now_ms >= deadline => Some(FlushReason::Age),
            _ => None,
        }
    }

    /// When the age bound will force a flush, if anything is buffered.
    pub fn flush_deadline_ms(&self) -> Option<u64> {
        self.oldest_ms
            .map(|t| t.saturating_add(self.limits.flush_interval_ms))
    }

    /// The buffered rows, for the insert. Borrowed, not moved: on failure
    /// they must still be here for the retry.
    pub fn rows(&self) -> &[R] {
        &self.rows
    }

    /// Empties the buffer after the insert of [`Batcher::rows`] succeeded and
    /// hands back the ack tokens it released.
    pub fn take(&mut self) -> Drained<A> {
        let drained = Drained {
            rows: self.rows.len(),
            bytes: self.bytes,
            acks: std::mem::take(&mut self.acks),
        };
        self.rows.clear();
        self.row_groups.clear();
        self.ack_groups.clear();
        // Give back a buffer that grew for a burst rather than pin it forever.
        if self.rows.capacity() > self.limits.max_rows.saturating_mul(2) {
            self.rows.shrink_to(self.limits.max_rows);
        }
        self.bytes = 0;
        self.oldest_ms = None;
        drained
    }

    /// Drops the buffered rows for which `keep` is false (rows found to be
    /// stored already) and recomputes the byte count with `size`. The ack
    /// tokens stay: their messages are acked with the next insert, which is
    /// right because every row dropped here is already in the table.
    pub fn retain_rows(&mut self, mut keep: impl FnMut(&R) -> bool, size: impl Fn(&R) -> usize) {
        let mut groups = Vec::with_capacity(self.row_groups.len());
        let mut g = self.row_groups.iter();
        self.rows.retain(|r| {
            let group = g.next().copied().unwrap_or(0);
            let kept = keep(r);
            if kept {
                groups.push(group);
            }
            kept
        });
        self.row_groups = groups;
        self.bytes = self.rows.iter().map(size).fold(0, usize::saturating_add);
    }

    /// Ack tokens held (messages awaiting the next insert).
    pub fn acks(&self) -> &[A] {
        &self.acks
    }

    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    pub fn message_count(&self) -> usize {
        self.acks.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
}

#[cfg(test)]
mod tests;
