use super::*;

const R: Rate = Rate {
    events_per_sec: 10.0,
    burst: 20.0,
};

#[test]
fn burst_then_refill_at_the_rate() {
    let mut b = TokenBuckets::default();
    assert_eq!(b.take("k", R, 15, 0), Verdict::Allowed);
    assert_eq!(b.take("k", R, 5, 0), Verdict::Allowed);
    // Empty: 10 events need 1 s of refill.
    assert_eq!(b.take("k", R, 10, 0), Verdict::Limited { retry_after_s: 1 });
    assert_eq!(
        b.take("k", R, 10, 500),
        Verdict::Limited { retry_after_s: 1 }
    );
    assert_eq!(b.take("k", R, 10, 1_000), Verdict::Allowed);
    // Other keys have their own bucket.
    assert_eq!(b.take("other", R, 20, 1_000), Verdict::Allowed);
    // Refill stops at the burst.
    assert_eq!(b.take("k", R, 20, 100_000), Verdict::Allowed);
    assert_eq!(
        b.take("k", R, 1, 100_000),
        Verdict::Limited { retry_after_s: 1 }
    );
}

#[test]
fn retry_after_says_when_the_request_would_pass() {
    let mut b = TokenBuckets::default();
    let slow = Rate {
        events_per_sec: 2.0,
        burst: 10.0,
    };
    assert_eq!(b.take("k", slow, 10, 0), Verdict::Allowed);
    assert_eq!(
        b.take("k", slow, 9, 0),
        Verdict::Limited { retry_after_s: 5 }
    );
    assert_eq!(b.take("k", slow, 9, 4_500), Verdict::Allowed);
}

#[test]
fn oversized_requests_pass_on_a_full_bucket_and_leave_debt() {
    let mut b = TokenBuckets::default();
    assert_eq!(b.take("k", R, 50, 0), Verdict::Allowed);
    // 30 in debt: a burst-sized request waits (30 + 20) / 10 = 5 s.
    assert_eq!(b.take("k", R, 20, 0), Verdict::Limited { retry_after_s: 5 });
    assert_eq!(b.take("k", R, 20, 5_000), Verdict::Allowed);
}

#[test]
fn zero_rate_disables_and_clock_steps_back_are_harmless() {
    let mut b = TokenBuckets::default();
    let off = Rate {
        events_per_sec: 0.0,
        burst: 0.0,
    };
    for _ in 0..100 {
        assert_eq!(b.take("k", off, 1_000_000, 0), Verdict::Allowed);
    }
    assert_eq!(b.take("j", R, 20, 10_000), Verdict::Allowed);
    assert_eq!(b.take("j", R, 1, 0), Verdict::Limited { retry_after_s: 1 });
    assert_eq!(b.take("j", R, 10, 11_000), Verdict::Allowed);
}

#[test]
fn many_keys_stay_bounded() {
    let mut b = TokenBuckets::default();
    for i in 0..(MAX_TRACKED_KEYS + 500) {
        b.take(&format!("k{i}"), R, 1, i as i64 * 1_000);
    }
    assert!(
        b.buckets.len() <= MAX_TRACKED_KEYS + 1,
        "{}",
        b.buckets.len()
    );
}

#[test]
fn config_from_vars() {
    let d = RateLimits::from_vars(None, None, None).unwrap();
    assert_eq!(d.rate_for("x"), DEFAULT_RATE);
    let l = RateLimits::from_vars(
        Some("50"),
        None,
        Some(r#"{"wk_big":{"events_per_sec":1e6,"burst":1e6}}"#),
    )
    .unwrap();
    assert_eq!(
        l.rate_for("x"),
        Rate {
            events_per_sec: 50.0,
            burst: 50.0
        }
    );
    assert_eq!(l.rate_for("wk_big").events_per_sec, 1e6);
    let l = RateLimits::from_vars(Some("50"), Some("200"), None).unwrap();
    assert_eq!(l.rate_for("x").burst, 200.0);
    assert!(RateLimits::from_vars(Some("-1"), None, None)
        .unwrap_err()
        .to_string()
        .contains("RATE_LIMIT_EVENTS_PER_SEC"));
    assert!(RateLimits::from_vars(None, Some("NaN"), None).is_err());
    assert!(RateLimits::from_vars(None, None, Some("[1]")).is_err());
    assert!(
        RateLimits::from_vars(None, None, Some(r#"{"k":{"events_per_sec":-1,"burst":1}}"#))
            .is_err()
    );
}
