//! Runs timeline queries and shapes their pages.

use clickhouse::Client;
use serde::Serialize;

use super::{cell_i64, ReadError};
use super::{cell_text, fetch_rows, StoreError};
use crate::query::timeline::{Cursor, Order, TimelinePlan, TimelineRequest, MAX_LINKED_USERS};

/// One event of a timeline. `properties` is the stored JSON parsed (an
/// object, normally), or the raw text if it does not parse.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEvent {
    pub event_id: String,
    pub event: String,
    pub ts_ms: i64,
    /// `ts_ms` as RFC 3339 in UTC with milliseconds.
    pub time: String,
    pub user_id: String,
    pub anonymous_id: String,
    pub session_id: String,
    pub properties: serde_json::Value,
    pub page_url: String,
    pub page_path: String,
    pub page_title: String,
    pub country: String,
    pub city: String,
    pub device_type: String,
    pub browser: String,
    pub os: String,
    pub app_name: String,
    pub app_version: String,
    /// A device's timeline: the user an anonymous event (`user_id` empty)
    /// resolves to, present only when the device is linked to exactly one
    /// user (see [`TimelinePage::linked_users`]); never on a shared
    /// device, nor on a user's timeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_user_id: Option<String>,
}

/// A user a device is linked to (a device's timeline only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkedUser {
    pub user_id: String,
    /// Event time of the first and last identify, alias or event that
    /// links them, within the device tables' retention.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// An identify or alias linked the device to the user.
    pub identified: bool,
    /// The device sent events with this `user_id`.
    pub seen_signed_in: bool,
}

/// One page. JSON: `{"since_ms": ..., "until_ms": ..., "order":
/// "oldest_first", "events": [...], "next_cursor": "1795305600123:0190..." |
/// null}`. Ask for the next page with the same window and order and
/// `cursor = next_cursor`; `null` means this was the last page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelinePage {
    pub since_ms: i64,
    pub until_ms: i64,
    pub order: Order,
    pub events: Vec<TimelineEvent>,
    pub next_cursor: Option<String>,
    /// A device's timeline: the users the device is linked to, first seen
    /// first (at most [`MAX_LINKED_USERS`]); absent on a user's timeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_users: Option<Vec<LinkedUser>>,
    /// A device's timeline: true when it is linked to more users than
    /// `linked_users` lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_users_truncated: Option<bool>,
}

/// Runs one timeline page; `now_ms` fills a missing `until_ms`.
pub async fn run_timeline(
    client: &Client,
    request: &TimelineRequest,
    now_ms: i64,
) -> Result<TimelinePage, ReadError> {
    let plan = request.plan(now_ms)?;
    let rows = fetch_rows(client, &plan.sql).await?;
    let mut page = timeline_page(&plan, &rows)?;
    if let Some(sql) = &plan.links_sql {
        let links = fetch_rows(client, sql).await?;
        resolve(&mut page, &links)?;
    }
    Ok(page)
}

/// A device's page with the users it is linked to, from the rows of
/// [`TimelinePlan::links_sql`] (at most `MAX_LINKED_USERS + 1`): lists
/// them, and resolves each anonymous event to the user when there is
/// exactly one.
pub fn resolve(page: &mut TimelinePage, rows: &[Vec<serde_json::Value>]) -> Result<(), StoreError> {
    let truncated = rows.len() > MAX_LINKED_USERS as usize;
    let users = rows
        .iter()
        .take(MAX_LINKED_USERS as usize)
        .map(|row| linked_user(row))
        .collect::<Result<Vec<_>, _>>()?;
    if let [only] = users.as_slice() {
        for e in &mut page.events {
            if e.user_id.is_empty() {
                e.resolved_user_id = Some(only.user_id.clone());
            }
        }
    }
    page.linked_users = Some(users);
    page.linked_users_truncated = Some(truncated);
    Ok(())
}

fn linked_user(row: &[serde_json::Value]) -> Result<LinkedUser, StoreError> {
    let [user_id, first, last, identified, signed_in] = row else {
        return Err(StoreError::Unreadable(format!(
            "a linked-user row of {} columns",
            row.len()
        )));
    };
    Ok(LinkedUser {
        user_id: cell_text(user_id),
        first_seen_ms: cell_i64(first)?,
        last_seen_ms: cell_i64(last)?,
        identified: cell_i64(identified)? != 0,
        seen_signed_in: cell_i64(signed_in)? != 0,
    })
}

/// The page from the rows of [`TimelinePlan::sql`] (at most `limit + 1`).
pub fn timeline_page(
    plan: &TimelinePlan,
    rows: &[Vec<serde_json::Value>],
) -> Result<TimelinePage, StoreError> {
    let more = rows.len() > plan.limit as usize;
    let events = rows
        .iter()
        .take(plan.limit as usize)
        .map(|row| timeline_event(row))
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match (more, events.last()) {
        (true, Some(last)) => Some(
            Cursor {
                ts_ms: last.ts_ms,
                event_id: last.event_id.clone(),
            }
            .to_string(),
        ),
        _ => None,
    };
    Ok(TimelinePage {
        since_ms: plan.since_ms,
        until_ms: plan.until_ms,
        order: plan.order,
        events,
        next_cursor,
        linked_users: None,
        linked_users_truncated: None,
    })
}

fn timeline_event(row: &[serde_json::Value]) -> Result<TimelineEvent, StoreError> {
    let [event_id, event, ts_ms, user_id, anonymous_id, session_id, properties, page_url, page_path, page_title, country, city, device_type, browser, os, app_name, app_version] =
        row
    else {
        return Err(StoreError::Unreadable(format!(
            "a timeline row of {} columns",
            row.len()
        )));
    };
    let ts_ms = cell_i64(ts_ms)?;
    let raw = cell_text(properties);
    Ok(TimelineEvent {
        event_id: cell_text(event_id),
        event: cell_text(event),
        ts_ms,
        time: rfc3339_ms(ts_ms),
        user_id: cell_text(user_id),
        anonymous_id: cell_text(anonymous_id),
        session_id: cell_text(session_id),
        properties: serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
        page_url: cell_text(page_url),
        page_path: cell_text(page_path),
        page_title: cell_text(page_title),
        country: cell_text(country),
        city: cell_text(city),
        device_type: cell_text(device_type),
        browser: cell_text(browser),
        os: cell_text(os),
        app_name: cell_text(app_name),
        app_version: cell_text(app_version),
        resolved_user_id: None,
    })
}

/// `2026-11-22T08:05:03.042Z`. Proleptic Gregorian, UTC.
pub fn rfc3339_ms(ts_ms: i64) -> String {
    let day_ms = 86_400_000;
    let (days, in_day) = (ts_ms.div_euclid(day_ms), ts_ms.rem_euclid(day_ms));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_305_600_000), "2026-11-22T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000 + 1), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    fn row(ts: i64, id: &str, properties: &str) -> Vec<serde_json::Value> {
        let mut r = vec![json!(id), json!("page_view"), json!(ts.to_string())];
        r.extend(["u", "d", "s", properties].map(|s| json!(s)));
        r.extend((0..10).map(|_| json!("")));
        r
    }

    #[test]
    fn a_row_past_the_limit_means_a_next_page() {
        let plan = TimelineRequest {
            project_id: "p".into(),
            anonymous_id: Some("d".into()),
            limit: Some(2),
            ..TimelineRequest::default()
        }
        .plan(10_000_000)
        .unwrap();
        let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let rows = vec![
            row(1, id, r#"{"plan":"pro"}"#),
            row(2, id, "not json"),
            row(3, id, "{}"),
        ];
        let page = timeline_page(&plan, &rows).unwrap();
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.events[0].properties, json!({"plan": "pro"}));
        assert_eq!(page.events[1].properties, json!("not json"));
        assert_eq!(page.next_cursor.as_deref(), Some(&*format!("2:{id}")));
        assert_eq!(page.since_ms, 10_000_000 - 3_600_000);
        let last = timeline_page(&plan, &rows[..2]).unwrap();
        assert_eq!(last.next_cursor, None);
    }

    fn link(user: &str, first: i64) -> Vec<serde_json::Value> {
        vec![
            json!(user),
            json!(first.to_string()),
            json!((first + 5).to_string()),
            json!(1),
            json!(0),
        ]
    }

    /// One linked user: the device's anonymous events resolve to them.
    /// Two: none does (a shared device), and both are listed. More than
    /// the most listed: cut, and said so.
    #[test]
    fn anonymous_events_resolve_only_to_a_single_linked_user() {
        let plan = TimelineRequest {
            project_id: "p".into(),
            anonymous_id: Some("d".into()),
            ..TimelineRequest::default()
        }
        .plan(10_000_000)
        .unwrap();
        assert!(plan.links_sql.is_some());
        let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let mut signed_in = row(2, id, "{}");
        signed_in[3] = json!("u-2");
        signed_in[4] = json!("d");
        let mut anonymous = row(1, id, "{}");
        anonymous[3] = json!("");
        anonymous[4] = json!("d");
        let rows = vec![anonymous, signed_in];

        let mut one = timeline_page(&plan, &rows).unwrap();
        resolve(&mut one, &[link("u-1", 7)]).unwrap();
        assert_eq!(one.events[0].resolved_user_id.as_deref(), Some("u-1"));
        assert_eq!(
            one.events[1].resolved_user_id, None,
            "a signed-in event is its own user's"
        );
        assert_eq!(
            one.linked_users.as_deref(),
            Some(
                &[LinkedUser {
                    user_id: "u-1".into(),
                    first_seen_ms: 7,
                    last_seen_ms: 12,
                    identified: true,
                    seen_signed_in: false,
                }][..]
            )
        );
        assert_eq!(one.linked_users_truncated, Some(false));

        let mut shared = timeline_page(&plan, &rows).unwrap();
        resolve(&mut shared, &[link("u-1", 7), link("u-2", 9)]).unwrap();
        assert!(shared.events.iter().all(|e| e.resolved_user_id.is_none()));
        assert_eq!(shared.linked_users.as_ref().unwrap().len(), 2);

        let mut none = timeline_page(&plan, &rows).unwrap();
        resolve(&mut none, &[]).unwrap();
        assert!(none.events.iter().all(|e| e.resolved_user_id.is_none()));
        let json = serde_json::to_value(&none).unwrap();
        assert_eq!(json["linked_users"], json!([]));
        assert_eq!(json["events"][0].get("resolved_user_id"), None);

        let many: Vec<_> = (0..=MAX_LINKED_USERS as i64)
            .map(|i| link(&format!("u{i}"), i))
            .collect();
        let mut crowded = timeline_page(&plan, &rows).unwrap();
        resolve(&mut crowded, &many).unwrap();
        assert_eq!(
            crowded.linked_users.as_ref().unwrap().len(),
            MAX_LINKED_USERS as usize
        );
        assert_eq!(crowded.linked_users_truncated, Some(true));

        // A user's timeline has neither field.
        let user = TimelineRequest {
            project_id: "p".into(),
            user_id: Some("u".into()),
            ..TimelineRequest::default()
        }
        .plan(10_000_000)
        .unwrap();
        assert_eq!(user.links_sql, None);
        let json = serde_json::to_value(timeline_page(&user, &rows).unwrap()).unwrap();
        assert_eq!(json.get("linked_users"), None);
    }
}
