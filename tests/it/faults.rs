//! The fault-injection suite: the whole pipeline on real parts (the edge's
//! WASM build in workerd, nats-server with JetStream, `spoor-relay`
//! processes, clickhouse-server), loaded by spoor-loadtest while something
//! breaks. After every scenario the books must balance exactly:
//!
//! - the loadtest's own verification: ClickHouse holds every valid event of
//!   every acknowledged request, nothing else, each once (it counts again
//!   after a settle delay to catch late duplicates);
//! - `count()` = `uniqExact(event_id)` = the unique valid events sent,
//!   without FINAL (so the ReplacingMergeTree backstop is not what makes it
//!   true);
//! - `spoor reconcile` over the scenario's window, with the stream as the
//!   ledger: accepted = inserted + deduped (+ dead-lettered frames), no id
//!   missing, none stored twice.
//!
//! Each scenario has its own nats-server (or three-node cluster), edge and
//! database; the ClickHouse outage scenario has its own clickhouse-server
//! too. The cluster scenarios and the scaling one also check that every
//! rollup counts what the raw table holds.

use crate::support::nats_endpoint;
use spoor_tests::nats::NatsRole;
use std::time::{Duration, Instant};

use serde_json::json;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::metrics;
use spoor_tests::nats::NatsServer;
use spoor_tests::nats_cluster::NatsCluster;
use spoor_tests::relay::{RelayProcess, RelayProcessConfig};

use crate::support::sample_value;

const WRITE_KEY: &str = "wk_faults";
const STREAM: &str = spoor_core::contract::DEFAULT_EVENTS_STREAM;
const PROJECT: &str = "faults";

/// The ClickHouse a scenario uses: the shared server, or its own (to stop it).
enum Ch {
    Shared(&'static ClickHouseServer),
    Own(ClickHouseServer),
}

impl std::ops::Deref for Ch {
    type Target = ClickHouseServer;
    fn deref(&self) -> &ClickHouseServer {
        match self {
            Ch::Shared(s) => s,
            Ch::Own(s) => s,
        }
    }
}

/// The NATS a scenario uses: one server, or a three-node cluster with R3
/// streams.
enum Nats {
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Nats {
    /// The single server (the scenarios that stop it).
    fn single(&self) -> &NatsServer {
        match self {
            Nats::Single(s) => s,
            Nats::Cluster(_) => panic!("this scenario runs on a single nats-server"),
        }
    }

    fn cluster(&self) -> &NatsCluster {
        match self {
            Nats::Cluster(c) => c,
            Nats::Single(_) => panic!("this scenario runs on a nats cluster"),
        }
    }

    /// What `--nats-url` takes: the server, or every node of the cluster.
    fn url(&self) -> String {
        match self {
            Nats::Single(s) => s.url(),
            Nats::Cluster(c) => c.url(),
        }
    }

    fn ca_pem_path(&self) -> std::path::PathBuf {
        match self {
            Nats::Single(s) => s.ca_pem_path().to_path_buf(),
            Nats::Cluster(c) => c.ca_pem_path().to_path_buf(),
        }
    }

    fn seed(&self, role: NatsRole) -> String {
        match self {
            Nats::Single(s) => s.seed(role),
            Nats::Cluster(c) => c.seed(role),
        }
    }

    fn seed_path(&self, role: NatsRole) -> std::path::PathBuf {
        match self {
            Nats::Single(s) => s.seed_path(role),
            Nats::Cluster(c) => c.seed_path(role),
        }
    }

    fn endpoint(&self, role: NatsRole) -> spoor_runtime::NatsEndpoint {
        match self {
            Nats::Single(s) => nats_endpoint(s, role),
            Nats::Cluster(_) => spoor_runtime::NatsEndpoint::new(self.url())
                .with_ca(self.ca_pem_path())
                .with_nkey_seed(self.seed(role)),
        }
    }

    async fn connect(&self, role: NatsRole) -> async_nats::Client {
        match self {
            Nats::Single(s) => s.connect(role).await.unwrap(),
            Nats::Cluster(c) => c.connect(role).await.unwrap(),
        }
    }
}

/// One scenario's pipeline.
struct Stack {
    nats: Nats,
    /// With a cluster: the node the edge publishes to.
    edge_node: Option<usize>,
    ch: Ch,
    db: String,
    edge: Edge,
    relays: Vec<RelayProcess>,
    /// How the stack's relays are started, for [`Stack::add_relay`].
    relay_config: RelayProcessConfig,
    started: time::OffsetDateTime,
}

/// How a scenario's pipeline differs from the default one.
#[derive(Default)]
struct Setup<'a> {
    /// Its own clickhouse-server (to stop it) instead of the shared one.
    own_clickhouse: bool,
    /// Relay processes (at least one).
    relays: usize,
    /// Extra `spoor-relay run` flags.
    relay_args: &'a [&'a str],
    /// The edge under `wrangler dev` (which runs the spill queue) instead of
    /// plain workerd.
    wrangler: bool,
    /// Extra edge vars.
    edge_vars: &'a [(&'a str, &'a str)],
    /// A three-node NATS cluster with R3 streams (`--stream-replicas 3`,
    /// relays given every node) instead of one server; the edge publishes
    /// to a node that does not lead the events stream at the start.
    cluster: bool,
}

impl Stack {
    /// nats-server, the edge, and relay processes with short timings (flush
    /// every 200 ms, redelivery after 6 s) so crashes recover within the
    /// test's time. The edge's rate limit is off unless `edge_vars` set it.
    fn start(name: &str, setup: Setup<'_>) -> Stack {
        let Setup {
            own_clickhouse,
            relays,
            relay_args,
            wrangler,
            edge_vars,
            cluster,
        } = setup;
        let started = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
        let nats = if cluster {
            Nats::Cluster(NatsCluster::start().unwrap())
        } else {
            Nats::Single(Box::new(NatsServer::start().unwrap()))
        };
        let ch = if own_clickhouse {
            Ch::Own(ClickHouseServer::start().unwrap())
        } else {
            Ch::Shared(ClickHouseServer::shared())
        };
        let db = ch.fresh_database(name);
        let mut args: Vec<String> = [
            "--flush-interval-ms",
            "200",
            "--ack-wait-secs",
            "6",
            "--drain-timeout-secs",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if cluster {
            args.extend(["--stream-replicas".to_string(), "3".to_string()]);
        }
        args.extend(relay_args.iter().map(|s| s.to_string()));
        let config = RelayProcessConfig {
            nats_url: nats.url(),
            nats_ca: Some(nats.ca_pem_path()),
            nats_nkey_file: Some(nats.seed_path(NatsRole::Relay)),
            clickhouse_url: ch.http_url(),
            database: db.clone(),
            projects: vec![PROJECT.to_string()],
            args,
        };
        // The first relay creates the stream the edge publishes to.
        let relays = (0..relays.max(1))
            .map(|_| RelayProcess::start(config.clone()).unwrap())
            .collect();
        let relay_config = config;
        let (edge_base, edge_node) = match &nats {
            Nats::Single(s) => (EdgeConfig::for_nats(s), None),
            Nats::Cluster(c) => {
                let leader = tokio::runtime::Handle::current()
                    .block_on(c.wait_stream_current(STREAM, 3, Duration::from_secs(60)))
                    .unwrap();
                let node = (leader + 1) % c.nodes().len();
                (EdgeConfig::for_cluster_node(c, node), Some(node))
            }
        };
        let mut edge_config = edge_base
            .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
            .var("REGION", "fault-region")
            .var("PARTITIONS", "8")
            .var("RATE_LIMIT_EVENTS_PER_SEC", "0");
        for (k, v) in edge_vars {
            edge_config = edge_config.var(*k, *v);
        }
        let edge = if wrangler {
            Edge::start_wrangler(&edge_config)
        } else {
            Edge::start(&edge_config)
        }
        .unwrap();
        Stack {
            nats,
            edge_node,
            ch,
            db,
            edge,
            relays,
            relay_config,
            started,
        }
    }

    /// Starts one more relay, like the stack's others, while the stack
    /// runs; it is `relays[relays.len() - 1]` from then on.
    fn add_relay(&mut self) -> &RelayProcess {
        let relay = RelayProcess::start(self.relay_config.clone()).unwrap();
        self.relays.push(relay);
        self.relays.last().unwrap()
    }

    /// Load options: `events` unique events at `rate` events/s.
    fn load(&self, events: usize, rate: f64, seed: u64) -> spoor_loadtest::RunOptions {
        let mut opts = spoor_loadtest::RunOptions {
            edge_url: self.edge.url(),
            write_key: WRITE_KEY.into(),
            project: PROJECT.into(),
            concurrency: 4,
            rate,
            clickhouse_url: Some(self.ch.http_url()),
            clickhouse_db: self.db.clone(),
            verify_timeout_secs: 240,
            settle_ms: 2_000,
            max_retries: 8,
            ..Default::default()
        };
        opts.traffic.events = events;
        opts.traffic.users = 300;
        opts.traffic.seed = seed;
        opts
    }

    fn query(&self, sql: &str) -> String {
        self.ch
            .query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"))
    }

    /// A counter of the edge's `/metrics`, summed over its labels (one
    /// isolate serves every request locally, so its counters are the totals).
    fn edge_metric(&self, name: &str) -> f64 {
        metrics::sum(&metrics::fetch(&self.edge.url()).unwrap(), name)
    }

    /// Sums one metric sample over every relay.
    fn relay_sum(&self, sample: &str) -> f64 {
        self.relays
            .iter()
            .map(|r| sample_value(&r.metrics().unwrap_or_default(), sample))
            .sum()
    }

    /// The exactness checks every scenario ends with. `extra` counts valid,
    /// unique events the test sent by hand besides the loadtest's;
    /// `dead_frames` the frames that must have been dead-lettered.
    async fn assert_exact(
        &self,
        summary: &spoor_loadtest::Summary,
        extra: usize,
        dead_frames: u64,
    ) -> spoor_cli::ReconcileReport {
        let logs = || {
            self.relays
                .iter()
                .map(|r| r.log_tail(30))
                .collect::<Vec<_>>()
                .join("\n---\n")
        };
        assert!(
            summary.ok,
            "loadtest found mismatches: {:#?}\nrelay logs:\n{}",
            summary.mismatches,
            logs()
        );
        let expected = (summary.unique_valid + extra) as u64;
        let row = blocking(|| {
            self.query(&format!(
                "SELECT count(), uniqExact(event_id) FROM {}.events WHERE project_id = '{PROJECT}' FORMAT TSV",
                self.db
            ))
        });
        let nums: Vec<u64> = row.split_whitespace().map(|n| n.parse().unwrap()).collect();
        assert_eq!(
            nums,
            vec![expected; 2],
            "count() and uniqExact(event_id) must equal the unique valid events sent"
        );

        let mut opts = spoor_cli::ReconcileOptions::new(
            self.nats.endpoint(NatsRole::Ops),
            spoor_cli::ClickHouseOptions {
                url: self.ch.http_url(),
                database: self.db.clone(),
                user: None,
                password: None,
            },
            self.started,
        );
        opts.project = Some(PROJECT.into());
        let report = spoor_cli::reconcile(&opts).await.unwrap();
        assert!(
            report.is_exact(),
            "reconcile found gaps:\n{}",
            report.render(20)
        );
        assert_eq!(report.inserted, expected, "{}", report.render(5));
        assert_eq!(report.stored_rows, expected, "{}", report.render(5));
        assert_eq!(
            report.accepted_events,
            report.inserted + report.deduped,
            "{}",
            report.render(5)
        );
        assert_eq!(
            report.dead_lettered_frames,
            dead_frames,
            "{}",
            report.render(5)
        );
        report
    }
}

impl Stack {
    /// Every rollup (minute, hour, day) counts, per event name, exactly the
    /// rows and the users the raw table holds for the scenario's project.
    fn assert_rollups_match_raw(&self) {
        let raw = self.query(&format!(
            "SELECT event, count(), uniqExact(if(user_id != '', user_id, anonymous_id)) \
             FROM {}.events WHERE project_id = '{PROJECT}' GROUP BY event ORDER BY event FORMAT TSV",
            self.db
        ));
        assert!(!raw.trim().is_empty(), "no raw rows to compare with");
        for table in spoor_store::schema::ROLLUP_TABLES {
            let rollup = self.query(&format!(
                "SELECT event, countMerge(events), uniqExactMerge(users) \
                 FROM {}.{table} WHERE project_id = '{PROJECT}' GROUP BY event ORDER BY event FORMAT TSV",
                self.db
            ));
            assert_eq!(rollup, raw, "{table} against events (event, rows, users)");
        }
    }

    /// The node leading the events stream, made to be another than the
    /// edge's: a leader on the edge's node is asked to step down first.
    async fn stream_leader_off_the_edge(&self) -> usize {
        let cluster = self.nats.cluster();
        for _ in 0..5 {
            let leader = cluster
                .wait_stream_current(STREAM, 3, Duration::from_secs(60))
                .await
                .unwrap();
            if Some(leader) != self.edge_node {
                return leader;
            }
            cluster.step_down(STREAM).await.unwrap();
            sleep_secs(1.0).await;
        }
        panic!("the events stream keeps its leader on the edge's node");
    }

    /// Waits until the events stream has a leader on a running node while
    /// `down` is down, and returns it.
    async fn failover_leader(&self, down: usize) -> usize {
        let leader = self
            .nats
            .cluster()
            .wait_stream_current(STREAM, 2, Duration::from_secs(60))
            .await
            .unwrap();
        assert_ne!(leader, down, "the stopped node still leads the stream");
        leader
    }
}

/// POSTs a JSON body with the scenario's write key: (status, body,
/// Retry-After).
fn post(url: &str, body: &str) -> (u16, String, Option<String>) {
    match ureq::post(url)
        .set("Content-Type", "application/json")
        .set("X-Spoor-Write-Key", WRITE_KEY)
        .timeout(Duration::from_secs(20))
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap(), None),
        Err(ureq::Error::Status(code, r)) => {
            let retry_after = r.header("Retry-After").map(str::to_string);
            (code, r.into_string().unwrap_or_default(), retry_after)
        }
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// Sums every sample of the metric `name`, whatever its labels.
/// Runs the load in a task so the test can break things meanwhile.
fn spawn_load(
    opts: spoor_loadtest::RunOptions,
) -> tokio::task::JoinHandle<spoor_loadtest::Summary> {
    tokio::spawn(async move { spoor_loadtest::run(&opts).await.unwrap() })
}

async fn sleep_secs(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// (a) The SDK resends 20% of its batches (same event ids; the loadtest
/// sends them verbatim, later in the run), with 1% invalid events mixed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sdk_resends_a_fifth_of_its_batches() {
    let stack = blocking(|| {
        Stack::start(
            "fault_resend",
            Setup {
                relays: 2,
                ..Default::default()
            },
        )
    });
    let mut opts = stack.load(12_000, 0.0, 11);
    opts.traffic.resend_ratio = 0.2;
    opts.traffic.invalid_ratio = 0.01;
    let summary = spoor_loadtest::run(&opts).await.unwrap();
    assert!(summary.resends >= 40, "only {} resends", summary.resends);
    stack.assert_exact(&summary, 0, 0).await;
    blocking(|| {
        let received = stack.relay_sum("spoor_relay_events_received_total");
        let deduped = stack.relay_sum("spoor_relay_events_deduped_total");
        let inserted = stack.relay_sum("spoor_relay_rows_inserted_total");
        assert_eq!(inserted as usize, summary.unique_valid);
        assert_eq!(received - deduped, inserted, "relay books");
    });
}

/// (b) Two relays share the work; one is killed with SIGKILL three times
/// under load and restarted. Its unacked frames go to the survivor (or to
/// its next life) after ack_wait; rows it had inserted before dying are
/// found in ClickHouse and not inserted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_relay_killed_three_times_under_load() {
    let stack = blocking(|| {
        Stack::start(
            "fault_kill",
            Setup {
                relays: 2,
                ..Default::default()
            },
        )
    });
    let load = spawn_load(stack.load(24_000, 1_200.0, 12));
    let victim = &stack.relays[0];
    for round in 0..3 {
        sleep_secs(4.0).await;
        blocking(|| victim.kill9());
        eprintln!("kill -9 round {round}");
        sleep_secs(1.0).await;
        blocking(|| victim.restart()).unwrap();
    }
    let summary = load.await.unwrap();
    stack.assert_exact(&summary, 0, 0).await;
}

/// (c) ClickHouse is stopped for 60 s under load. The relays keep their
/// buffers within bounds (two batches: the one whose insert fails and the
/// one behind it; no fetching while inserts fail; JetStream holds the rest,
/// up to max_ack_pending unacked), then catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_clickhouse_down_for_a_minute_under_load() {
    let stack = blocking(|| {
        Stack::start(
            "fault_ch",
            Setup {
                own_clickhouse: true,
                relays: 2,
                relay_args: &["--batch-max-rows", "2000"],
                ..Default::default()
            },
        )
    });
    let load = spawn_load(stack.load(30_000, 400.0, 13));
    sleep_secs(3.0).await;
    blocking(|| stack.ch.stop());
    let stopped = Instant::now();
    let mut max_buffer = 0.0f64;
    let mut max_lag = 0.0f64;
    while stopped.elapsed() < Duration::from_secs(60) {
        sleep_secs(2.0).await;
        blocking(|| {
            for r in &stack.relays {
                let m = r.metrics().unwrap();
                max_buffer = max_buffer.max(sample_value(&m, "spoor_relay_buffer_rows"));
                max_lag = max_lag.max(sample_value(&m, "spoor_relay_consumer_lag_messages"));
            }
        });
    }
    blocking(|| stack.ch.restart()).unwrap();
    let summary = load.await.unwrap();
    eprintln!("during the outage: max buffered rows per relay {max_buffer}, max consumer lag {max_lag} frames");
    // Two batches at most (one being inserted, one filled behind it), each
    // one frame past the row bound at most (a frame holds up to 50 events
    // here).
    assert!(
        max_buffer <= 2.0 * 2_050.0,
        "buffer grew to {max_buffer} rows"
    );
    assert!(
        max_lag > 50.0,
        "frames should wait in JetStream during the outage, lag peaked at {max_lag}"
    );
    assert!(
        blocking(|| stack
            .relay_sum(r#"spoor_relay_errors_total{stage="insert",error_type="clickhouse"}"#))
            > 0.0
    );
    stack.assert_exact(&summary, 0, 0).await;
}

/// (f) Devices that were offline flush events hours old: 2 hours late
/// (and, to be sure of crossing a UTC day, 26 hours late). They are stored
/// under their own event time, in their own day's partition, next to
/// live traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_events_hours_late_land_in_their_own_day() {
    let stack = blocking(|| {
        Stack::start(
            "fault_late",
            Setup {
                relays: 1,
                ..Default::default()
            },
        )
    });
    let load = spawn_load(stack.load(4_000, 800.0, 16));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut late_ids = Vec::new();
    let url = format!("{}/v1/batch", stack.edge.url());
    for (n, late_ms) in [(0, 2 * 3_600_000i64), (1, 26 * 3_600_000)] {
        let events: Vec<_> = (0..20)
            .map(|i| {
                let id = uuid::Uuid::new_v4();
                late_ids.push((id, late_ms));
                json!({"event": "page_view", "event_id": id.to_string(),
                       "anonymous_id": format!("offline-device-{n}"),
                       "timestamp": now_ms - late_ms + i * 1_000,
                       "properties": {"late": true}})
            })
            .collect();
        let body = json!({"sent_at": now_ms, "batch": events}).to_string();
        let (status, text, _) = blocking(|| post(&url, &body));
        assert_eq!(status, 202, "{text}");
        let receipt: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(receipt["accepted"], 20, "{receipt}");
    }
    let summary = load.await.unwrap();
    // The loadtest's exactness covers its own events; the late ones are
    // counted as extra, and checked here one by one.
    stack.assert_exact(&summary, late_ids.len(), 0).await;
    blocking(|| {
        for (id, late_ms) in &late_ids {
            let row = stack.query(&format!(
                "SELECT toString(event_date), toString(toDate(event_time)), ts_ms, received_at_ms \
                 FROM {}.events WHERE event_id = '{id}' FORMAT TSV",
                stack.db
            ));
            let cols: Vec<&str> = row.trim().split('\t').collect();
            assert_eq!(
                cols.len(),
                4,
                "late event {id} not stored exactly once: {row:?}"
            );
            let (ts_ms, received_ms): (i64, i64) =
                (cols[2].parse().unwrap(), cols[3].parse().unwrap());
            // Skew correction keeps the event's offset from sent_at; the
            // edge's clock and this test's agree to well within a minute.
            let lateness = received_ms - ts_ms;
            assert!(
                (late_ms - 60_000..=late_ms + 60_000).contains(&lateness),
                "event {id}: stored {lateness} ms before receipt, expected about {late_ms}"
            );
            assert_eq!(cols[0], cols[1], "partition day = event-time day for {id}");
        }
        // The 26-hour-late events sit in an older partition than live ones.
        let days = stack.query(&format!(
            "SELECT uniqExact(event_date) FROM {}.events WHERE properties LIKE '%\"late\":true%' FORMAT TSV",
            stack.db
        ));
        assert!(
            days.trim().parse::<u32>().unwrap() >= 2,
            "late events span two days"
        );
        let parts = stack.query(&format!(
            "SELECT uniqExact(partition) FROM system.parts WHERE database = '{}' AND table = 'events' AND active FORMAT TSV",
            stack.db
        ));
        assert!(
            parts.trim().parse::<u32>().unwrap() >= 2,
            "one partition per event day"
        );
    });
}

/// (e) 1% of the events are malformed (each rejected at the edge with its
/// reason while its batch's good events land), and 10 poison messages are
/// published straight into the stream under load (garbage, a bad magic, an
/// unknown format version, a truncated frame, a decompression bomb; twice
/// each). Every poison message ends in the dead-letter stream with its
/// reason, is acked off the main stream, and costs no good event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_malformed_events_and_poison_messages_are_isolated() {
    let stack = blocking(|| {
        Stack::start(
            "fault_poison",
            Setup {
                relays: 2,
                ..Default::default()
            },
        )
    });
    let mut opts = stack.load(12_000, 1_500.0, 15);
    opts.traffic.invalid_ratio = 0.01;
    let load = spawn_load(opts);

    let client = stack.nats.connect(NatsRole::Admin).await;
    let js = async_nats::jetstream::new(client);
    let poison: Vec<_> = crate::dead_letters::poison()
        .into_iter()
        .filter(|(name, _, _)| *name != "oversized") // only oversized for a small frame limit
        .collect();
    assert_eq!(poison.len(), 5);
    sleep_secs(2.0).await;
    for round in 0..2 {
        for (name, bytes, _) in &poison {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("poison-{name}-{round}").as_str());
            js.publish_with_headers("spoor.events.fault-region.3", headers, bytes.clone().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        sleep_secs(1.0).await;
    }
    let summary = load.await.unwrap();
    assert!(summary.rejected > 0, "the edge rejected no malformed event");
    assert_eq!(
        summary.rejected_by_reason.values().sum::<usize>(),
        summary.rejected
    );
    let report = stack.assert_exact(&summary, 0, 10).await;
    let mut want = std::collections::BTreeMap::new();
    for (_, _, reason) in &poison {
        *want.entry(reason.to_string()).or_insert(0u64) += 2;
    }
    assert_eq!(report.dead_lettered_by_reason, want);
    let dead = js
        .get_stream("SPOOR_DEAD")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dead, 10);
    let lettered = blocking(|| {
        stack
            .relays
            .iter()
            .map(|r| metrics::sum(&r.metrics().unwrap(), "spoor_relay_dead_lettered_total"))
            .sum::<f64>()
    });
    assert_eq!(lettered, 10.0);
    let stream = js.get_stream("SPOOR_EVENTS").await.unwrap();
    let mut waiting = (0u64, 0usize);
    for p in 0..spoor_core::contract::DEFAULT_PARTITIONS {
        let consumer = stream
            .consumer_info(spoor_core::contract::partition_consumer("spoor-relay", p))
            .await
            .unwrap();
        waiting.0 += consumer.num_pending;
        waiting.1 += consumer.num_ack_pending;
    }
    assert_eq!(waiting, (0, 0), "everything acked off the main stream");
}

/// (d) NATS is stopped for 30 s under load with fast acks (the default).
/// The edge keeps answering 202; what it cannot publish goes to the spill
/// queue (the edge runs under `wrangler dev`, which runs Queues locally),
/// whose consumer republishes it with the same `Nats-Msg-Id` once NATS is
/// back. The relays reconnect by themselves. Every acknowledged event is
/// stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_nats_down_for_30s_under_fast_acks_spills_and_replays() {
    let stack = blocking(|| {
        Stack::start(
            "fault_nats",
            Setup {
                relays: 2,
                wrangler: true,
                edge_vars: &[("PUBLISH_TIMEOUT_MS", "1000"), ("SPILL_RETRY_DELAY_S", "1")],
                ..Default::default()
            },
        )
    });
    let load = spawn_load(stack.load(9_000, 250.0, 14));
    sleep_secs(5.0).await;
    blocking(|| stack.nats.single().stop());
    sleep_secs(30.0).await;
    blocking(|| stack.nats.single().restart()).unwrap();
    let summary = load.await.unwrap();
    assert_eq!(
        summary.failed_requests, 0,
        "fast acks answer through the outage"
    );
    stack.assert_exact(&summary, 0, 0).await;
    blocking(|| {
        let spilled = stack.edge_metric("spoor_edge_events_spilled_total");
        let replayed = stack.edge_metric("spoor_edge_events_replayed_total");
        assert!(spilled > 0.0, "the outage should have spilled events");
        assert!(
            replayed >= spilled,
            "spilled {spilled}, replayed {replayed}"
        );
        assert_eq!(
            stack.edge_metric("spoor_edge_spill_failed_events_total"),
            0.0
        );
        assert_eq!(
            stack.edge_metric("spoor_edge_events_accepted_total") as usize,
            summary.accepted
        );
    });
}

/// (g) A buggy release doubles the traffic over a key's rate limit and
/// mixes in malformed events and unparseable requests. The edge answers
/// 429 with Retry-After (the SDK, here the loadtest, waits and resends),
/// rejects the bad events and requests with their reasons, and every
/// accepted event lands once; the edge's counters agree with what the
/// clients were told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_a_burst_at_twice_the_rate_limit() {
    let stack = blocking(|| {
        Stack::start(
            "fault_burst",
            Setup {
                relays: 1,
                edge_vars: &[
                    ("RATE_LIMIT_EVENTS_PER_SEC", "400"),
                    ("RATE_LIMIT_BURST", "400"),
                ],
                ..Default::default()
            },
        )
    });
    let mut opts = stack.load(12_000, 800.0, 17);
    opts.traffic.invalid_ratio = 0.05;
    opts.max_retries = 20;
    let load = spawn_load(opts);

    // Meanwhile the buggy release also sends unparseable bodies, and single
    // events, on the same key by hand: the garbage gets 400, a single event
    // 202 or (while the key is over its limit) 429 with Retry-After.
    let url = format!("{}/v1/batch", stack.edge.url());
    let (mut garbage_400, mut throttled_429, mut extra_accepted) = (0, 0, 0);
    for i in 0..40 {
        sleep_secs(0.25).await;
        let body = if i % 2 == 0 {
            "{\"batch\": [{\"event\": \"page_view\",".to_string()
        } else {
            json!({"batch": [{"event": "page_view", "anonymous_id": "buggy-release",
                              "event_id": uuid::Uuid::new_v4().to_string()}]})
            .to_string()
        };
        let (status, text, retry_after) = blocking(|| post(&url, &body));
        match (i % 2, status) {
            (0, 400) => {
                assert!(text.contains("invalid_json"), "{text}");
                garbage_400 += 1;
            }
            (1, 202) => {
                assert!(text.contains("\"accepted\":1"), "{text}");
                extra_accepted += 1;
            }
            (_, 429) => {
                assert!(retry_after.is_some(), "429 without Retry-After: {text}");
                assert!(text.contains("rate_limited"), "{text}");
                throttled_429 += 1;
            }
            (_, other) => panic!("request {i} answered {other}: {text}"),
        }
    }
    eprintln!(
        "by hand: {garbage_400} garbage bodies answered 400, {extra_accepted} single events \
         accepted, {throttled_429} requests answered 429"
    );
    assert!(garbage_400 > 0, "no garbage body reached the parser");
    let summary = load.await.unwrap();
    // The loadtest counts a 429 without Retry-After as a mismatch, which
    // assert_exact rejects.
    assert!(summary.throttled > 0, "2x the limit was never throttled");
    assert!(summary.rejected > 0);
    stack.assert_exact(&summary, extra_accepted, 0).await;
    blocking(|| {
        assert!(stack.edge_metric("spoor_edge_rate_limited_requests_total") > 0.0);
        assert_eq!(
            stack.edge_metric("spoor_edge_events_accepted_total") as usize,
            summary.accepted + extra_accepted,
            "edge counter vs receipts"
        );
        let rejected = stack.edge_metric("spoor_edge_events_rejected_total");
        assert_eq!(
            rejected as usize, summary.rejected,
            "edge counter vs receipts"
        );
    });
}

/// (k) A relay told to stop while NATS and ClickHouse are both down exits
/// within its drain time: it abandons the insert it cannot finish (its
/// messages stay unacked for redelivery) and does not wait for NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_a_relay_stopped_with_nats_and_clickhouse_down_exits_within_its_drain_time() {
    // The stack's relays run with `--drain-timeout-secs 10`.
    const DRAIN_SECS: u64 = 10;
    let stack = blocking(|| {
        Stack::start(
            "faults_k",
            Setup {
                own_clickhouse: true,
                relays: 1,
                ..Default::default()
            },
        )
    });
    // Rows buffered that cannot be inserted: ClickHouse first, then NATS.
    blocking(|| stack.ch.stop());
    let load = spawn_load(stack.load(2_000, 400.0, 21));
    sleep_secs(4.0).await;
    blocking(|| stack.nats.single().stop());
    sleep_secs(2.0).await;
    let relay = &stack.relays[0];
    assert!(relay.is_running(), "{}", relay.log_tail(20));
    let asked = Instant::now();
    blocking(|| relay.stop());
    let took = asked.elapsed();
    eprintln!("the relay exited {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(DRAIN_SECS + 5),
        "the relay took {took:?} to exit (drain time {DRAIN_SECS} s); its log:\n{}",
        relay.log_tail(30)
    );
    load.abort();
}

/// (h) One node of a three-node JetStream cluster (R3 streams) is killed
/// with SIGKILL under load, and started again 10 s later: the node leading
/// the events stream (not the edge's), so the other two elect a new leader
/// while the edge keeps its node and the relays fail over among the nodes.
/// Durable acks: every 202 means two of the three nodes had the frame on
/// disk, so losing an acknowledged event is a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_a_nats_node_killed_under_load() {
    let stack = blocking(|| {
        Stack::start(
            "fault_nats_kill",
            Setup {
                relays: 2,
                cluster: true,
                edge_vars: &[("PUBLISH_TIMEOUT_MS", "2000")],
                ..Default::default()
            },
        )
    });
    let mut opts = stack.load(10_000, 500.0, 18);
    opts.ack = Some("durable".into());
    opts.max_retries = 20;
    let load = spawn_load(opts);
    sleep_secs(4.0).await;
    let victim = stack.stream_leader_off_the_edge().await;
    let cluster = stack.nats.cluster();
    blocking(|| cluster.node(victim).kill());
    let killed = Instant::now();
    let leader = stack.failover_leader(victim).await;
    eprintln!(
        "killed node {victim} (the stream's leader); node {leader} leads after {:?}",
        killed.elapsed()
    );
    sleep_secs(10.0 - killed.elapsed().as_secs_f64().min(10.0)).await;
    blocking(|| cluster.node(victim).start()).unwrap();
    let summary = load.await.unwrap();
    eprintln!(
        "durable requests retried {} times, {} failed",
        summary.retries, summary.failed_requests
    );
    stack.assert_exact(&summary, 0, 0).await;
    blocking(|| stack.assert_rollups_match_raw());
    cluster
        .wait_stream_current(STREAM, 3, Duration::from_secs(60))
        .await
        .unwrap();
}

/// (i) The node leading the events stream (not the edge's) is stopped for
/// 30 s under load, then started again: the other two nodes elect a leader
/// and carry the stream meanwhile; the restarted node catches up. Fast acks
/// (the default), with the edge under `wrangler dev` so that whatever the
/// edge cannot publish during the election goes to the spill queue and is
/// replayed, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i_the_stream_leaders_node_down_for_30s_under_load() {
    let stack = blocking(|| {
        Stack::start(
            "fault_nats_leader",
            Setup {
                relays: 2,
                cluster: true,
                wrangler: true,
                edge_vars: &[("PUBLISH_TIMEOUT_MS", "1000"), ("SPILL_RETRY_DELAY_S", "1")],
                ..Default::default()
            },
        )
    });
    let load = spawn_load(stack.load(12_000, 300.0, 19));
    sleep_secs(4.0).await;
    let victim = stack.stream_leader_off_the_edge().await;
    let cluster = stack.nats.cluster();
    blocking(|| cluster.node(victim).stop());
    let stopped = Instant::now();
    let leader = stack.failover_leader(victim).await;
    eprintln!(
        "stopped node {victim} (the stream's leader); node {leader} leads after {:?}",
        stopped.elapsed()
    );
    sleep_secs(30.0 - stopped.elapsed().as_secs_f64().min(30.0)).await;
    blocking(|| cluster.node(victim).start()).unwrap();
    let summary = load.await.unwrap();
    assert_eq!(
        summary.failed_requests, 0,
        "fast acks answer through the outage"
    );
    stack.assert_exact(&summary, 0, 0).await;
    blocking(|| {
        stack.assert_rollups_match_raw();
        let spilled = stack.edge_metric("spoor_edge_events_spilled_total");
        let replayed = stack.edge_metric("spoor_edge_events_replayed_total");
        eprintln!("the edge spilled {spilled} events and replayed {replayed}");
        assert!(
            replayed >= spilled,
            "spilled {spilled}, replayed {replayed}"
        );
        assert_eq!(
            stack.edge_metric("spoor_edge_spill_failed_events_total"),
            0.0
        );
    });
    cluster
        .wait_stream_current(STREAM, 3, Duration::from_secs(60))
        .await
        .unwrap();
}

/// `spoor relays`, as the ops role runs it, sampled in the background
/// every 200 ms while a scenario moves partitions between relays. Every
/// sample is kept, so that the scenario can check that none of them shows
/// a partition held by two relays.
struct RelaysWatch {
    samples: std::sync::Arc<std::sync::Mutex<Vec<spoor_cli::relays::RelaysReport>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RelaysWatch {
    async fn start(stack: &Stack) -> RelaysWatch {
        use std::sync::atomic::Ordering;
        let client = stack.nats.connect(NatsRole::Ops).await;
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (samples, stop) = (samples.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let partitions = spoor_core::contract::DEFAULT_PARTITIONS;
                    if let Ok(report) =
                        spoor_cli::relays::relays(&client, STREAM, "spoor-relay", partitions).await
                    {
                        samples.lock().unwrap().push(report);
                    }
                    sleep_secs(0.2).await;
                }
            }
        });
        RelaysWatch {
            samples,
            stop,
            task,
        }
    }

    /// Waits (up to a minute) for a sample taken from now on that `want`s,
    /// and returns it.
    async fn wait_for(
        &self,
        what: &str,
        want: impl Fn(&spoor_cli::relays::RelaysReport) -> bool,
    ) -> spoor_cli::relays::RelaysReport {
        let from = self.samples.lock().unwrap().len();
        let asked = Instant::now();
        loop {
            {
                let samples = self.samples.lock().unwrap();
                if let Some(found) = samples[from.min(samples.len())..].iter().find(|r| want(r)) {
                    eprintln!("{what} after {:?}", asked.elapsed());
                    return found.clone();
                }
                if asked.elapsed() > Duration::from_secs(60) {
                    let last = samples
                        .last()
                        .map(|r| spoor_cli::relays::render(r, crate::support::now_ms()))
                        .unwrap_or_default();
                    panic!("timed out waiting for {what}; the last sample:\n{last}");
                }
            }
            sleep_secs(0.1).await;
        }
    }

    /// Stops sampling and returns every sample taken.
    async fn finish(self) -> Vec<spoor_cli::relays::RelaysReport> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// The partitions two or more relays list as theirs in one sample.
fn held_twice(report: &spoor_cli::relays::RelaysReport) -> std::collections::BTreeSet<u32> {
    let mut seen = std::collections::BTreeSet::new();
    let mut twice = std::collections::BTreeSet::new();
    for relay in &report.relays {
        for p in &relay.record.partitions {
            if !seen.insert(*p) {
                twice.insert(*p);
            }
        }
    }
    twice
}

/// Whether the relays hold `shares` partitions (in ascending order), every
/// partition once, none unowned.
fn split_as(report: &spoor_cli::relays::RelaysReport, shares: &[usize]) -> bool {
    let mut held: Vec<usize> = report
        .relays
        .iter()
        .map(|r| r.record.partitions.len())
        .collect();
    held.sort_unstable();
    let every: std::collections::BTreeSet<u32> = report
        .relays
        .iter()
        .flat_map(|r| r.record.partitions.iter().copied())
        .collect();
    held == shares
        && report.unowned().is_empty()
        && every.len() == spoor_core::contract::DEFAULT_PARTITIONS as usize
        && held_twice(report).is_empty()
}

/// (j) Relays are added under load, from one to three, and taken away
/// again. A second relay joins the one holding all 16 partitions (8/8),
/// then a third (6/6/4, none unowned, as `spoor relays` shows); the third
/// is stopped with SIGTERM (it inserts and acks what it holds and hands
/// its partitions over) and the second is killed with SIGKILL (its leases
/// run out after their 3 s TTL and its unacked frames are redelivered),
/// back to the first relay holding all 16. No sample of `spoor relays`
/// ever shows a partition held by two relays, the first relay counts its
/// handovers, and every event lands once, in the rollups too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j_relays_scaled_from_one_to_three_and_back_under_load() {
    let mut stack = blocking(|| {
        Stack::start(
            "fault_scale",
            Setup {
                relays: 1,
                relay_args: &["--lease-ttl-secs", "3"],
                // Traffic on every partition the relays share.
                edge_vars: &[("PARTITIONS", "16")],
                ..Default::default()
            },
        )
    });
    let watch = RelaysWatch::start(&stack).await;
    watch
        .wait_for("one relay holding all 16 partitions", |r| {
            split_as(r, &[16])
        })
        .await;
    let load = spawn_load(stack.load(16_000, 400.0, 22));
    sleep_secs(3.0).await;

    blocking(|| stack.add_relay());
    watch
        .wait_for("two relays holding 8 each", |r| split_as(r, &[8, 8]))
        .await;
    blocking(|| stack.add_relay());
    let spread = watch
        .wait_for("three relays holding 6/6/4", |r| split_as(r, &[4, 6, 6]))
        .await;
    eprintln!(
        "{}",
        spoor_cli::relays::render(&spread, crate::support::now_ms())
    );
    // The three share the traffic for a while.
    sleep_secs(3.0).await;

    let stopping = Instant::now();
    blocking(|| stack.relays[2].stop());
    eprintln!(
        "the third relay exited {:?} after SIGTERM",
        stopping.elapsed()
    );
    watch
        .wait_for("two relays holding 8 each again", |r| split_as(r, &[8, 8]))
        .await;
    blocking(|| stack.relays[1].kill9());
    watch
        .wait_for("the first relay holding all 16 again", |r| {
            split_as(r, &[16])
        })
        .await;

    let summary = load.await.unwrap();
    let samples = watch.finish().await;
    eprintln!("{} samples of `spoor relays`", samples.len());
    for sample in &samples {
        assert!(
            held_twice(sample).is_empty(),
            "partitions {:?} held by two relays at once:\n{}",
            held_twice(sample),
            spoor_cli::relays::render(sample, crate::support::now_ms())
        );
    }
    let first = blocking(|| stack.relays[0].metrics().unwrap());
    let released = sample_value(&first, r#"spoor_relay_rebalances_total{change="released"}"#);
    let acquired = sample_value(&first, r#"spoor_relay_rebalances_total{change="acquired"}"#);
    // 16 → 8 → 6 by handover, then 6 → 8 → 16 by taking partitions back.
    assert_eq!(released, 10.0, "partitions the first relay handed over");
    assert_eq!(acquired - released, 16.0, "acquired {acquired}");
    assert_eq!(sample_value(&first, "spoor_relay_partitions_owned"), 16.0);
    assert_eq!(
        sample_value(&first, "spoor_relay_lease_losses_total"),
        0.0,
        "the first relay lost a lease"
    );
    stack.assert_exact(&summary, 0, 0).await;
    blocking(|| stack.assert_rollups_match_raw());
}
