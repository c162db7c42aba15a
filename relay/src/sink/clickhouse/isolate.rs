//! Inserting a buffer whose rows ClickHouse may refuse: the refused rows
//! are found by bisection and handed back, every other row is inserted.
//!
//! The buffer goes in as one insert, as always. If the server refuses it
//! for what some rows hold ([`Cause::Rows`]), the rows are split in halves
//! and each half is inserted on its own, recursively, until a refused part
//! is a single row: that row is the caller's to dead-letter, with the
//! server's text. A block refused as too wide ([`Cause::BlockTooWide`]) is
//! split the same way (its rows are fine in smaller blocks). An outage at
//! any step ends the isolation with the error: the caller retries the whole
//! buffer later, after asking which rows are stored (some halves may be).
//!
//! Cost: a half holding no refused row goes in with one insert, so a buffer
//! of `n` rows with `k` refused ones takes at most `1 + 2·k·⌈log2 n⌉`
//! inserts; with none refused, exactly one.
//!
//! A refused insert may still have stored rows: ClickHouse writes `events`
//! before its materialized views, so a view that throws leaves the rows in
//! the table. After each refusal the part's rows are looked up
//! ([`ClickHouseSink::stored_ids`]) and the stored ones are not inserted
//! again; a single refused row found stored counts as inserted.
//!
//! Bisection stops starting inserts after `budget` (a share of `ack_wait`,
//! so progress acks are not held off past JetStream's redelivery): it then
//! fails with [`SinkError::IsolationOutOfTime`], and the caller's retry asks
//! ClickHouse which rows went in and bisects only the rest.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::encoded::EncodedRow;
use super::failure::{classify, Cause};
use super::{ClickHouseSink, SinkError};

/// A row the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its index in the rows handed to [`ClickHouseSink::insert_isolating`].
    pub index: usize,
    /// The server's exception text.
    pub error: String,
}

/// What an isolating insert did: every row not in `rejected` is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolated {
    /// Refused rows, in row order.
    pub rejected: Vec<Rejected>,
    /// INSERT statements sent (1 when nothing was refused).
    pub inserts: u32,
    /// Presence queries made after refusals.
    pub presence_checks: u32,
}

/// How the bisection reaches the server; the sink's own implementation is
/// [`SinkTarget`], tests drive it with a table in memory.
pub(crate) trait Target {
    /// Inserts the rows at `indices`; on failure, why and the error.
    async fn insert(&mut self, indices: &[usize]) -> Result<(), (Cause, SinkError)>;
    /// Which of the rows at `indices` are stored.
    async fn stored(&mut self, indices: &[usize]) -> Result<HashSet<usize>, SinkError>;
}

/// The bisection over `n` rows (see the module docs).
pub(crate) async fn isolate<T: Target>(
    target: &mut T,
    n: usize,
    deadline: Instant,
) -> Result<Isolated, SinkError> {
    let mut done = Isolated::default();
    if n == 0 {
        return Ok(done);
    }
    // Parts still to insert; the first half is popped (inserted) first.
    let mut parts: Vec<Vec<usize>> = vec![(0..n).collect()];
    while let Some(part) = parts.pop() {
        if done.inserts > 0 && Instant::now() >= deadline {
            return Err(SinkError::IsolationOutOfTime {
                rejected: done.rejected.len(),
                inserts: done.inserts,
            });
        }
        done.inserts += 1;
        let (cause, error) = match target.insert(&part).await {
            Ok(()) => continue,
            Err((Cause::Outage, error)) => return Err(error),
            Err(failed) => failed,
        };
        let part = if cause == Cause::Rows {
            done.presence_checks += 1;
            let stored = target.stored(&part).await?;
            part.into_iter().filter(|i| !stored.contains(i)).collect()
        } else {
            part
        };
        match part.len() {
            0 => {}
            1 => done.rejected.push(Rejected {
                index: part[0],
                error: server_text(&error),
            }),
            len => {
                let (first, second) = part.split_at(len / 2);
                parts.push(second.to_vec());
                parts.push(first.to_vec());
            }
        }
    }
    done.rejected.sort_by_key(|r| r.index);
    Ok(done)
}

/// The server's own words, without the crate's "bad response: " prefix.
fn server_text(error: &SinkError) -> String {
    match error {
        SinkError::Insert(clickhouse::error::Error::BadResponse(text)) => text.clone(),
        other => other.to_string(),
    }
}

/// The bisection's way to ClickHouse: the sink and the buffer's rows.
pub(crate) struct SinkTarget<'a> {
    pub sink: &'a ClickHouseSink,
    pub rows: &'a [EncodedRow],
}

impl Target for SinkTarget<'_> {
    async fn insert(&mut self, indices: &[usize]) -> Result<(), (Cause, SinkError)> {
        let rows = self.rows;
        match self
            .sink
            .insert_encoded(indices.iter().map(|&i| &rows[i]))
            .await
        {
            Ok(()) => Ok(()),
            Err(SinkError::Insert(e)) => Err((classify(&e), SinkError::Insert(e))),
            Err(other) => Err((Cause::Outage, other)),
        }
    }

    async fn stored(&mut self, indices: &[usize]) -> Result<HashSet<usize>, SinkError> {
        // project -> (days, ids), as the presence check asks.
        let mut asked: BTreeMap<&str, (BTreeSet<u16>, Vec<uuid::Uuid>)> = BTreeMap::new();
        for &i in indices {
            let row = &self.rows[i];
            let entry = asked.entry(&**row.project_id()).or_default();
            entry.0.insert(row.event_date);
            entry.1.push(row.event_id);
        }
        let mut stored_ids = HashSet::new();
        for (project, (days, ids)) in &asked {
            stored_ids.extend(self.sink.stored_ids(project, days, ids).await?);
        }
        Ok(indices
            .iter()
            .copied()
            .filter(|&i| stored_ids.contains(&self.rows[i].event_id))
            .collect())
    }
}

impl ClickHouseSink {
    /// Inserts `rows`, isolating the rows ClickHouse refuses for what they
    /// hold (see the module docs). `Ok` means every row not listed in
    /// [`Isolated::rejected`] is stored; `Err` means an outage (or the
    /// time budget) stopped it, and some rows may be stored.
    pub async fn insert_isolating(&self, rows: &[EncodedRow]) -> Result<Isolated, SinkError> {
        let mut target = SinkTarget { sink: self, rows };
        isolate(
            &mut target,
            rows.len(),
            Instant::now() + self.isolation_budget,
        )
        .await
    }

    /// How long bisection may go on starting inserts.
    pub fn isolation_budget(&self) -> Duration {
        self.isolation_budget
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::{isolate, Cause, Rejected, SinkError, Target};
    use tokio::time::{Duration, Instant};

    /// A table in memory: refuses any insert holding a poisoned row (and,
    /// with `write_before_refusing`, stores the rows first, as a throwing
    /// materialized view does), refuses blocks over `max_partitions`, and
    /// fails with an outage after `outage_after` inserts.
    #[derive(Default)]
    struct Table {
        poisoned: HashSet<usize>,
        write_before_refusing: bool,
        partition_of: Option<fn(usize) -> usize>,
        max_partitions: usize,
        outage_after: Option<u32>,
        stored: HashMap<usize, u32>,
        inserts: u32,
    }

    fn refused(text: &str) -> SinkError {
        SinkError::Insert(clickhouse::error::Error::BadResponse(text.into()))
    }

    impl Target for Table {
        async fn insert(&mut self, indices: &[usize]) -> Result<(), (Cause, SinkError)> {
            self.inserts += 1;
            if self.outage_after.is_some_and(|n| self.inserts > n) {
                return Err((Cause::Outage, SinkError::PresenceTimeout));
            }
            if let Some(partition_of) = self.partition_of {
                let partitions: HashSet<usize> = indices.iter().map(|&i| partition_of(i)).collect();
                if partitions.len() > self.max_partitions {
                    return Err((
                        Cause::BlockTooWide,
                        refused("Code: 252. too many partitions"),
                    ));
                }
            }
            let poisoned = indices.iter().find(|i| self.poisoned.contains(i));
            if let Some(i) = poisoned {
                if self.write_before_refusing {
                    for &j in indices {
                        *self.stored.entry(j).or_default() += 1;
                    }
                }
                return Err((
                    Cause::Rows,
                    refused(&format!("Code: 469. row {i} violates c")),
                ));
            }
            for &j in indices {
                *self.stored.entry(j).or_default() += 1;
            }
            Ok(())
        }

        async fn stored(&mut self, indices: &[usize]) -> Result<HashSet<usize>, SinkError> {
            Ok(indices
                .iter()
                .copied()
                .filter(|i| self.stored.contains_key(i))
                .collect())
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn log2_ceil(n: usize) -> u32 {
        usize::BITS - (n.max(1) - 1).leading_zeros()
    }

    #[tokio::test]
    async fn without_refusals_it_is_one_insert() {
        let mut t = Table::default();
        let done = isolate(&mut t, 1000, later()).await.unwrap();
        assert_eq!((done.inserts, done.rejected.len()), (1, 0));
        assert!((0..1000).all(|i| t.stored[&i] == 1));
    }

    #[tokio::test]
    async fn refused_rows_are_found_and_every_other_row_stored_once() {
        for (n, poisoned) in [
            (1usize, vec![0usize]),
            (2, vec![1]),
            (7, vec![0, 6]),
            (1000, vec![0]),
            (1000, vec![999]),
            (1000, vec![3, 4, 500, 998]),
            (4096, vec![17]),
        ] {
            let mut t = Table {
                poisoned: poisoned.iter().copied().collect(),
                ..Table::default()
            };
            let done = isolate(&mut t, n, later()).await.unwrap();
            let got: Vec<usize> = done.rejected.iter().map(|r| r.index).collect();
            assert_eq!(got, poisoned, "n={n}");
            for r in &done.rejected {
                assert_eq!(r.error, format!("Code: 469. row {} violates c", r.index));
            }
            for i in 0..n {
                let expected = u32::from(!poisoned.contains(&i));
                assert_eq!(t.stored.get(&i).copied().unwrap_or(0), expected, "row {i}");
            }
            let k = poisoned.len() as u32;
            assert!(
                done.inserts <= 1 + 2 * k * log2_ceil(n),
                "n={n} k={k}: {} inserts",
                done.inserts
            );
        }
    }

    #[tokio::test]
    async fn rows_a_refusing_insert_stored_anyway_are_not_inserted_again() {
        let mut t = Table {
            poisoned: [5].into(),
            write_before_refusing: true,
            ..Table::default()
        };
        let done = isolate(&mut t, 64, later()).await.unwrap();
        // Everything went in with the first insert; nothing is left to refuse.
        assert_eq!(done.rejected, Vec::<Rejected>::new());
        assert_eq!(done.inserts, 1);
        assert!((0..64).all(|i| t.stored[&i] == 1));
    }

    #[tokio::test]
    async fn a_block_too_wide_is_split_and_nothing_is_refused() {
        let mut t = Table {
            partition_of: Some(|i| i % 40),
            max_partitions: 10,
            ..Table::default()
        };
        let done = isolate(&mut t, 400, later()).await.unwrap();
        assert!(done.rejected.is_empty());
        assert!((0..400).all(|i| t.stored[&i] == 1));
        assert_eq!(done.presence_checks, 0);
    }

    #[tokio::test]
    async fn an_outage_midway_is_an_error() {
        let mut t = Table {
            poisoned: [10].into(),
            outage_after: Some(3),
            ..Table::default()
        };
        let err = isolate(&mut t, 100, later()).await.unwrap_err();
        assert!(matches!(err, SinkError::PresenceTimeout), "{err}");
    }

    #[tokio::test]
    async fn past_the_budget_it_stops_starting_inserts() {
        let mut t = Table {
            poisoned: [1, 50].into(),
            ..Table::default()
        };
        let err = isolate(&mut t, 100, Instant::now()).await.unwrap_err();
        assert!(
            matches!(err, SinkError::IsolationOutOfTime { inserts: 1, .. }),
            "{err}"
        );
        assert_eq!(t.inserts, 1);
    }
}
