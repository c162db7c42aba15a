//! The lease task: the KV side of partition ownership (see the module
//! above for the design). Every `ttl / 3` it rewrites this relay's presence
//! key, renews each lease it holds by compare-and-set, reads which
//! partitions are leased and how many relays are alive, and takes or hands
//! over partitions toward its share. It tells the pipeline through
//! [`Ownership`] messages; the pipeline tells it when a handed-over
//! partition is flushed, and only then is the key deleted.
//!
//! Every KV call is bounded by [`KV_TIMEOUT`], so an unreachable NATS only
//! lets the leases' validity run out (the fence stops inserts) and never
//! hangs the task.
//!
//! The task runs apart from the pipeline ([`run_apart`]): on a thread of its
//! own, with its own single-threaded runtime and its own NATS connection.
//! The pipeline's pullers decode and encode on the relay's runtime; on a
//! relay short of CPU (a container's quota, a busy host) renewals queued
//! behind that work, and their answers behind pulled frames on the shared
//! socket, long enough for the leases to lapse: partitions lost and taken
//! again, windows rebuilt, frames redelivered, each costing more CPU.
//! Apart, a renewal waits only for the scheduler.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, UpdateErrorKind};
use async_nats::jetstream::{self, stream::StorageType};
use futures_util::TryStreamExt;
use spoor_core::contract::{
    lease_key, leases_bucket, relay_key, LeaseRecord, RelayRecord, LEASE_KEY_PREFIX,
    RELAY_KEY_PREFIX,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{plan, Fence, Held, LeaseTiming, Ownership, Step, View};
use crate::internal_events::*;
use crate::metrics::Metrics;
use crate::source::nats::SourceError;
use crate::NatsEndpoint;

/// Longest any one KV request may take.
pub const KV_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a round follows one in which a KV request failed.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A relay instance id: unique per process start (pid and start time).
pub fn new_instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("relay-{}-{nanos:x}", std::process::id())
}

/// Opens the leases bucket of `stream`, creating it with `ttl` as its
/// `max_age` if it does not exist, and returns it with the TTL in force.
/// An existing bucket's `max_age` wins over `ttl`: every relay must fence
/// on the clock the server expires keys by.
pub async fn open_bucket(
    js: &jetstream::Context,
    stream: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<(kv::Store, Duration), SourceError> {
    let bucket = leases_bucket(stream);
    let lease_err = |detail: String| SourceError::Leases {
        bucket: bucket.clone(),
        detail,
    };
    let store = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "spoor-relay: partition leases and relay presence".into(),
                history: 1,
                max_age: ttl,
                storage: StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| lease_err(e.to_string()))?,
    };
    let status = store.status().await.map_err(|e| lease_err(e.to_string()))?;
    let in_force = status.info.config.max_age;
    if in_force.is_zero() {
        return Err(lease_err(
            "the bucket has no max_age, so leases would never expire".into(),
        ));
    }
    if in_force != ttl {
        tracing::warn!(
            bucket = %bucket,
            configured_ms = ttl.as_millis() as u64,
            in_force_ms = in_force.as_millis() as u64,
            "the leases bucket's max_age differs from --lease-ttl-secs; using the bucket's"
        );
    }
    Ok((store, in_force))
}

/// What the pipeline reports back to the presence record.
#[derive(Debug, Default)]
pub struct Progress {
    pub last_insert_ms: AtomicI64,
    pub rows_inserted: AtomicU64,
}

impl Progress {
    pub fn inserted(&self, rows: usize, at_ms: i64) {
        self.last_insert_ms.store(at_ms, Ordering::Relaxed);
        self.rows_inserted.fetch_add(rows as u64, Ordering::Relaxed);
    }
}

/// The lease task's state.
pub struct Leases {
    kv: kv::Store,
    instance: String,
    partitions: u32,
    timing: LeaseTiming,
    fence: Fence,
    releasing: BTreeSet<u32>,
    offset: u32,
    host: String,
    started_ms: i64,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
}

impl Leases {
    pub fn new(
        kv: kv::Store,
        instance: String,
        partitions: u32,
        timing: LeaseTiming,
        fence: Fence,
        progress: Arc<Progress>,
        metrics: Arc<Metrics>,
    ) -> Leases {
        let offset =
            (xxhash_rust::xxh3::xxh3_64(instance.as_bytes()) % u64::from(partitions.max(1))) as u32;
        Leases {
            kv,
            instance,
            partitions,
            timing,
            fence,
            releasing: BTreeSet::new(),
            offset,
            host: hostname(),
            started_ms: crate::debug::wall_ms(),
            progress,
            metrics,
        }
    }

    /// Runs until `stop`, then deletes this relay's leases and presence key
    /// so that the others take its partitions at once. `released` carries
    /// the partitions the pipeline has finished handing over.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<Ownership>,
        mut released: mpsc::Receiver<u32>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut next = Instant::now();
        loop {
            tokio::select! {
                () = crate::stopped(&mut stop) => break,
                Some(partition) = released.recv() => self.hand_over(partition).await,
                () = tokio::time::sleep_until(next) => {
                    // After a failed round, try again within a second: a
                    // NATS leader election takes seconds, and a lease
                    // renewed before its validity runs out is not lost.
                    let wait = if self.tick(&tx).await {
                        self.timing.renew_every()
                    } else {
                        self.timing.renew_every().min(RETRY_EVERY)
                    };
                    next = Instant::now() + wait;
                }
            }
        }
        for partition in self.fence.partitions() {
            self.hand_over(partition).await;
        }
        let _ = tokio::time::timeout(KV_TIMEOUT, self.kv.delete(relay_key(&self.instance))).await;
    }

    /// One round: presence, renewals, expiries, then rebalancing. Returns
    /// whether every KV request of the round was answered.
    pub async fn tick(&mut self, tx: &mpsc::Sender<Ownership>) -> bool {
        let mut answered = self.write_presence().await;
        answered &= self.renew(tx).await;
        let Some(view) = self.view().await else {
            return false;
        };
        for step in plan(&view, self.offset) {
            match step {
                Step::Acquire(partition) => self.acquire(partition, tx).await,
                Step::Release(partition) => {
                    self.releasing.insert(partition);
                    let _ = tx.send(Ownership::Release { partition }).await;
                }
            }
        }
        answered
    }

    async fn write_presence(&self) -> bool {
        let record = RelayRecord {
            relay: self.instance.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            updated_ms: crate::debug::wall_ms(),
            partitions: self.fence.partitions(),
            last_insert_ms: match self.progress.last_insert_ms.load(Ordering::Relaxed) {
                0 => None,
                t => Some(t),
            },
            rows_inserted: self.progress.rows_inserted.load(Ordering::Relaxed),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let put = self.kv.put(relay_key(&self.instance), value.into());
        match tokio::time::timeout(KV_TIMEOUT, put).await {
            Ok(Ok(_)) => return true,
            Ok(Err(e)) => LeaseOpFailed {
                op: "presence",
                error: &e,
            }
            .emit(&self.metrics),
            Err(_) => LeaseOpFailed {
                op: "presence",
                error: &"timed out",
            }
            .emit(&self.metrics),
        }
        false
    }

    fn lease_value(&self) -> bytes::Bytes {
        let record = LeaseRecord {
            relay: self.instance.clone(),
            acquired_ms: crate::debug::wall_ms(),
        };
        serde_json::to_vec(&record).unwrap_or_default().into()
    }

    /// Renews every lease held; one whose revision moved is lost at once,
    /// one whose validity ran out (renewals failing) is lost too.
    async fn renew(&mut self, tx: &mpsc::Sender<Ownership>) -> bool {
        let mut answered = true;
        // All at once: one slow answer must not hold the others past their
        // validity.
        let value = self.lease_value();
        let held: Vec<(u32, Held)> = self
            .fence
            .partitions()
            .into_iter()
            .filter_map(|p| self.fence.get(p).map(|h| (p, h)))
            .collect();
        let sent_at = Instant::now();
        let renewals = held.iter().map(|&(partition, h)| {
            let update = self
                .kv
                .update(lease_key(partition), value.clone(), h.revision);
            tokio::time::timeout(KV_TIMEOUT, update)
        });
        let results = futures_util::future::join_all(renewals).await;
        for (&(partition, held), result) in held.iter().zip(results) {
            match result {
                Ok(Ok(revision)) => self.fence.set(
                    partition,
                    Held {
                        revision,
                        valid_until: self.timing.valid_until(sent_at),
                        ..held
                    },
                ),
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    self.lose(partition, held.epoch, "taken", tx).await;
                }
                Ok(Err(e)) => {
                    answered = false;
                    LeaseOpFailed {
                        op: "renew",
                        error: &e,
                    }
                    .emit(&self.metrics)
                }
                Err(_) => {
                    answered = false;
                    LeaseOpFailed {
                        op: "renew",
                        error: &"timed out",
                    }
                    .emit(&self.metrics)
                }
            }
        }
        let now = Instant::now();
        for partition in self.fence.partitions() {
            if let Some(held) = self.fence.get(partition) {
                if held.valid_until <= now {
                    self.lose(partition, held.epoch, "expired", tx).await;
                }
            }
        }
        answered
    }

    async fn lose(
        &mut self,
        partition: u32,
        epoch: u64,
        why: &'static str,
        tx: &mpsc::Sender<Ownership>,
    ) {
        self.fence.remove(partition);
        self.releasing.remove(&partition);
        LeaseLost {
            partition,
            epoch,
            why,
            owned: self.fence.partitions().len(),
        }
        .emit(&self.metrics);
        let _ = tx.send(Ownership::Lost { partition }).await;
    }

    /// Which partitions are leased and how many relays are alive.
    async fn view(&self) -> Option<View> {
        let listed = async {
            let keys: Vec<String> = self.kv.keys().await?.try_collect().await?;
            Ok::<_, async_nats::Error>(keys)
        };
        let keys = match tokio::time::timeout(KV_TIMEOUT, listed).await {
            Ok(Ok(keys)) => keys,
            Ok(Err(e)) => {
                LeaseOpFailed {
                    op: "list",
                    error: &e,
                }
                .emit(&self.metrics);
                return None;
            }
            Err(_) => {
                LeaseOpFailed {
                    op: "list",
                    error: &"timed out",
                }
                .emit(&self.metrics);
                return None;
            }
        };
        let mut view = View {
            partitions: self.partitions,
            relays: 0,
            leased: BTreeSet::new(),
            mine: self.fence.partitions().into_iter().collect(),
            releasing: self.releasing.clone(),
        };
        let mut me_listed = false;
        for key in keys {
            if let Some(p) = key.strip_prefix(LEASE_KEY_PREFIX) {
                if let Ok(p) = p.parse::<u32>() {
                    view.leased.insert(p);
                }
            } else if let Some(relay) = key.strip_prefix(RELAY_KEY_PREFIX) {
                view.relays += 1;
                me_listed |= relay == self.instance;
            }
        }
        if !me_listed {
            view.relays += 1;
        }
        view.leased.extend(view.mine.iter().copied());
        Some(view)
    }

    async fn acquire(&mut self, partition: u32, tx: &mpsc::Sender<Ownership>) {
        let sent_at = Instant::now();
        let create = self.kv.create(lease_key(partition), self.lease_value());
        match tokio::time::timeout(KV_TIMEOUT, create).await {
            Ok(Ok(revision)) => {
                self.fence.set(
                    partition,
                    Held {
                        epoch: revision,
                        revision,
                        valid_until: self.timing.valid_until(sent_at),
                    },
                );
                PartitionAcquired {
                    partition,
                    epoch: revision,
                    owned: self.fence.partitions().len(),
                }
                .emit(&self.metrics);
                let _ = tx
                    .send(Ownership::Acquired {
                        partition,
                        epoch: revision,
                    })
                    .await;
            }
            // Another relay created it first: not a failure.
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Ok(Err(e)) => LeaseOpFailed {
                op: "acquire",
                error: &e,
            }
            .emit(&self.metrics),
            Err(_) => LeaseOpFailed {
                op: "acquire",
                error: &"timed out",
            }
            .emit(&self.metrics),
        }
    }

    /// Deletes the lease of a partition the pipeline has flushed, if this
    /// relay still holds it (under the same revision).
    async fn hand_over(&mut self, partition: u32) {
        self.releasing.remove(&partition);
        let Some(held) = self.fence.remove(partition) else {
            return;
        };
        let delete = self
            .kv
            .delete_expect_revision(lease_key(partition), Some(held.revision));
        match tokio::time::timeout(KV_TIMEOUT, delete).await {
            Ok(Ok(())) => {}
            // The key then expires on its own within the TTL.
            Ok(Err(e)) => LeaseOpFailed {
                op: "release",
                error: &e,
            }
            .emit(&self.metrics),
            Err(_) => LeaseOpFailed {
                op: "release",
                error: &"timed out",
            }
            .emit(&self.metrics),
        }
        PartitionReleased {
            partition,
            owned: self.fence.partitions().len(),
        }
        .emit(&self.metrics);
    }
}

/// Runs the lease task apart from the caller's runtime: on a thread of its
/// own (`spoor-leases`), with a single-threaded runtime and a NATS
/// connection of its own to `nats`, through which it opens `bucket`
/// (created beforehand by [`open_bucket`]) and hands the store to `make`.
///
/// The returned future, spawned on the caller's runtime, resolves when the
/// task has ended: after `stop`, or with the error that kept it from
/// starting (the connection or the bucket). A panic on the thread is
/// resumed there, for the supervisor to see. Dropping the future (a
/// supervisor aborting its tasks) ends the thread's work at its next await.
pub fn run_apart(
    nats: NatsEndpoint,
    bucket: String,
    make: impl FnOnce(kv::Store) -> Leases + Send + 'static,
    tx: mpsc::Sender<Ownership>,
    released: mpsc::Receiver<u32>,
    mut stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = Result<(), SourceError>> + Send + 'static {
    type Outcome = std::thread::Result<Result<(), SourceError>>;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Outcome>();
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let named = bucket.clone();
    let leases_bucket_name = bucket.clone();
    let failed = move |detail: String| SourceError::Leases {
        bucket: named,
        detail,
    };
    let work = async move {
        let client = tokio::select! {
            () = crate::stopped(&mut stop) => return Ok(()),
            client = nats.connect("spoor-relay-leases", None) => client?,
        };
        let js = jetstream::new(client.clone());
        let store = tokio::select! {
            () = crate::stopped(&mut stop) => return Ok(()),
            store = js.get_key_value(&bucket) => {
                store.map_err(|e| SourceError::Leases { bucket: bucket.clone(), detail: e.to_string() })?
            }
        };
        make(store).run(tx, released, stop).await;
        let _ = tokio::time::timeout(KV_TIMEOUT, client.flush()).await;
        Ok(())
    };
    let spawned = std::thread::Builder::new()
        .name("spoor-leases".into())
        .spawn(move || {
            let outcome: Outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| failed(format!("cannot start the lease thread's runtime: {e}")))?;
                runtime.block_on(async move {
                    tokio::select! {
                        result = work => result,
                        // The caller dropped its future: stop here.
                        _ = cancel_rx => Ok(()),
                    }
                })
            }));
            let _ = done_tx.send(outcome);
        });
    let spawned = spawned.map_err(|e| SourceError::Leases {
        bucket: leases_bucket_name,
        detail: format!("cannot start the lease thread: {e}"),
    });
    async move {
        let _cancel_on_drop = cancel_tx;
        spawned?;
        match done_rx.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The thread ended without a word: only a panic does that.
            Err(_) => panic!("the lease thread ended without reporting"),
        }
    }
}

/// The machine's host name, for `spoor relays` (empty if unknown).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}
