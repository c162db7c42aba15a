use super::{BatchLimits, Batcher, FlushReason};

const LIMITS: BatchLimits = BatchLimits {
    max_rows: 10,
    max_bytes: 1_000,
    max_messages: 4,
    flush_interval_ms: 1_000,
};

fn rows(n: usize, size: usize) -> Vec<(u32, usize)> {
    (0..n as u32).map(|i| (i, size)).collect()
}

#[test]
fn empty_buffer_never_flushes() {
    let b: Batcher<u32, &str> = Batcher::new(LIMITS);
    assert_eq!(b.flush_reason(u64::MAX), None);
    assert_eq!(b.flush_deadline_ms(), None);
}

#[test]
fn flush_reasons_table() {
    /// (messages as (row count, bytes per row), push time, check time, expected)
    type Case = (&'static [(usize, usize)], u64, u64, Option<FlushReason>);
    let cases: &[Case] = &[
        (&[(3, 10)], 0, 999, None),
        (&[(3, 10)], 0, 1_000, Some(FlushReason::Age)),
        (&[(3, 10)], 500, 1_499, None),
        (&[(10, 1)], 0, 0, Some(FlushReason::Rows)),
        (&[(6, 1), (6, 1)], 0, 0, Some(FlushReason::Rows)),
        (&[(2, 500)], 0, 0, Some(FlushReason::Bytes)),
        (&[(0, 0), (0, 0), (0, 0)], 0, 0, None),
        (
            &[(0, 0), (0, 0), (0, 0), (0, 0)],
            0,
            0,
            Some(FlushReason::Messages),
        ),
        // Rows win over bytes when both are reached.
        (&[(10, 100)], 0, 0, Some(FlushReason::Rows)),
        // A message with no rows still ages the buffer: its ack is waiting.
        (&[(0, 0)], 0, 1_000, Some(FlushReason::Age)),
    ];
    for (i, (messages, pushed_at, checked_at, expected)) in cases.iter().enumerate() {
        let mut b = Batcher::new(LIMITS);
        for (m, (n, size)) in messages.iter().enumerate() {
            b.push(rows(*n, *size), m, *pushed_at);
        }
        assert_eq!(b.flush_reason(*checked_at), *expected, "case {i}");
    }
}

#[test]
fn age_is_measured_from_the_oldest_message() {
    let mut b = Batcher::new(LIMITS);
    b.push(rows(1, 1), "a", 100);
    b.push(rows(1, 1), "b", 900);
    assert_eq!(b.flush_deadline_ms(), Some(1_100));
    assert_eq!(b.flush_reason(1_099), None);
    assert_eq!(b.flush_reason(1_100), Some(FlushReason::Age));
}

#[test]
fn take_releases_every_ack_and_resets() {
    let mut b = Batcher::new(LIMITS);
    b.push(rows(2, 7), "a", 0);
    b.push(rows(0, 0), "dup-only", 1);
    b.push(rows(3, 5), "c", 2);
    assert_eq!(b.row_count(), 5);
    assert_eq!(b.message_count(), 3);
    assert_eq!(b.bytes(), 29);
    assert_eq!(b.rows(), &[0, 1, 0, 1, 2]);

    let drained = b.take();
    assert_eq!(drained.rows, 5);
    assert_eq!(drained.bytes, 29);
    assert_eq!(drained.acks, vec!["a", "dup-only", "c"]);
    assert!(b.is_empty());
    assert_eq!(b.row_count(), 0);
    assert_eq!(b.bytes(), 0);
    assert_eq!(b.flush_deadline_ms(), None);

    // The age clock restarts with the next message.
    b.push(rows(1, 1), "d", 5_000);
    assert_eq!(b.flush_deadline_ms(), Some(6_000));
}

#[test]
fn reading_rows_for_a_failed_insert_keeps_them() {
    let mut b = Batcher::new(LIMITS);
    b.push(rows(3, 1), "a", 0);
    // An insert attempt only borrows the rows; on failure nothing is taken.
    let attempt: Vec<u32> = b.rows().to_vec();
    assert_eq!(attempt.len(), 3);
    assert_eq!(b.row_count(), 3);
    assert_eq!(b.acks(), &["a"]);
    assert_eq!(b.flush_reason(2_000), Some(FlushReason::Age));
}

#[test]
fn retain_drops_rows_keeps_acks_and_recounts_bytes() {
    let mut b: Batcher<u32, &str> = Batcher::new(LIMITS);
    b.push(rows(4, 10), "m1", 0);
    b.push(vec![(7u32, 100)], "m2", 1);
    assert_eq!(b.bytes(), 140);
    b.retain_rows(|r| *r % 2 == 1, |r| if *r == 7 { 100 } else { 10 });
    assert_eq!(b.rows(), &[1, 3, 7]);
    assert_eq!(b.bytes(), 120);
    assert_eq!(b.acks(), &["m1", "m2"]);
    // An emptied buffer still flushes, so its acks are released.
    b.retain_rows(|_| false, |_| 10);
    assert_eq!(b.row_count(), 0);
    assert_eq!(b.bytes(), 0);
    assert_eq!(b.flush_reason(1_000), Some(FlushReason::Age));
    assert_eq!(b.take().acks, vec!["m1", "m2"]);
}

#[test]
fn a_group_leaves_with_its_rows_and_acks_and_the_rest_stays() {
    let mut b: Batcher<u32, &str> = Batcher::new(LIMITS);
    b.push_in(3, vec![(1u32, 10), (2, 10)], "p3-a", 0);
    b.push_in(5, vec![(3u32, 10)], "p5-a", 1);
    b.push_in(3, vec![(4u32, 10)], "p3-b", 2);
    assert_eq!(b.groups(), vec![3, 5]);
    // Rows dropped by the presence check keep the groups aligned.
    b.retain_rows(|r| *r != 2, |_| 10);
    assert_eq!(b.remove_group(3, |_| 10), vec!["p3-a", "p3-b"]);
    assert_eq!(b.rows(), &[3]);
    assert_eq!(b.acks(), &["p5-a"]);
    assert_eq!(b.bytes(), 10);
    assert_eq!(b.groups(), vec![5]);
    assert!(b.remove_group(3, |_| 10).is_empty());
    assert_eq!(b.remove_group(5, |_| 10), vec!["p5-a"]);
    assert!(b.is_empty());
    assert_eq!(b.flush_reason(10_000), None);
}
