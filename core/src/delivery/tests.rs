use super::*;

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// (header, query, project, accepted event names, expected mode)
type Case<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    &'a BTreeSet<String>,
    AckMode,
);

#[test]
fn ack_mode_table() {
    let critical =
        CriticalEvents::from_json(r#"{"shop":["purchase","refund"],"blog":[]}"#).unwrap();
    let page = names(&["page_view"]);
    let buy = names(&["page_view", "purchase"]);
    let cases: &[Case] = &[
        (None, None, "shop", &page, AckMode::Fast),
        (Some("durable"), None, "shop", &page, AckMode::Durable),
        (Some(" Durable "), None, "shop", &page, AckMode::Durable),
        (Some("fast"), None, "shop", &page, AckMode::Fast),
        (Some("bogus"), None, "shop", &page, AckMode::Fast),
        (None, Some("ack=durable"), "shop", &page, AckMode::Durable),
        (
            None,
            Some("?x=1&ack=durable"),
            "shop",
            &page,
            AckMode::Durable,
        ),
        (None, Some("ack=fast"), "shop", &page, AckMode::Fast),
        (None, Some("back=durable"), "shop", &page, AckMode::Fast),
        (None, Some("ack"), "shop", &page, AckMode::Fast),
        (None, None, "shop", &buy, AckMode::Durable),
        // A client cannot downgrade a critical batch.
        (
            Some("fast"),
            Some("ack=fast"),
            "shop",
            &buy,
            AckMode::Durable,
        ),
        // Critical names are per project.
        (None, None, "blog", &buy, AckMode::Fast),
        (None, None, "other", &buy, AckMode::Fast),
    ];
    for (i, (h, q, p, n, want)) in cases.iter().enumerate() {
        assert_eq!(
            ack_mode(*h, *q, p, n, &critical),
            *want,
            "case {i}: {h:?} {q:?} {p} {n:?}"
        );
    }
    assert_eq!(AckMode::Fast.as_str(), "fast");
    assert_eq!(AckMode::Durable.as_str(), "durable");
}

#[test]
fn critical_events_config_errors_say_what_to_send() {
    assert!(CriticalEvents::from_json("[]").is_err());
    assert!(CriticalEvents::from_json(r#"{"shop":"purchase"}"#)
        .unwrap_err()
        .to_string()
        .contains("list of event names"));
    assert_eq!(
        CriticalEvents::from_json("{}").unwrap(),
        CriticalEvents::default()
    );
}

#[test]
fn retry_schedule_backs_off_within_budget() {
    let s = RetrySchedule {
        attempts: 5,
        base_delay_ms: 100,
        max_delay_ms: 300,
        budget_ms: 10_000,
    };
    let delays: Vec<Option<u64>> = (0..6).map(|a| s.delay_before(a, 0, 1_000)).collect();
    assert_eq!(
        delays,
        vec![Some(0), Some(100), Some(200), Some(300), Some(300), None]
    );
    // An attempt that could end past the budget is not started.
    assert_eq!(s.delay_before(1, 8_800, 1_000), Some(100));
    assert_eq!(s.delay_before(1, 8_950, 1_000), None);
    // The first attempt is always made, even with no budget.
    let none = RetrySchedule {
        attempts: 0,
        base_delay_ms: 1,
        max_delay_ms: 1,
        budget_ms: 0,
    };
    assert_eq!(none.delay_before(0, 99, 99), Some(0));
    assert_eq!(none.delay_before(1, 0, 0), None);
    // Huge attempt numbers and times saturate instead of overflowing.
    let big = RetrySchedule {
        attempts: u32::MAX,
        base_delay_ms: u64::MAX,
        max_delay_ms: u64::MAX,
        budget_ms: u64::MAX,
    };
    assert_eq!(big.delay_before(200, u64::MAX, u64::MAX), Some(u64::MAX));
    let d = RetrySchedule::default();
    let total: u64 = (0..d.attempts)
        .filter_map(|a| d.delay_before(a, 0, 0))
        .sum();
    assert!(
        total < d.budget_ms / 10,
        "default backoff totals {total} ms"
    );
}
