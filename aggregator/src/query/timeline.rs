//! Timeline requests: one user's or one device's events in order, paged.
//!
//! Reads the point-lookup tables of `deploy/clickhouse/002_events_by_device.sql`:
//! a device's events are one primary-key range of `events_by_device`
//! (project, anonymous_id, ts_ms, event_id); a user's devices come from
//! `device_users` (project, user_id, ts_ms) first. `LIMIT 1 BY event_id`
//! hides a duplicate that the ReplacingMergeTree has not merged yet. Pure:
//! the clock comes in as `now_ms`, every caller value is bound.
//!
//! The clock is event time (`ts_ms`, skew-corrected): an analyst asks what a
//! user did when, so a late event lands where it happened. The device debug
//! lookup (`spoor_store::device`, the relays' rings) windows on the edge's
//! receive time instead, because a debug engineer asks what arrived.
//!
//! A *user's* timeline is the events with that `user_id` plus the anonymous
//! events (`user_id = ''`) of the devices the user was seen on within the
//! range, and of every anonymous id an `identify` or `alias` linked to the
//! user (`identity_links`, whenever the link was made, within the device
//! tables' retention): what they did before logging in, even when the
//! login falls after the range. Other users' events on a shared device are
//! left out.
//!
//! A *device's* timeline is the device's events, and the answer says which
//! users the device is linked to (`linked_users`): every user an `identify`
//! or `alias` linked it to (`identity_links`) and every user it sent events
//! as (the `device_users` pairs, read from the device's own range of
//! `events_by_device`, which holds the same pairs ordered by device), each
//! with first and last seen, whenever that was within the device tables'
//! retention (not only in the window). An anonymous event of the device
//! (`user_id = ''`) resolves to a user only when exactly one user is
//! linked: then it carries that `resolved_user_id`. With two or more (a
//! shared device, a family tablet) nothing says which of them sent it, so
//! it resolves to none and the answer's `linked_users` lists the
//! candidates: Spoor never attributes a shared device's anonymous events
//! to one person by guess. With `with_linked_users`, a device's timeline
//! also holds the events its linked users sent signed in (their `user_id`)
//! from the devices `device_users` saw them on in the window: where the
//! person went next. Those other devices' anonymous events are not added
//! (they would need links of their own); on a shared device it is every
//! linked user's events, each carrying its own `user_id`.
//!
//! Paging is by key: events are ordered by `(ts_ms, event_id)` (ClickHouse's
//! UUID order, the same in the `ORDER BY` and the comparison), and the
//! cursor is the key of the last event returned, `"<ts_ms>:<event_id>"`.
//! The next page repeats the request with that cursor and the same window
//! (the answer echoes the window used, which matters when it was defaulted
//! from `now_ms`).

use serde::{Deserialize, Serialize};
use spoor_store::schema::{DEVICE_TABLE, DEVICE_USERS_TABLE, IDENTITY_LINKS_TABLE};

use super::{check_text, funnel::check_range, window_conditions, Param, RequestError, Sql};

/// Events per page when the request does not say.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most events per page.
pub const MAX_LIMIT: u32 = 1000;
/// The window when the request gives no `since_ms`: one hour.
pub const DEFAULT_WINDOW_MS: i64 = 3_600_000;
/// Longest window: the raw table's 90 days (the device tables keep fewer).
pub const MAX_TIMELINE_RANGE_MS: i64 = 90 * 86_400_000;
/// Most users a device's timeline lists as linked (those first seen
/// earliest); `linked_users_truncated` says when there were more.
pub const MAX_LINKED_USERS: u32 = 100;

/// Oldest first (the default) or newest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    OldestFirst,
    NewestFirst,
}

/// One timeline page. JSON: `{"anonymous_id": "d-1"}` or
/// `{"user_id": "u-1", "since_ms": ..., "until_ms": ..., "limit": 100,
/// "order": "newest_first", "cursor": "1795305600123:0190a1b2-..."}`.
/// Exactly one of `user_id` and `anonymous_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineRequest {
    /// Filled in by the service from the URL.
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub anonymous_id: Option<String>,
    /// Events in `since_ms <= t < until_ms`. `until_ms` defaults to now,
    /// `since_ms` to one hour before `until_ms`.
    #[serde(default)]
    pub since_ms: Option<i64>,
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// 1 to 1000; 100 if absent.
    #[serde(default)]
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub order: Order,
    /// A device's timeline only: also the events its linked users sent
    /// signed in (their `user_id`) from their other devices in the window.
    #[serde(default)]
    pub with_linked_users: bool,
}

/// The key of an event in timeline order, and its text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub ts_ms: i64,
    /// Canonical lowercase UUID text.
    pub event_id: String,
}

impl Cursor {
    /// `"<ts_ms>:<uuid>"`: a decimal integer (optional `-`, at most 19
    /// digits), a colon, a UUID as 8-4-4-4-12 hex digits. Nothing else.
    pub fn parse(text: &str) -> Result<Cursor, RequestError> {
        let bad = |reason: &str| RequestError::Invalid {
            field: "cursor",
            reason: format!("{reason}; pass back a `next_cursor` unchanged"),
        };
        let (ts, id) = text
            .split_once(':')
            .ok_or_else(|| bad("not of the form <ts_ms>:<event_id>"))?;
        let digits = ts.strip_prefix('-').unwrap_or(ts);
        if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the time is not a decimal number of milliseconds"));
        }
        let ts_ms: i64 = ts.parse().map_err(|_| bad("the time is out of range"))?;
        let uuid_shape = id.len() == 36
            && id.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if !uuid_shape {
            return Err(bad("the event id is not a UUID"));
        }
        Ok(Cursor {
            ts_ms,
            event_id: id.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ts_ms, self.event_id)
    }
}

/// Whose timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    User(&'a str),
    Device(&'a str),
}

/// A validated request with its defaults filled in, and its query.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelinePlan {
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: u32,
    pub order: Order,
    /// Selects up to `limit + 1` rows (the extra one says whether there is
    /// a next page) with the columns of [`TIMELINE_COLUMNS`].
    pub sql: Sql,
    /// A device's timeline: the users the device is linked to, up to
    /// [`MAX_LINKED_USERS`] + 1 rows of [`LINKED_USER_COLUMNS`], first
    /// seen first. `None` for a user's timeline.
    pub links_sql: Option<Sql>,
}

/// The columns of [`TimelinePlan::links_sql`] (`SELECT user_id,
/// first_seen_ms, ...`), in order: the user, first
/// and last seen (event time, ms), whether an identify or alias linked
/// them (1/0) and whether the device sent events as them (1/0).
pub const LINKED_USER_COLUMNS: &str =
    "user_id, first_seen_ms, last_seen_ms, identified, seen_signed_in";

/// The users a device is linked to: its pairs in `identity_links` (by
/// identify or alias) and the user ids of its own events (its range of
/// `events_by_device`, the `device_users` pairs of this device), merged
/// per user. Whole retention, not the window: a link made after the
/// window still says whose the device is.
fn links_sql(project_id: &str, device: &str) -> Sql {
    Sql {
        text: format!(
            "SELECT user_id, min(first_ms) AS first_seen_ms, max(last_ms) AS last_seen_ms, \
             max(by_identity) AS identified, max(by_events) AS seen_signed_in FROM (\
             SELECT user_id, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, \
             toUInt8(1) AS by_identity, toUInt8(0) AS by_events FROM {IDENTITY_LINKS_TABLE} \
             WHERE project_id = ? AND anonymous_id = ? GROUP BY user_id \
             UNION ALL \
             SELECT user_id, min(ts_ms) AS first_ms, max(ts_ms) AS last_ms, \
             toUInt8(0) AS by_identity, toUInt8(1) AS by_events FROM {DEVICE_TABLE} \
             WHERE project_id = ? AND anonymous_id = ? AND user_id != '' GROUP BY user_id\
             ) GROUP BY user_id ORDER BY first_seen_ms, user_id LIMIT ?"
        ),
        params: vec![
            Param::Str(project_id.into()),
            Param::Str(device.into()),
            Param::Str(project_id.into()),
            Param::Str(device.into()),
            Param::Int(i64::from(MAX_LINKED_USERS) + 1),
        ],
    }
}

/// The columns of a timeline query, in order.
pub const TIMELINE_COLUMNS: &str = "toString(event_id) AS id, event, ts_ms, user_id, \
    anonymous_id, session_id, properties, page_url, page_path, page_title, country, city, \
    device_type, browser, os, app_name, app_version";

impl TimelineRequest {
    /// Whose timeline, checked: exactly one non-empty id without control
    /// characters, at most 256 bytes.
    pub fn subject(&self) -> Result<Subject<'_>, RequestError> {
        match (&self.user_id, &self.anonymous_id) {
            (Some(user), None) => {
                check_text("user_id", user)?;
                Ok(Subject::User(user))
            }
            (None, Some(device)) => {
                check_text("anonymous_id", device)?;
                Ok(Subject::Device(device))
            }
            _ => Err(RequestError::Invalid {
                field: "user_id",
                reason: "give exactly one of `user_id` and `anonymous_id`".into(),
            }),
        }
    }

    /// `(since_ms, until_ms)` with the defaults: until now, one hour.
    pub fn window(&self, now_ms: i64) -> Result<(i64, i64), RequestError> {
        let until = self.until_ms.unwrap_or(now_ms);
        let since = self
            .since_ms
            .unwrap_or_else(|| until.saturating_sub(DEFAULT_WINDOW_MS));
        check_range(since, until, MAX_TIMELINE_RANGE_MS, "90 days")?;
        Ok((since, until))
    }

    /// Checks the request and renders its query; `now_ms` fills a missing
    /// `until_ms`.
    pub fn plan(&self, now_ms: i64) -> Result<TimelinePlan, RequestError> {
        check_text("project_id", &self.project_id)?;
        let subject = self.subject()?;
        if self.with_linked_users && matches!(subject, Subject::User(_)) {
            return Err(RequestError::Invalid {
                field: "with_linked_users",
                reason: "applies to a device's timeline (`anonymous_id`); a user's \
                         timeline already holds their devices' events"
                    .into(),
            });
        }
        let (since_ms, until_ms) = self.window(now_ms)?;
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(RequestError::Invalid {
                field: "limit",
                reason: format!("1 to {MAX_LIMIT} events per page, got {limit}"),
            });
        }
        let cursor = match &self.cursor {
            Some(text) => Some(Cursor::parse(text)?),
            None => None,
        };

        let mut conditions = Vec::new();
        let mut params = Vec::new();
        let links_sql = match subject {
            Subject::Device(id) => Some(links_sql(&self.project_id, id)),
            Subject::User(_) => None,
        };
        window_conditions(
            &self.project_id,
            since_ms,
            until_ms,
            &mut conditions,
            &mut params,
        );
        match subject {
            Subject::Device(id) if self.with_linked_users => {
                // The device's events, and its linked users' signed-in
                // events on the devices they were seen on in the window.
                let linked = format!(
                    "SELECT user_id FROM {IDENTITY_LINKS_TABLE} \
                     WHERE project_id = ? AND anonymous_id = ? \
                     UNION ALL SELECT user_id FROM {DEVICE_TABLE} \
                     WHERE project_id = ? AND anonymous_id = ? AND user_id != ''"
                );
                let linked_params = || {
                    [
                        Param::Str(self.project_id.clone()),
                        Param::Str(id.into()),
                        Param::Str(self.project_id.clone()),
                        Param::Str(id.into()),
                    ]
                };
                params.push(Param::Str(id.into()));
                let mut devices = Vec::new();
                window_conditions(
                    &self.project_id,
                    since_ms,
                    until_ms,
                    &mut devices,
                    &mut params,
                );
                devices.push(format!("user_id IN ({linked})"));
                params.extend(linked_params());
                params.extend(linked_params());
                conditions.push(format!(
                    "(anonymous_id = ? OR (anonymous_id IN (SELECT anonymous_id FROM \
                     {DEVICE_USERS_TABLE} WHERE {}) AND user_id IN ({linked})))",
                    devices.join(" AND ")
                ));
            }
            Subject::Device(id) => {
                conditions.push("anonymous_id = ?".into());
                params.push(Param::Str(id.into()));
            }
            Subject::User(id) => {
                let mut devices = Vec::new();
                window_conditions(
                    &self.project_id,
                    since_ms,
                    until_ms,
                    &mut devices,
                    &mut params,
                );
                devices.push("user_id = ?".into());
                params.push(Param::Str(id.into()));
                params.push(Param::Str(self.project_id.clone()));
                params.push(Param::Str(id.into()));
                conditions.push(format!(
                    "(anonymous_id IN (SELECT anonymous_id FROM {DEVICE_USERS_TABLE} WHERE {}) \
                     OR anonymous_id IN (SELECT anonymous_id FROM {IDENTITY_LINKS_TABLE} \
                     WHERE project_id = ? AND user_id = ?))",
                    devices.join(" AND ")
                ));
                conditions.push("(user_id = ? OR user_id = '')".into());
                params.push(Param::Str(id.into()));
            }
        }
        let (after, direction) = match self.order {
            Order::OldestFirst => (">", "ASC"),
            Order::NewestFirst => ("<", "DESC"),
        };
        if let Some(c) = cursor {
            conditions.push(format!(
                "(ts_ms {after} ? OR (ts_ms = ? AND event_id {after} toUUID(?)))"
            ));
            params.push(Param::Int(c.ts_ms));
            params.push(Param::Int(c.ts_ms));
            params.push(Param::Str(c.event_id));
        }
        params.push(Param::Int(i64::from(limit) + 1));
        let text = format!(
            "SELECT {TIMELINE_COLUMNS} FROM {DEVICE_TABLE} WHERE {} \
             ORDER BY ts_ms {direction}, event_id {direction} LIMIT 1 BY event_id LIMIT ?",
            conditions.join(" AND ")
        );
        Ok(TimelinePlan {
            since_ms,
            until_ms,
            limit,
            order: self.order,
            sql: Sql { text, params },
            links_sql,
        })
    }
}

#[cfg(test)]
mod tests;
