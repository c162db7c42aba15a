//! The aggregator's timelines on a real clickhouse-server (18.16 here), read
//! from the device tables the relay's writes feed: paging walks every event
//! once and in order (ties on the millisecond included, duplicates not yet
//! merged hidden), newest first is the reverse, a user's timeline is theirs
//! plus their devices' anonymous events, the default window is the last
//! hour, and hostile ids and cursors are bound or refused.

use std::collections::HashSet;

use spoor_aggregator::query::timeline::{Order, TimelineRequest};
use spoor_aggregator::store::timeline::{run_timeline, TimelineEvent};
use spoor_aggregator::store::ReadError;
use spoor_store::EventRow;

use spoor_tests::fixtures::{row, shuffle, Rng, HOUR, T0};

use crate::support::store_with;

/// "Now" for these tests: 2026-11-22T12:00:00Z.
const NOW: i64 = T0 + 12 * HOUR;

/// About three hours from NOW - 3 h (a few events past NOW): device `dev-a` (alice, anonymous, and bob on the
/// same device), alice's `dev-b`, a stranger's `dev-c`; bursts of events on
/// one millisecond; the same ids in another project.
fn rows() -> Vec<EventRow> {
    let mut rng = Rng(0x7133);
    let mut rows = Vec::new();
    let mut ts = NOW - 3 * HOUR;
    for n in 0..260 {
        // Bursts of seven events on one millisecond (n = 10..=16, 30..=36, ...).
        if !(11..=16).contains(&(n % 20)) {
            ts += 1 + rng.below(110_000) as i64;
        }
        let (user, device) = match n % 6 {
            0 | 1 => ("alice", "dev-a"),
            2 => ("", "dev-a"),
            3 => ("bob", "dev-a"),
            4 => ("alice", "dev-b"),
            _ => ("", "dev-c"),
        };
        let name = *rng.pick(&["page_view", "click", "add_to_cart"]);
        let mut r = row(&mut rng, "shop", ts, name, user, device);
        r.session_id = format!("s{}", n / 40);
        r.page_path = format!("/p/{}", n % 5);
        r.country = "DE".into();
        r.properties = if n == 7 {
            "{not json".into()
        } else {
            format!("{{\"n\":{n},\"tag\":\"t{}\"}}", n % 3)
        };
        rows.push(r);
        if n % 50 == 0 {
            let mut other = rows.last().unwrap().clone();
            other.project_id = "other".into();
            other.event_id = rng.uuid();
            rows.push(other);
        }
    }
    shuffle(&mut rng, &mut rows);
    rows
}

fn device(id: &str) -> TimelineRequest {
    TimelineRequest {
        project_id: "shop".into(),
        anonymous_id: Some(id.into()),
        since_ms: Some(NOW - 4 * HOUR),
        until_ms: Some(NOW),
        ..TimelineRequest::default()
    }
}

/// Every page of `request`, following `next_cursor`.
async fn walk(client: &clickhouse::Client, request: &TimelineRequest) -> Vec<TimelineEvent> {
    let mut all = Vec::new();
    let mut request = request.clone();
    for _ in 0..1000 {
        let page = run_timeline(client, &request, NOW).await.unwrap();
        assert!(page.events.len() <= request.limit.unwrap_or(100) as usize);
        all.extend(page.events);
        match page.next_cursor {
            Some(c) => request.cursor = Some(c),
            None => return all,
        }
    }
    panic!("paging did not end");
}

fn ids(events: &[TimelineEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timelines_page_through_every_event_once_in_order() {
    let rows = rows();
    // Some rows inserted twice, in a later insert: duplicates the
    // ReplacingMergeTree has not merged yet.
    let mut written = rows.clone();
    written.extend(rows.iter().step_by(9).cloned());
    let client = store_with("timeline", &written, 5).await;

    let expect = |keep: &dyn Fn(&EventRow) -> bool| {
        let mut want: Vec<&EventRow> = rows
            .iter()
            .filter(|r| &*r.project_id == "shop" && r.ts_ms < NOW && keep(r))
            .collect();
        want.sort_by_key(|r| r.ts_ms);
        want
    };

    // One device, oldest first, in pages of 7 (bursts straddle pages).
    let mut q = device("dev-a");
    q.limit = Some(7);
    let paged = walk(&client, &q).await;
    let want = expect(&|r| r.anonymous_id == "dev-a");
    assert_eq!(paged.len(), want.len());
    let unique: HashSet<&str> = ids(&paged).into_iter().collect();
    assert_eq!(unique.len(), paged.len(), "an event came twice");
    let want_ids: HashSet<String> = want.iter().map(|r| r.event_id.to_string()).collect();
    assert!(paged.iter().all(|e| want_ids.contains(&e.event_id)));
    assert!(paged.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    // Ties are in one fixed order: the same as one page of everything.
    q.limit = Some(1000);
    let whole = run_timeline(&client, &q, NOW).await.unwrap();
    assert_eq!(whole.next_cursor, None);
    assert_eq!(ids(&whole.events), ids(&paged));

    // Newest first is the same walk backwards.
    let mut q = device("dev-a");
    q.limit = Some(7);
    q.order = Order::NewestFirst;
    let backwards = walk(&client, &q).await;
    let mut forwards = ids(&paged);
    forwards.reverse();
    assert_eq!(ids(&backwards), forwards);

    // A user: their events on both devices and the devices' anonymous
    // events, not bob's on the shared device, not a stranger's.
    let q = TimelineRequest {
        project_id: "shop".into(),
        user_id: Some("alice".into()),
        since_ms: Some(NOW - 4 * HOUR),
        until_ms: Some(NOW),
        limit: Some(13),
        ..TimelineRequest::default()
    };
    let alice = walk(&client, &q).await;
    let want = expect(&|r| {
        (r.anonymous_id == "dev-a" || r.anonymous_id == "dev-b")
            && (r.user_id == "alice" || r.user_id.is_empty())
    });
    let mut got_ids = ids(&alice);
    got_ids.sort();
    let mut want_ids: Vec<String> = want.iter().map(|r| r.event_id.to_string()).collect();
    want_ids.sort();
    assert_eq!(got_ids, want_ids);
    assert!(alice.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    assert!(alice.iter().any(|e| e.user_id.is_empty()));
    assert!(alice.iter().any(|e| e.anonymous_id == "dev-b"));

    // What one event looks like.
    let first = &paged[0];
    let source = want_row(&rows, &first.event_id);
    assert_eq!(first.ts_ms, source.ts_ms);
    assert!(first.time.starts_with("2026-11-22T09:0"), "{}", first.time);
    assert_eq!(first.time[19..], format!(".{:03}Z", source.ts_ms % 1000));
    assert_eq!(first.session_id, source.session_id);
    assert_eq!(first.page_path, source.page_path);
    assert_eq!(first.country, "DE");
    assert_eq!(
        first.properties,
        serde_json::from_str::<serde_json::Value>(&source.properties).unwrap()
    );
    let broken = paged
        .iter()
        .find(|e| e.properties == serde_json::json!("{not json"));
    assert!(broken.is_some(), "unparsable properties come back as text");
}

fn want_row<'a>(rows: &'a [EventRow], id: &str) -> &'a EventRow {
    rows.iter()
        .find(|r| r.event_id.to_string() == id)
        .unwrap_or_else(|| panic!("no row {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_defaults_and_hostile_input() {
    let rows = rows();
    let client = store_with("timeline_hostile", &rows, 2).await;

    // No window: the hour before now.
    let q = TimelineRequest {
        project_id: "shop".into(),
        anonymous_id: Some("dev-c".into()),
        limit: Some(1000),
        ..TimelineRequest::default()
    };
    let page = run_timeline(&client, &q, NOW).await.unwrap();
    assert_eq!((page.since_ms, page.until_ms), (NOW - HOUR, NOW));
    let want = rows
        .iter()
        .filter(|r| {
            &*r.project_id == "shop"
                && r.anonymous_id == "dev-c"
                && (NOW - HOUR..NOW).contains(&r.ts_ms)
        })
        .count();
    assert!(want > 0);
    assert_eq!(page.events.len(), want);
    assert!(page
        .events
        .iter()
        .all(|e| e.ts_ms >= NOW - HOUR && e.ts_ms < NOW));

    // Hostile ids are bound: they match nothing.
    for hostile in [
        "dev-a' OR '1'='1",
        "dev-a\\' OR 1=1 --",
        "dev-a') OR anonymous_id != ('",
        "%",
    ] {
        let mut q = device(hostile);
        let page = run_timeline(&client, &q, NOW).await.unwrap();
        assert!(page.events.is_empty(), "{hostile}");
        q.anonymous_id = None;
        q.user_id = Some(hostile.into());
        let page = run_timeline(&client, &q, NOW).await.unwrap();
        assert!(page.events.is_empty(), "{hostile}");
    }
    // The project is bound too.
    let mut q = device("dev-a");
    q.project_id = "shop' OR '1'='1".into();
    assert!(run_timeline(&client, &q, NOW)
        .await
        .unwrap()
        .events
        .is_empty());

    // Hostile cursors and ids are refused before any query.
    for cursor in [
        "1:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b' OR 1=1",
        "1 OR 1=1:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "",
    ] {
        let mut q = device("dev-a");
        q.cursor = Some(cursor.into());
        assert!(matches!(
            run_timeline(&client, &q, NOW).await,
            Err(ReadError::Request(_))
        ));
    }
    for bad in [String::new(), "a\nb".into(), "x".repeat(300)] {
        assert!(matches!(
            run_timeline(&client, &device(&bad), NOW).await,
            Err(ReadError::Request(_))
        ));
    }
    assert_eq!(
        rows.len(),
        crate::support::count_rows(&client, "events_by_device").await as usize
    );
}
