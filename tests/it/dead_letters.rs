//! Dead letters end to end, against a real nats-server and clickhouse-server:
//! poison frames published straight into the events stream land in
//! `SPOOR_DEAD` with their reason and origin, are acked off the main stream
//! while the good frames around them are inserted; a failed dead-letter
//! publish leaves the frame unacked until it succeeds; `spoor dead-letters
//! list` shows them and `replay`, once the cause is fixed, inserts the
//! events exactly once and removes the dead letter.
//!
//! The helpers here (relay config, publisher, frames) are shared with
//! `reconcile.rs`.

use crate::support::nats_endpoint;
use spoor_tests::nats::NatsRole;
use std::time::Duration;

use spoor_cli::dead_letters::{self, DeadLetterError, ReplayOptions, Selector};
use spoor_core::contract::DEAD_STREAM;
use spoor_core::{encode_batch, Event, WireBatch};
use spoor_relay::RelayConfig;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::nats::NatsServer;

use crate::support::{eventually, Relay};

// Frames, events and the publisher are the relay tests' own; only the
// project (and the relay's small frame limit) differ.
pub(crate) use crate::relay::{Publisher, STREAM, SUBJECT};
pub(crate) use spoor_tests::fixtures::{event, events, id, TS_MS};
pub(crate) const PROJECT: &str = "proj_dead";
/// The relay's frame limit in these tests: small, so an "oversized" frame
/// is cheap to build and a restart with the default limit fixes it.
pub(crate) const SMALL_FRAME_LIMIT: usize = 64 * 1024;

pub(crate) fn config(nats: &NatsServer, ch: &ClickHouseServer, database: &str) -> RelayConfig {
    let mut config = crate::relay::config(nats, ch.http_url(), database);
    config.max_frame_bytes = SMALL_FRAME_LIMIT;
    config
}

pub(crate) async fn query(ch: &ClickHouseServer, sql: &str) -> String {
    tokio::task::block_in_place(|| ch.query(sql).unwrap_or_else(|e| panic!("{e:#}")))
}

pub(crate) async fn count(ch: &ClickHouseServer, db: &str) -> u64 {
    query(ch, &format!("SELECT count() FROM {db}.events"))
        .await
        .trim()
        .parse()
        .unwrap()
}

/// The fixtures' batch, in this module's project.
pub(crate) fn batch(batch_id: &str, events: Vec<Event>) -> WireBatch {
    WireBatch {
        project_id: PROJECT.into(),
        ..spoor_tests::fixtures::batch(batch_id, events)
    }
}

/// A real frame whose body inflates past `SMALL_FRAME_LIMIT`.
pub(crate) fn oversized_frame(batch_id: &str, range: std::ops::Range<u128>) -> Vec<u8> {
    let events = range
        .map(|n| Event {
            properties: format!("{{\"blob\":\"{}\"}}", "x".repeat(30_000)),
            ..event(n)
        })
        .collect();
    let frame = encode_batch(&batch(batch_id, events)).unwrap();
    assert!(
        u32::from_le_bytes(frame[12..16].try_into().unwrap()) as usize > SMALL_FRAME_LIMIT,
        "the oversized frame must declare more than the limit"
    );
    frame
}

/// Every kind of poison, with the reason the relay must give it.
pub(crate) fn poison() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = encode_batch(&batch("x", events(50..53))).unwrap();
    let mut bad_magic = good.clone();
    bad_magic[0..4].copy_from_slice(b"JUNK");
    let mut future_version = good.clone();
    future_version[4] = 9;
    let mut truncated = encode_batch(&batch("cut", events(60..70))).unwrap();
    truncated.truncate(truncated.len() / 2);
    let truncated_kind = spoor_core::decode_batch(&truncated, SMALL_FRAME_LIMIT)
        .unwrap_err()
        .kind();
    assert!(
        matches!(truncated_kind, "decompress" | "length_mismatch"),
        "{truncated_kind}"
    );
    // A decompression bomb whose header lies: it declares 1 KiB, but its
    // LZ4 body inflates to 8 MiB of zeros.
    let body = lz4_flex::block::compress(&vec![0u8; 8 * 1024 * 1024]);
    let mut bomb = Vec::new();
    bomb.extend_from_slice(&spoor_core::codec::MAGIC);
    bomb.extend_from_slice(&[spoor_core::codec::FORMAT_VERSION, 1, 0, 0]);
    bomb.extend_from_slice(&1u32.to_le_bytes());
    bomb.extend_from_slice(&1024u32.to_le_bytes());
    bomb.extend_from_slice(&body);
    vec![
        ("garbage", b"garbage".to_vec(), "incomplete"),
        ("bad-magic", bad_magic, "bad_magic"),
        ("future-version", future_version, "unsupported_version"),
        ("truncated", truncated, truncated_kind),
        (
            "oversized",
            oversized_frame("oversized", 70..73),
            "too_large",
        ),
        ("bomb", bomb, "decompress"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_frames_are_dead_lettered_with_reasons_and_acked_while_neighbours_land() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("dead_poison");
    let relay = Relay::start(config(&nats, ch, &db)).await;
    let publisher = Publisher::connect(&nats).await;

    publisher
        .publish_batch(&batch("good-1", events(1..4)))
        .await;
    let mut published = Vec::new();
    for (msg_id, payload, reason) in poison() {
        let seq = publisher.publish(msg_id, payload.clone()).await;
        published.push((msg_id, payload, reason, seq));
    }
    let last = publisher
        .publish_batch(&batch("good-2", events(4..6)))
        .await;

    eventually("the good rows", || async {
        (count(ch, &db).await == 5).then_some(())
    })
    .await;
    publisher.drained(last).await;

    let letters = dead_letters::list(&nats_endpoint(&nats, NatsRole::Ops), None)
        .await
        .unwrap();
    assert_eq!(letters.len(), published.len(), "{letters:#?}");
    let dead = publisher.js.get_stream(DEAD_STREAM).await.unwrap();
    for (msg_id, payload, reason, seq) in &published {
        let letter = letters
            .iter()
            .find(|l| l.original_msg_id == *msg_id)
            .unwrap_or_else(|| panic!("no dead letter for {msg_id}: {letters:#?}"));
        assert_eq!(letter.reason, *reason, "{msg_id}");
        assert_eq!(letter.original_subject, SUBJECT);
        assert_eq!(letter.original_stream, STREAM);
        assert_eq!(letter.original_stream_seq, Some(*seq));
        assert!(!letter.detail.is_empty());
        assert!(letter.original_time.starts_with("20"), "{letter:?}");
        assert_eq!(letter.size, payload.len());
        // The stored message itself: original bytes, subject by reason,
        // and the id that makes a repeated dead-lettering a duplicate.
        let raw = dead.get_raw_message(letter.seq).await.unwrap();
        assert_eq!(raw.payload.as_ref(), payload.as_slice(), "{msg_id}");
        assert_eq!(raw.subject.as_str(), format!("spoor.dead.{reason}"));
        let dedup_id = raw
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_string());
        assert_eq!(dedup_id, Some(format!("dead:{STREAM}:{seq}")));
    }

    // Acked, not TERMed or left pending: nothing comes back.
    let c = publisher.consumer().await;
    assert_eq!((c.num_ack_pending, c.num_redelivered), (0, 0));
    let m = relay.get("/metrics").await.1;
    for reason in [
        "incomplete",
        "bad_magic",
        "unsupported_version",
        "too_large",
    ] {
        let sample = format!("spoor_relay_dead_lettered_total{{reason=\"{reason}\"}}");
        assert_eq!(
            crate::support::sample_value(&m, &sample),
            1.0,
            "{sample}\n{m}"
        );
    }
    let total: f64 = m
        .lines()
        .filter(|l| l.starts_with("spoor_relay_dead_lettered_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, published.len() as f64, "{m}");
    assert_eq!(
        relay
            .metric(r#"spoor_relay_errors_total{stage="dead_letter",error_type="publish"}"#)
            .await,
        0.0
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dead_letter_publish_leaves_the_frame_unacked_until_it_succeeds() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("dead_unacked");
    let mut cfg = config(&nats, ch, &db);
    cfg.ack_wait = Duration::from_secs(2);
    let relay = Relay::start(cfg).await;
    let publisher = Publisher::connect(&nats).await;
    // Without the dead-letter stream, the publish gets no PubAck.
    publisher.js.delete_stream(DEAD_STREAM).await.unwrap();

    let seq = publisher
        .publish("poison", b"NOPE, this is not a frame".to_vec())
        .await;
    eventually("a failed dead-letter attempt", || async {
        (relay
            .metric(r#"spoor_relay_errors_total{stage="dead_letter",error_type="publish"}"#)
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    let c = publisher.consumer().await;
    assert_eq!(c.num_ack_pending, 1, "the frame must stay unacked: {c:?}");
    assert_eq!(c.ack_floor.stream_sequence, 0);

    spoor_relay::source::dead_letter::ensure_stream(&publisher.js)
        .await
        .unwrap();
    publisher.drained(seq).await;
    let letters = dead_letters::list(&nats_endpoint(&nats, NatsRole::Ops), None)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].original_stream_seq, Some(seq));
    assert_eq!(letters[0].reason, "bad_magic");
    // Delivered again after ack_wait, and only then dead-lettered (the
    // counter is bumped when the pull request that carried it ends).
    eventually("a second delivery", || async {
        (relay.metric("spoor_relay_messages_received_total").await >= 2.0).then_some(())
    })
    .await;
    assert_eq!(
        relay
            .metric("spoor_relay_dead_lettered_total{reason=\"bad_magic\"}")
            .await,
        1.0
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_replay_after_the_fix_inserts_once_and_removes_the_dead_letter() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("dead_replay");
    let relay = Relay::start(config(&nats, ch, &db)).await;
    let publisher = Publisher::connect(&nats).await;

    publisher.publish_batch(&batch("good", events(1..3))).await;
    let oversized_seq = publisher
        .publish("big-1", oversized_frame("big-1", 100..103))
        .await;
    let last = publisher.publish("junk", b"junk".to_vec()).await;
    publisher.drained(last).await;
    assert_eq!(count(ch, &db).await, 2);

    let all = dead_letters::list(&nats_endpoint(&nats, NatsRole::Ops), None)
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "{all:#?}");
    let too_large = dead_letters::list(&nats_endpoint(&nats, NatsRole::Ops), Some("too_large"))
        .await
        .unwrap();
    assert_eq!(too_large.len(), 1);
    let big = too_large[0].clone();
    assert_eq!(big.original_stream_seq, Some(oversized_seq));
    assert_eq!(big.original_msg_id, "big-1");
    let table = dead_letters::render_list(&all);
    assert!(
        table.contains("too_large") && table.contains("incomplete"),
        "{table}"
    );
    assert!(
        table.contains(SUBJECT) && table.ends_with("2 dead letter(s)\n"),
        "{table}"
    );

    // Nothing selected is an error, not "replay everything".
    let nothing = ReplayOptions {
        nats: nats_endpoint(&nats, NatsRole::Ops),
        selectors: vec![],
        dry_run: false,
    };
    assert!(matches!(
        dead_letters::replay(&nothing).await,
        Err(DeadLetterError::NothingSelected)
    ));

    // The fix: a relay that accepts larger frames.
    relay.shutdown().await;
    let mut fixed = config(&nats, ch, &db);
    fixed.max_frame_bytes = spoor_core::Limits::default().max_frame_bytes;
    let relay = Relay::start(fixed).await;

    let by_seq = |dry_run| ReplayOptions {
        nats: nats_endpoint(&nats, NatsRole::Ops),
        selectors: vec![Selector::Seq(big.seq)],
        dry_run,
    };
    let dry = dead_letters::replay(&by_seq(true)).await.unwrap();
    assert_eq!(dry.len(), 1);
    assert_eq!(dry[0].msg_id, format!("replay:{}:big-1", big.seq));
    assert_eq!(dry[0].stream_seq, None);
    assert_eq!(
        dead_letters::list(&nats_endpoint(&nats, NatsRole::Ops), None)
            .await
            .unwrap()
            .len(),
        2
    );

    let replayed = dead_letters::replay(&by_seq(false)).await.unwrap();
    assert_eq!(replayed.len(), 1);
    let replay_seq = replayed[0].stream_seq.unwrap();
    assert_eq!(replayed[0].stream.as_deref(), Some(STREAM));
    assert!(!replayed[0].duplicate);
    eventually("the replayed events", || async {
        (count(ch, &db).await == 5).then_some(())
    })
    .await;
    publisher.drained(replay_seq).await;
    let left = dead_letters::list(&nats_endpoint(&nats, NatsRole::Ops), None)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0].reason, "incomplete");

    // Twice: the dead letter is gone, so nothing is republished.
    assert!(matches!(
        dead_letters::replay(&by_seq(false)).await,
        Err(DeadLetterError::NotFound(seqs)) if seqs == vec![big.seq]
    ));
    // A replay repeated after a crash before the delete reuses the id and is
    // dropped by JetStream as a duplicate.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", replayed[0].msg_id.as_str());
    let again = publisher
        .js
        .publish_with_headers(SUBJECT, headers, b"ignored".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, replay_seq);
    let stored = query(
        ch,
        &format!("SELECT count(), uniqExact(event_id) FROM {db}.events"),
    )
    .await;
    assert_eq!(stored.trim(), "5\t5");

    // Still broken: replaying the junk frame dead-letters it again.
    let junk = dead_letters::replay(&ReplayOptions {
        nats: nats_endpoint(&nats, NatsRole::Ops),
        selectors: vec![Selector::Reason("incomplete".into())],
        dry_run: false,
    })
    .await
    .unwrap();
    assert_eq!(junk.len(), 1);
    let junk_replay_seq = junk[0].stream_seq.unwrap();
    publisher.drained(junk_replay_seq).await;
    let left = eventually("the junk frame dead-lettered again", || async {
        let left = dead_letters::list(&nats_endpoint(&nats, NatsRole::Ops), None)
            .await
            .unwrap();
        (left.len() == 1 && left[0].original_stream_seq == Some(junk_replay_seq)).then_some(left)
    })
    .await;
    assert_eq!(left[0].original_msg_id, junk[0].msg_id);
    assert_eq!(count(ch, &db).await, 5);

    // Reconcile sees both originals as replayed, the replayed junk as the
    // one dead letter, and the replayed big frame's events as inserted.
    let report = spoor_cli::reconcile(&spoor_cli::ReconcileOptions::new(
        nats_endpoint(&nats, NatsRole::Ops),
        spoor_cli::ClickHouseOptions {
            url: ch.http_url(),
            database: db.clone(),
            user: None,
            password: None,
        },
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    ))
    .await
    .unwrap();
    let text = report.render(20);
    assert!(report.is_exact(), "{text}");
    assert_eq!(
        (
            report.frames,
            report.frames_decoded,
            report.replayed_frames,
            report.dead_lettered_frames
        ),
        (5, 2, 2, 1),
        "{text}"
    );
    assert_eq!((report.accepted_events, report.inserted), (5, 5), "{text}");
    relay.shutdown().await;
}
