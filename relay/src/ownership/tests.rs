use super::*;

fn view(partitions: u32, relays: usize, leased: &[u32], mine: &[u32]) -> View {
    View {
        partitions,
        relays,
        leased: leased.iter().copied().collect(),
        mine: mine.iter().copied().collect(),
        releasing: BTreeSet::new(),
    }
}

#[test]
fn the_share_covers_every_partition() {
    assert_eq!(share(16, 1), 16);
    assert_eq!(share(16, 2), 8);
    assert_eq!(share(16, 3), 6);
    assert_eq!(share(16, 0), 16);
    assert_eq!(share(1, 4), 1);
    for relays in 1..20 {
        assert!(share(16, relays) as usize * relays >= 16);
    }
}

#[test]
fn a_lone_relay_takes_every_free_partition_from_its_offset() {
    let steps = plan(&view(4, 1, &[], &[]), 2);
    assert_eq!(
        steps,
        vec![
            Step::Acquire(2),
            Step::Acquire(3),
            Step::Acquire(0),
            Step::Acquire(1)
        ]
    );
    // Partitions someone holds are never tried.
    let steps = plan(&view(4, 1, &[0, 3], &[]), 0);
    assert_eq!(steps, vec![Step::Acquire(1), Step::Acquire(2)]);
}

#[test]
fn a_relay_over_its_share_releases_its_highest_partitions_once() {
    let all: Vec<u32> = (0..8).collect();
    let mut v = view(8, 2, &all, &all);
    assert_eq!(
        plan(&v, 0),
        vec![
            Step::Release(7),
            Step::Release(6),
            Step::Release(5),
            Step::Release(4)
        ]
    );
    // Releases under way are not asked for again, and nothing is acquired
    // while handing over.
    v.releasing = [7, 6].into_iter().collect();
    assert_eq!(plan(&v, 0), vec![Step::Release(5), Step::Release(4)]);
    v.releasing = [7, 6, 5, 4].into_iter().collect();
    assert!(plan(&v, 0).is_empty());
}

#[test]
fn a_relay_at_its_share_does_nothing_and_a_short_one_fills_up() {
    assert!(plan(&view(8, 2, &[0, 1, 2, 3, 4, 5, 6, 7], &[0, 1, 2, 3]), 0).is_empty());
    // The other relay released 4..8; this one takes them.
    assert_eq!(
        plan(&view(8, 2, &[0, 1, 2, 3], &[]), 0),
        vec![
            Step::Acquire(4),
            Step::Acquire(5),
            Step::Acquire(6),
            Step::Acquire(7)
        ]
    );
    // A dead peer's partitions expire and the survivor's share grows.
    assert_eq!(
        plan(&view(4, 1, &[0, 1], &[0, 1]), 0),
        vec![Step::Acquire(2), Step::Acquire(3)]
    );
}

#[test]
fn validity_ends_a_margin_before_the_server_can_expire_the_key() {
    let timing = LeaseTiming {
        ttl: Duration::from_secs(15),
    };
    assert_eq!(timing.renew_every(), Duration::from_secs(5));
    assert_eq!(timing.margin(), Duration::from_millis(1_500));
    let sent = Instant::now();
    assert_eq!(
        timing.valid_until(sent),
        sent + Duration::from_millis(13_500)
    );
    let short = LeaseTiming {
        ttl: Duration::from_secs(1),
    };
    assert_eq!(short.margin(), Duration::from_millis(200));
}

#[test]
fn the_fence_checks_epoch_and_time() {
    let fence = Fence::default();
    let now = Instant::now();
    let held = Held {
        epoch: 7,
        revision: 9,
        valid_until: now + Duration::from_secs(5),
    };
    fence.set(3, held);
    assert!(fence.valid(3, 7, now));
    assert!(!fence.valid(3, 6, now), "an older epoch is fenced off");
    assert!(!fence.valid(3, 7, now + Duration::from_secs(5)));
    assert!(!fence.valid(4, 7, now), "a partition not held");
    fence.set(
        5,
        Held {
            valid_until: now + Duration::from_secs(2),
            ..held
        },
    );
    assert_eq!(
        fence.valid_until(&[3, 5]),
        Some(now + Duration::from_secs(2))
    );
    assert_eq!(fence.valid_until(&[3, 4]), None);
    assert_eq!(fence.valid_until(&[]), None);
    assert_eq!(fence.partitions(), vec![3, 5]);
    assert_eq!(fence.remove(3), Some(held));
    assert_eq!(fence.partitions(), vec![5]);
}
