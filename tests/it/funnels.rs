//! The aggregator's funnels on a real clickhouse-server (18.16 here): a
//! generated shop's events, written by the relay's sink in shuffled order,
//! and every step's count compared with the same funnel computed here from
//! the rows (for each user and each step-1 event, the earliest matching
//! event of each next step, strictly later and within the window; the
//! longest chain wins, as `windowFunnel` defines it). Plus hand-made users
//! at the window's edges, ties and reversed events.
//!
//! The shop and its rows come from `spoor_tests::fixtures`, the database
//! they are stored in from `support::store_with`, as for the other
//! read-path tests.

use std::collections::{BTreeMap, HashMap};

use spoor_aggregator::query::funnel::{FunnelRequest, FunnelStep};
use spoor_aggregator::query::{Dimension, PropertyFilter};
use spoor_aggregator::store::funnel::{run_funnel, FunnelAnswer};
use spoor_aggregator::store::ReadError;
use spoor_store::EventRow;
use spoor_tests::fixtures::{row, shop, Rng, DAY, HOUR, MINUTE, T0};

use crate::support::store_with;

const SINCE: i64 = T0;
const UNTIL: i64 = T0 + 2 * DAY;

fn step(event: &str, properties: &[(&str, &str)]) -> FunnelStep {
    FunnelStep {
        event: event.into(),
        properties: properties
            .iter()
            .map(|(name, value)| PropertyFilter {
                name: (*name).into(),
                value: (*value).into(),
            })
            .collect(),
    }
}

fn request(steps: Vec<FunnelStep>, window_seconds: i64) -> FunnelRequest {
    FunnelRequest {
        project_id: "shop".into(),
        steps,
        window_seconds,
        since_ms: SINCE,
        until_ms: UNTIL,
        breakdown: None,
        breakdown_limit: 10,
    }
}

/// The raw JSON text of a top-level property, as `visitParamExtractRaw`
/// sees it; the filter matches it or its JSON-quoted form.
fn matches(r: &EventRow, s: &FunnelStep) -> bool {
    r.event == s.event
        && s.properties.iter().all(|p| {
            let props: serde_json::Value = serde_json::from_str(&r.properties).unwrap();
            let raw = match props.get(&p.name) {
                Some(serde_json::Value::String(v)) => v.clone(),
                Some(other) => other.to_string(),
                None => return false,
            };
            raw == p.value
        })
}

/// Per user: (level, the country of their first step-1 event), computed
/// from the rows alone.
fn reference(rows: &[EventRow], q: &FunnelRequest) -> HashMap<String, (usize, String)> {
    let window = q.window_seconds * 1000;
    let tick = q.tick_ms();
    let mut by_user: HashMap<String, Vec<&EventRow>> = HashMap::new();
    for r in rows.iter().filter(|r| {
        *r.project_id == *q.project_id && r.ts_ms >= q.since_ms && r.ts_ms < q.until_ms + window
    }) {
        let who = if r.user_id.is_empty() {
            &r.anonymous_id
        } else {
            &r.user_id
        };
        by_user.entry(who.clone()).or_default().push(r);
    }
    let mut out = HashMap::new();
    for (who, mut events) in by_user {
        events.sort_by_key(|r| r.ts_ms);
        let ticks = |r: &EventRow| (r.ts_ms - q.since_ms) / tick;
        let starts: Vec<&EventRow> = events
            .iter()
            .copied()
            .filter(|r| r.ts_ms < q.until_ms && matches(r, &q.steps[0]))
            .collect();
        let Some(first) = starts.first() else {
            continue;
        };
        let mut best = 0;
        for start in &starts {
            let (begin, mut at, mut level) = (ticks(start), ticks(start), 1);
            for s in &q.steps[1..] {
                let next = events
                    .iter()
                    .find(|r| ticks(r) > at && ticks(r) - begin <= window / tick && matches(r, s));
                match next {
                    Some(r) => {
                        at = ticks(r);
                        level += 1;
                    }
                    None => break,
                }
            }
            best = best.max(level);
        }
        out.insert(who, (best, first.country.to_string()));
    }
    out
}

fn entered(levels: impl Iterator<Item = usize> + Clone, n: usize) -> Vec<u64> {
    (1..=n)
        .map(|k| levels.clone().filter(|&l| l >= k).count() as u64)
        .collect()
}

fn entered_of(steps: &[spoor_aggregator::query::funnel::FunnelStepResult]) -> Vec<u64> {
    steps.iter().map(|s| s.entered).collect()
}

async fn funnel(client: &clickhouse::Client, q: &FunnelRequest) -> FunnelAnswer {
    run_funnel(client, q)
        .await
        .unwrap_or_else(|e| panic!("{q:?}: {e}"))
}

/// Checks the answer (with or without breakdown) against the reference.
fn check(rows: &[EventRow], q: &FunnelRequest, got: &FunnelAnswer) {
    let want = reference(rows, q);
    let n = q.steps.len();
    let all = entered(want.values().map(|(l, _)| *l), n);
    assert!(all[0] > 0, "the data set exercises {q:?}");
    assert_eq!(entered_of(&got.steps), all, "{q:?}");
    for (k, s) in got.steps.iter().enumerate() {
        let next = all.get(k + 1).copied().unwrap_or(all[k]);
        assert_eq!((s.converted, s.dropped), (next, all[k] - next));
    }
    let Some(_) = q.breakdown else {
        assert!(got.groups.is_empty() && got.other.is_none());
        return;
    };
    let mut by_value: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (level, country) in want.values() {
        by_value.entry(country).or_default().push(*level);
    }
    let mut groups: Vec<(&str, Vec<u64>)> = by_value
        .iter()
        .map(|(v, levels)| (*v, entered(levels.iter().copied(), n)))
        .collect();
    groups.sort_by(|a, b| b.1[0].cmp(&a.1[0]).then(a.0.cmp(b.0)));
    let top = q.breakdown_limit as usize;
    let got_groups: Vec<(&str, Vec<u64>)> = got
        .groups
        .iter()
        .map(|g| (g.value.as_str(), entered_of(&g.steps)))
        .collect();
    assert_eq!(got_groups, groups[..top.min(groups.len())], "{q:?}");
    let rest: Vec<u64> = (0..n)
        .map(|k| groups.iter().skip(top).map(|g| g.1[k]).sum())
        .collect();
    match &got.other {
        Some(other) => assert_eq!(entered_of(other), rest),
        None => assert_eq!(rest[0], 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnels_match_a_computation_over_the_same_rows() {
    let rows = shop();
    let client = store_with("funnels", &rows, 4).await;

    // "What is the drop-off between add_to_cart and payment?"
    let q = request(vec![step("add_to_cart", &[]), step("payment", &[])], 3600);
    let got = funnel(&client, &q).await;
    check(&rows, &q, &got);
    assert_eq!(got.tick_ms, 1);
    let cart = &got.steps[0];
    assert!(cart.dropped > 0 && cart.converted > 0, "{got:?}");
    assert_eq!(
        cart.drop_off_rate,
        cart.dropped as f64 / cart.entered as f64
    );
    assert!((got.steps[1].conversion_rate - (1.0 - cart.drop_off_rate)).abs() < 1e-12);

    // Four steps, two of them filtered on properties, by country.
    let mut q = request(
        vec![
            step("view_item", &[]),
            step("add_to_cart", &[("plan", "pro")]),
            step("checkout", &[]),
            step("payment", &[("method", "card")]),
        ],
        2 * 3600,
    );
    let got = funnel(&client, &q).await;
    check(&rows, &q, &got);
    assert!(got.steps[2].entered > 0, "{got:?}");
    q.breakdown = Some(Dimension::Country);
    q.breakdown_limit = 3;
    let by_country = funnel(&client, &q).await;
    check(&rows, &q, &by_country);
    assert_eq!(by_country.groups.len(), 3);
    assert!(by_country.other.is_some());
    assert_eq!(
        by_country.steps, got.steps,
        "the totals are the plain funnel"
    );
    q.breakdown_limit = 10;
    let all = funnel(&client, &q).await;
    check(&rows, &q, &all);
    assert!(all.other.is_none());

    // A number property matches its JSON text.
    let q = request(
        vec![
            step("add_to_cart", &[]),
            step("payment", &[("amount", "7")]),
        ],
        86_400,
    );
    check(&rows, &q, &funnel(&client, &q).await);

    // The same event twice: two distinct events, one after the other.
    let q = request(vec![step("view_item", &[]), step("view_item", &[])], 600);
    check(&rows, &q, &funnel(&client, &q).await);

    // A long span compares 10 ms ticks.
    let mut q = request(
        vec![
            step("view_item", &[]),
            step("add_to_cart", &[]),
            step("checkout", &[]),
        ],
        30 * 86_400,
    );
    q.since_ms = UNTIL - 40 * DAY;
    let got = funnel(&client, &q).await;
    assert_eq!(got.tick_ms, 10);
    check(&rows, &q, &got);
}

/// Hand-made users, one rule each, for add_to_cart → payment in an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnel_edges_window_ties_and_order() {
    let mut rng = Rng(7);
    let t = SINCE + 10 * HOUR;
    let mut rows = Vec::new();
    let mut add = |ts: i64, name: &str, who: &str| {
        let r = row(&mut rng, "edge", ts, name, who, &format!("dev-{who}"));
        rows.push(r);
    };
    // Converts: payment exactly one window after the cart.
    add(t, "add_to_cart", "at-window");
    add(t + HOUR, "payment", "at-window");
    // Does not: one millisecond later.
    add(t, "add_to_cart", "past-window");
    add(t + HOUR + 1, "payment", "past-window");
    // Does not: the same millisecond.
    add(t, "payment", "tie");
    add(t, "add_to_cart", "tie");
    // Does not: payment before the cart (written in the other order).
    add(t + 5 * MINUTE, "add_to_cart", "reversed");
    add(t, "payment", "reversed");
    // Not entered: the cart is before the range.
    add(SINCE - MINUTE, "add_to_cart", "early");
    add(SINCE + MINUTE, "payment", "early");
    // Converts: the cart in the range's last millisecond, payment after it.
    add(UNTIL - 1, "add_to_cart", "late");
    add(UNTIL + 10 * MINUTE, "payment", "late");
    // Not entered: the cart at the range's end.
    add(UNTIL, "add_to_cart", "after");
    add(UNTIL + MINUTE, "payment", "after");
    // Converts from its second cart: the first is too long before.
    add(t, "add_to_cart", "second-try");
    add(t + 90 * MINUTE, "add_to_cart", "second-try");
    add(t + 2 * HOUR, "payment", "second-try");
    // Converts once although it paid twice.
    add(t, "add_to_cart", "twice");
    add(t + MINUTE, "payment", "twice");
    add(t + 2 * MINUTE, "payment", "twice");
    let client = store_with("funnel_edges", &rows, 3).await;

    let mut q = request(vec![step("add_to_cart", &[]), step("payment", &[])], 3600);
    q.project_id = "edge".into();
    let got = funnel(&client, &q).await;
    // Entered: at-window, past-window, tie, reversed, late, second-try, twice.
    assert_eq!(entered_of(&got.steps), [7, 4], "{got:#?}");
    assert_eq!(got.steps[0].dropped, 3);
    assert_eq!(
        got.steps[1].converted, 4,
        "the last step's converted is its entered"
    );
    assert_eq!(got.steps[1].drop_off_rate, 0.0);
    assert_eq!(got.steps[1].overall_conversion_rate, 4.0 / 7.0);
    check(&rows, &q, &got);

    // Hostile values are bound: nothing matches, nothing breaks.
    let mut q = request(
        vec![
            step("add_to_cart' OR 1=1 --", &[]),
            step("payment", &[("plan", "x\\' OR '1'='1")]),
        ],
        3600,
    );
    q.project_id = "edge' OR '1'='1".into();
    q.breakdown = Some(Dimension::Country);
    let got = funnel(&client, &q).await;
    assert_eq!(entered_of(&got.steps), [0, 0]);
    assert!(got.groups.is_empty() && got.other.is_none());

    // A refused request is the caller's error, not the store's.
    let mut q = request(vec![step("a", &[])], 3600);
    q.project_id = "edge".into();
    assert!(matches!(
        run_funnel(&client, &q).await,
        Err(ReadError::Request(_))
    ));
}
