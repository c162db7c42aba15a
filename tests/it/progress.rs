//! In-progress acks against a real nats-server and clickhouse-server: while
//! ClickHouse is too slow to answer, the relay holds its frames for many
//! times `ack_wait` and JetStream never offers them again.
//!
//! The relay bounds every ClickHouse request well inside `ack_wait` (see
//! `ClickHouseSink::new`), so one request cannot itself outlast it; what
//! outlasts it is a flush whose requests keep timing out. Here ClickHouse's
//! HTTP answers are held back for 8 s (four times a 2 s `ack_wait`) by a
//! TCP relay in front of the real server, which forwards every request at
//! once: the insert lands, its answer does not come, and every presence
//! check after it times out too, until the answers flow again and the
//! relay finds its rows stored and acks. Meanwhile the test pulls from the
//! partition's consumer itself, as the partition's next owner (or the
//! relay's own puller, once it resumes) would: anything whose ack_wait ran
//! out would be redelivered to that pull.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::fixtures::{batch, events};
use spoor_tests::nats::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::relay::{config, stats, Publisher, CONSUMER, STREAM};
use crate::support::{eventually, sample_value, Relay};

const ACK_WAIT: Duration = Duration::from_secs(2);
/// How long ClickHouse's answers are held back.
const SLOW_FOR: Duration = Duration::from_secs(8);

/// A TCP relay in front of ClickHouse's HTTP port. Requests go through at
/// once; answers are held back while `hold` is on. A client that gives up
/// closes its connection, and the answer it waited for is dropped.
struct SlowAnswers {
    addr: SocketAddr,
    hold: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowAnswers {
    async fn start(upstream_port: u16) -> SlowAnswers {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        let (hold, held) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(Self::connection(client, upstream, held.clone()));
            }
        });
        SlowAnswers { addr, hold, task }
    }

    async fn connection(client: TcpStream, upstream: SocketAddr, mut held: watch::Receiver<bool>) {
        let Ok(server) = TcpStream::connect(upstream).await else {
            return;
        };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let requests = tokio::io::copy(&mut client_read, &mut server_write);
        let answers = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = server_read.read(&mut buf).await?;
                if n == 0 {
                    return client_write.shutdown().await;
                }
                if held.wait_for(|hold| !*hold).await.is_err() {
                    return Ok(());
                }
                client_write.write_all(&buf[..n]).await?;
            }
        };
        // Either side closing ends the connection (and drops a held answer).
        tokio::select! {
            _ = requests => {}
            _ = answers => {}
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

impl Drop for SlowAnswers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_acks_keep_frames_from_redelivery_while_clickhouse_is_slow() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("progress_acks");
    let slow = SlowAnswers::start(ch.http_port()).await;
    let mut relay_config = config(&nats, slow.url(), &db);
    relay_config.ack_wait = ACK_WAIT;
    let relay = Relay::start(relay_config).await;
    let publisher = Publisher::connect(&nats).await;

    // Three frames of five events, delivered to the relay while
    // ClickHouse's answers are held back.
    slow.hold(true);
    let mut last_seq = 0;
    for f in 0..3u128 {
        let b = batch(&format!("slow-{f}"), events(f * 5 + 1..f * 5 + 6));
        last_seq = publisher.publish_batch(&b).await;
    }
    eventually("the relay to hold the three frames", || async {
        let c = publisher.consumer().await;
        (c.num_pending == 0 && c.num_ack_pending == 3).then_some(())
    })
    .await;
    let delivered = Instant::now();
    // Its insert reaches ClickHouse and lands; the answer does not come.
    eventually("the insert to land", || async {
        (stats(ch, &db).await.trim() == "15\t15").then_some(())
    })
    .await;

    // For four times ack_wait JetStream must not offer the frames again.
    held_without_redelivery(&publisher, delivered, 3).await;

    // The answers flow again: the relay finds its rows stored and acks.
    slow.hold(false);
    publisher.drained(last_seq).await;
    let held_for = delivered.elapsed();
    eprintln!("the relay held its frames for {held_for:?} with ack_wait {ACK_WAIT:?}");
    assert!(held_for >= SLOW_FOR, "held for {held_for:?}");
    let c = publisher.consumer().await;
    assert_eq!((c.num_redelivered, c.num_ack_pending), (0, 0));
    assert_eq!(stats(ch, &db).await.trim(), "15\t15", "each row once");
    let metrics = relay.get("/metrics").await.1;
    assert!(
        sample_value(
            &metrics,
            r#"spoor_relay_errors_total{stage="insert",error_type="clickhouse"}"#
        ) >= 1.0,
        "the insert should have timed out"
    );
    assert_eq!(
        sample_value(
            &metrics,
            r#"spoor_relay_events_deduped_by_layer_total{layer="stored"}"#
        ),
        15.0,
        "the rows found stored after the answers came back"
    );
    assert_eq!(
        sample_value(
            &metrics,
            r#"spoor_relay_events_deduped_by_layer_total{layer="own"}"#
        ),
        0.0,
        "no frame came back to the relay"
    );
    relay.shutdown().await;
}

/// Looks at partition 0's consumer until `SLOW_FOR` after `delivered`:
/// `ack_pending` frames stay delivered and unacked, none is redelivered,
/// and a pull of its own (as the partition's next owner would make) is
/// offered nothing.
async fn held_without_redelivery(publisher: &Publisher, delivered: Instant, ack_pending: u64) {
    let probe = publisher
        .js
        .get_stream(STREAM)
        .await
        .unwrap()
        .get_consumer::<pull::Config>(CONSUMER)
        .await
        .unwrap();
    let mut looks = 0;
    while delivered.elapsed() < SLOW_FOR {
        let c = publisher.consumer().await;
        assert_eq!(
            (c.num_redelivered, c.num_ack_pending as u64, c.num_pending),
            (0, ack_pending, 0),
            "{:.1} s after delivery (ack_wait {ACK_WAIT:?}): redelivered, ack pending, pending",
            delivered.elapsed().as_secs_f64()
        );
        let mut offered = probe
            .batch()
            .max_messages(3)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let mut again = Vec::new();
        while let Some(m) = offered.next().await {
            let m = m.unwrap();
            again.push(m.info().map(|i| i.stream_sequence).unwrap_or(0));
            let _ = m.ack_with(async_nats::jetstream::AckKind::Nak(None)).await;
        }
        assert!(
            again.is_empty(),
            "{:.1} s after delivery (ack_wait {ACK_WAIT:?}) JetStream offered stream sequences {again:?} again",
            delivered.elapsed().as_secs_f64()
        );
        looks += 1;
    }
    assert!(looks >= 8, "only {looks} looks at the consumer");
}

/// The batch that fills behind a slow insert waits for it, and its frames
/// get progress acks too: one frame per batch (`max_rows` 5), the first
/// frame's insert is held, the second frame's batch waits behind it for
/// four times `ack_wait`, and neither is offered again; then both land,
/// once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_waiting_behind_a_slow_insert_is_not_redelivered_either() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("progress_behind");
    let slow = SlowAnswers::start(ch.http_port()).await;
    let mut relay_config = config(&nats, slow.url(), &db);
    relay_config.ack_wait = ACK_WAIT;
    relay_config.batch.max_rows = 5;
    relay_config.batch.max_messages = 5;
    let relay = Relay::start(relay_config).await;
    let publisher = Publisher::connect(&nats).await;

    slow.hold(true);
    let first = batch("inserting", events(1..6));
    publisher.publish_batch(&first).await;
    // Its insert reaches ClickHouse and lands; the answer does not come.
    eventually("the first batch's insert to land", || async {
        (stats(ch, &db).await.trim() == "5\t5").then_some(())
    })
    .await;
    let second = batch("waiting", events(6..11));
    let last_seq = publisher.publish_batch(&second).await;
    eventually("the relay to hold both frames", || async {
        let c = publisher.consumer().await;
        (c.num_pending == 0 && c.num_ack_pending == 2).then_some(())
    })
    .await;
    let delivered = Instant::now();
    eventually("the second batch buffered behind the first", || async {
        let m = relay.get("/metrics").await.1;
        (sample_value(&m, "spoor_relay_buffer_rows") == 10.0).then_some(())
    })
    .await;
    assert_eq!(
        stats(ch, &db).await.trim(),
        "5\t5",
        "the second batch must wait for the first insert"
    );

    held_without_redelivery(&publisher, delivered, 2).await;

    slow.hold(false);
    publisher.drained(last_seq).await;
    let c = publisher.consumer().await;
    assert_eq!((c.num_redelivered, c.num_ack_pending), (0, 0));
    assert_eq!(stats(ch, &db).await.trim(), "10\t10", "each row once");
    relay.shutdown().await;
}
