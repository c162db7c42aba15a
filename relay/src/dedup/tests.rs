use super::{DedupWindow, Delivery, Origin, Verdict};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

#[test]
fn first_copy_is_kept_and_second_is_dropped() {
    let mut w = DedupWindow::new(1_000, 10);
    assert!(w.insert(id(1), 0));
    assert!(!w.insert(id(1), 10));
    assert!(w.insert(id(2), 10));
    assert_eq!(w.len(), 2);
}

#[test]
fn ids_expire_after_the_window() {
    let mut w = DedupWindow::new(1_000, 10);
    assert!(w.insert(id(1), 5_000));
    // Still inside the window one millisecond before it closes.
    assert!(!w.insert(id(1), 5_999));
    // At exactly window_ms after first sight the id is forgotten.
    assert!(w.insert(id(1), 6_000));
}

#[test]
fn a_duplicate_does_not_refresh_the_age() {
    let mut w = DedupWindow::new(1_000, 10);
    assert!(w.insert(id(1), 0));
    assert!(!w.insert(id(1), 900));
    assert!(w.insert(id(1), 1_000));
}

#[test]
fn early_times_do_not_underflow() {
    let mut w = DedupWindow::new(600_000, 10);
    assert!(w.insert(id(1), 0));
    assert!(!w.insert(id(1), 1));
    w.evict_expired(0);
    assert_eq!(w.len(), 1);
}

#[test]
fn count_bound_evicts_oldest_first() {
    let mut w = DedupWindow::new(u64::MAX, 3);
    for n in 1..=3 {
        assert!(w.insert(id(n), n as u64));
    }
    assert!(w.insert(id(4), 4));
    assert_eq!(w.len(), 3);
    assert!(!w.contains(id(1)), "oldest id was evicted by count");
    assert!(w.contains(id(2)) && w.contains(id(3)) && w.contains(id(4)));
    // The evicted id is new again; the next oldest goes.
    assert!(w.insert(id(1), 5));
    assert!(!w.contains(id(2)));
}

#[test]
fn evict_expired_removes_only_old_entries() {
    let mut w = DedupWindow::new(100, 100);
    for n in 0..10u64 {
        w.insert(id(n as u128), n * 20);
    }
    // now=200: ids seen at <= 100 are gone (0,20,40,60,80,100).
    w.evict_expired(200);
    assert_eq!(w.len(), 4);
    assert!(!w.contains(id(5)));
    assert!(w.contains(id(6)));
}

#[test]
fn zero_max_ids_disables_dedup() {
    let mut w = DedupWindow::new(1_000, 0);
    assert!(w.insert(id(1), 0));
    assert!(w.insert(id(1), 1));
    assert!(w.is_empty());
}

#[test]
fn table_of_sequences() {
    /// (window_ms, max_ids, [(id, now_ms, expected_new)])
    type Case = (u64, usize, &'static [(u128, u64, bool)]);
    let cases: &[Case] = &[
        (
            10,
            2,
            &[
                (1, 0, true),
                (2, 1, true),
                (3, 2, true),
                (1, 3, true),
                (3, 4, false),
            ],
        ),
        (
            10,
            5,
            &[
                (1, 0, true),
                (1, 9, false),
                (1, 10, true),
                (1, 19, false),
                (1, 20, true),
            ],
        ),
        (0, 5, &[(1, 0, true), (1, 0, true)]),
    ];
    for (i, (window, max, steps)) in cases.iter().enumerate() {
        let mut w = DedupWindow::new(*window, *max);
        for (step, (n, now, expected)) in steps.iter().enumerate() {
            assert_eq!(w.insert(id(*n), *now), *expected, "case {i} step {step}");
        }
    }
}

#[test]
fn claims_drop_first_deliveries_but_not_redeliveries() {
    use Delivery::*;
    let mut w = DedupWindow::new(1_000, 10);
    w.claim(id(1), 0);
    assert_eq!(w.origin(id(1)), Some(Origin::Claimed));
    // A first delivery of a claimed id: the claimer's message is unacked
    // until stored, so this copy can go.
    assert_eq!(
        w.observe(id(1), First, 1),
        Verdict::Duplicate(Origin::Claimed)
    );
    // A redelivery may be the claimer's own message coming back after it
    // died: keep it, subject to a ClickHouse check, and own it from now on.
    assert_eq!(w.observe(id(1), Redelivered, 2), Verdict::KeepIfNotStored);
    assert_eq!(w.origin(id(1)), Some(Origin::Own));
    // Once owned, every later copy is a duplicate, redelivered or not.
    assert_eq!(
        w.observe(id(1), Redelivered, 3),
        Verdict::Duplicate(Origin::Own)
    );
    assert_eq!(w.observe(id(1), First, 4), Verdict::Duplicate(Origin::Own));
}

#[test]
fn unknown_ids_are_kept_and_redeliveries_checked() {
    use Delivery::*;
    let mut w = DedupWindow::new(1_000, 10);
    assert_eq!(w.observe(id(1), First, 0), Verdict::Keep);
    assert_eq!(w.observe(id(2), Redelivered, 0), Verdict::KeepIfNotStored);
    assert_eq!(w.origin(id(2)), Some(Origin::Own));
    // A claim never downgrades an id this relay holds.
    w.claim(id(1), 1);
    assert_eq!(w.origin(id(1)), Some(Origin::Own));
}

#[test]
fn a_claim_upgraded_to_own_keeps_its_age_and_claims_expire() {
    use Delivery::*;
    let mut w = DedupWindow::new(100, 10);
    w.claim(id(1), 0);
    assert_eq!(w.observe(id(1), Redelivered, 50), Verdict::KeepIfNotStored);
    // Age counts from the claim at 0.
    assert_eq!(w.observe(id(1), First, 100), Verdict::Keep);
    w.claim(id(2), 200);
    assert_eq!(w.observe(id(2), First, 300), Verdict::Keep);
}

#[test]
fn claims_count_against_the_bound() {
    let mut w = DedupWindow::new(u64::MAX, 2);
    w.claim(id(1), 0);
    w.claim(id(2), 1);
    w.claim(id(3), 2);
    assert_eq!(w.len(), 2);
    assert!(!w.contains(id(1)));
    let mut off = DedupWindow::new(1_000, 0);
    off.claim(id(1), 0);
    assert!(off.is_empty());
    assert_eq!(
        off.observe(id(1), Delivery::Redelivered, 0),
        Verdict::KeepIfNotStored
    );
}
