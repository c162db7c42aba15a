//! `spoor relays`: the relays of a region, the partitions each holds, their
//! lag and their last insert, read from the leases bucket the relays keep
//! (`spoor_core::contract::leases_bucket`) and from the partition
//! consumers' info. Read-only: it never writes a lease.

use std::collections::BTreeMap;

use async_nats::jetstream;
use futures_util::TryStreamExt;
use serde::Serialize;
use spoor_core::contract::{
    leases_bucket, partition_consumer, LeaseRecord, RelayRecord, LEASE_KEY_PREFIX, RELAY_KEY_PREFIX,
};

#[derive(Debug, thiserror::Error)]
pub enum RelaysError {
    #[error(
        "no leases bucket {bucket}: no relay has run on stream {stream} yet (or --stream is wrong)"
    )]
    NoBucket { bucket: String, stream: String },
    #[error("reading the leases bucket {bucket}: {detail}")]
    Read { bucket: String, detail: String },
}

/// One relay as it last reported itself.
#[derive(Debug, Clone, Serialize)]
pub struct RelayRow {
    #[serde(flatten)]
    pub record: RelayRecord,
    /// Frames waiting in its partitions' consumers (not yet delivered).
    pub lag: u64,
    /// Frames delivered to it and not yet acked.
    pub ack_pending: u64,
}

/// One partition: who holds its lease, and its consumer's backlog.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionRow {
    pub partition: u32,
    pub owner: Option<String>,
    pub pending: u64,
    pub ack_pending: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelaysReport {
    pub relays: Vec<RelayRow>,
    pub partitions: Vec<PartitionRow>,
}

impl RelaysReport {
    /// Partitions no live relay holds.
    pub fn unowned(&self) -> Vec<u32> {
        self.partitions
            .iter()
            .filter(|p| p.owner.is_none())
            .map(|p| p.partition)
            .collect()
    }
}

/// Reads the relays and partitions of `stream` (partitions `0..partitions`
/// consumed through `<consumer>-p<N>`).
pub async fn relays(
    client: &async_nats::Client,
    stream: &str,
    consumer: &str,
    partitions: u32,
) -> Result<RelaysReport, RelaysError> {
    let js = jetstream::new(client.clone());
    let bucket = leases_bucket(stream);
    let read = |detail: String| RelaysError::Read {
        bucket: bucket.clone(),
        detail,
    };
    let kv = js
        .get_key_value(&bucket)
        .await
        .map_err(|_| RelaysError::NoBucket {
            bucket: bucket.clone(),
            stream: stream.to_string(),
        })?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| read(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| read(e.to_string()))?;
    let mut owners = BTreeMap::new();
    let mut records = Vec::new();
    for key in keys {
        let Some(value) = kv.get(&key).await.map_err(|e| read(e.to_string()))? else {
            continue; // expired between the listing and the read
        };
        if let Some(p) = key.strip_prefix(LEASE_KEY_PREFIX) {
            if let (Ok(p), Ok(lease)) = (
                p.parse::<u32>(),
                serde_json::from_slice::<LeaseRecord>(&value),
            ) {
                owners.insert(p, lease.relay);
            }
        } else if key.starts_with(RELAY_KEY_PREFIX) {
            if let Ok(record) = serde_json::from_slice::<RelayRecord>(&value) {
                records.push(record);
            }
        }
    }
    let events = js
        .get_stream(stream)
        .await
        .map_err(|e| read(format!("stream {stream}: {e}")))?;
    let mut rows = Vec::new();
    for partition in 0..partitions {
        let (pending, ack_pending) = match events
            .consumer_info(partition_consumer(consumer, partition))
            .await
        {
            Ok(info) => (info.num_pending, info.num_ack_pending as u64),
            Err(_) => (0, 0),
        };
        rows.push(PartitionRow {
            partition,
            owner: owners.get(&partition).cloned(),
            pending,
            ack_pending,
        });
    }
    let mut relays: Vec<RelayRow> = records
        .into_iter()
        .map(|record| {
            let mine = rows
                .iter()
                .filter(|p| p.owner.as_deref() == Some(record.relay.as_str()));
            let (lag, ack_pending) =
                mine.fold((0, 0), |(l, a), p| (l + p.pending, a + p.ack_pending));
            RelayRow {
                record,
                lag,
                ack_pending,
            }
        })
        .collect();
    relays.sort_by(|a, b| a.record.relay.cmp(&b.record.relay));
    Ok(RelaysReport {
        relays,
        partitions: rows,
    })
}

/// The report as a table for a terminal; `now_ms` dates the last inserts.
pub fn render(report: &RelaysReport, now_ms: i64) -> String {
    let mut out = String::new();
    out.push_str("RELAY                              HOST              PARTITIONS        LAG  ACK_PENDING  LAST_INSERT      ROWS\n");
    for r in &report.relays {
        let partitions = compact(&r.record.partitions);
        let last = match r.record.last_insert_ms {
            Some(t) => format!("{:.1}s ago", (now_ms - t).max(0) as f64 / 1000.0),
            None => "never".to_string(),
        };
        out.push_str(&format!(
            "{:<34} {:<17} {:<16} {:>5}  {:>11}  {:<12} {:>8}\n",
            r.record.relay,
            r.record.host,
            partitions,
            r.lag,
            r.ack_pending,
            last,
            r.record.rows_inserted
        ));
    }
    let unowned = report.unowned();
    if unowned.is_empty() {
        out.push_str(&format!(
            "every one of {} partitions is held\n",
            report.partitions.len()
        ));
    } else {
        let lag: u64 = report
            .partitions
            .iter()
            .filter(|p| p.owner.is_none())
            .map(|p| p.pending)
            .sum();
        out.push_str(&format!(
            "unowned partitions: {} ({lag} frames waiting)\n",
            compact(&unowned)
        ));
    }
    out
}

/// `0-3,5,7-8` for [0,1,2,3,5,7,8].
fn compact(ps: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ps.len() {
        let start = ps[i];
        let mut end = start;
        while i + 1 < ps.len() && ps[i + 1] == end + 1 {
            i += 1;
            end = ps[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn partition_lists_are_compacted_into_ranges() {
        assert_eq!(compact(&[]), "-");
        assert_eq!(compact(&[3]), "3");
        assert_eq!(compact(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
    }
}
