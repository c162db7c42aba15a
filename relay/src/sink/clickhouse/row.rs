//! The `events` table's row as the relay writes it (RowBinary), and the
//! mapping from a decoded `WireBatch` to rows.
//!
//! Field names and order match `deploy/clickhouse/001_events.sql` exactly:
//! validation is off for ClickHouse 18.16, so nothing else checks them.
//! `inserted_at` is left to its `DEFAULT now()`. Pure: no I/O, no clock.

use serde::Serialize;
use spoor_core::{Event, WireBatch};

const MS_PER_DAY: i64 = 86_400_000;

/// One row of `events`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct EventRow {
    pub project_id: String,
    /// `Date`: days since 1970-01-01, UTC.
    pub event_date: u16,
    /// `DateTime`: seconds since the epoch.
    pub event_time: u32,
    pub ts_ms: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub event_id_derived: u8,
    pub event: String,
    pub user_id: String,
    pub anonymous_id: String,
    pub session_id: String,
    pub client_ts_ms: Option<i64>,
    pub sent_at_ms: Option<i64>,
    pub received_at_ms: i64,
    pub properties: String,
    pub page_url: String,
    pub page_path: String,
    pub page_referrer: String,
    pub page_title: String,
    pub app_name: String,
    pub app_version: String,
    pub library_name: String,
    pub library_version: String,
    pub locale: String,
    pub screen_width: u32,
    pub screen_height: u32,
    pub country: String,
    pub region: String,
    pub city: String,
    pub timezone: String,
    pub continent: String,
    pub colo: String,
    pub asn: u32,
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
    pub device_type: String,
    pub is_bot: u8,
    pub ip_prefix: String,
    pub edge_region: String,
    pub batch_id: String,
}

/// The UTC day of `ts_ms` as a ClickHouse `Date`, clamped to its range
/// (1970-01-01 ..= 2149-06-06) so no input can fail the insert.
pub fn event_date(ts_ms: i64) -> u16 {
    ts_ms.div_euclid(MS_PER_DAY).clamp(0, i64::from(u16::MAX)) as u16
}

/// `ts_ms` in whole seconds as a ClickHouse `DateTime`, clamped to its range.
pub fn event_time(ts_ms: i64) -> u32 {
    ts_ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32
}

impl EventRow {
    /// One event's row, with the batch's request-level fields (geo, device,
    /// ip prefix, region, id) copied onto it.
    pub fn new(batch: &WireBatch, event: Event) -> EventRow {
        let Event {
            event_id,
            event_id_derived,
            event,
            user_id,
            anonymous_id,
            session_id,
            client_ts_ms,
            ts_ms,
            properties,
            context: ctx,
        } = event;
        let (geo, device) = (&batch.geo, &batch.device);
        EventRow {
            project_id: batch.project_id.clone(),
            event_date: event_date(ts_ms),
            event_time: event_time(ts_ms),
            ts_ms,
            event_id,
            event_id_derived: u8::from(event_id_derived),
            event,
            user_id,
            anonymous_id,
            session_id,
            client_ts_ms,
            sent_at_ms: batch.sent_at_ms,
            received_at_ms: batch.received_at_ms,
            properties,
            page_url: ctx.page_url,
            page_path: ctx.page_path,
            page_referrer: ctx.page_referrer,
            page_title: ctx.page_title,
            app_name: ctx.app_name,
            app_version: ctx.app_version,
            library_name: ctx.library_name,
            library_version: ctx.library_version,
            locale: ctx.locale,
            screen_width: ctx.screen_width,
            screen_height: ctx.screen_height,
            country: geo.country.clone(),
            region: geo.region.clone(),
            city: geo.city.clone(),
            timezone: geo.timezone.clone(),
            continent: geo.continent.clone(),
            colo: geo.colo.clone(),
            asn: geo.asn,
            browser: device.browser.clone(),
            browser_version: device.browser_version.clone(),
            os: device.os.clone(),
            os_version: device.os_version.clone(),
            device_type: device.device_type.clone(),
            is_bot: u8::from(device.is_bot),
            ip_prefix: batch.ip_prefix.clone(),
            edge_region: batch.region.clone(),
            batch_id: batch.batch_id.clone(),
        }
    }

    /// Roughly the row's RowBinary size: string bytes plus their length
    /// prefixes plus the fixed-width columns. Used for the byte bound only.
    pub fn estimated_size(&self) -> usize {
        const FIXED: usize = 2 + 4 + 8 + 16 + 1 + 9 + 9 + 8 + 4 + 4 + 4 + 1;
        // One length byte per string column is exact below 128 bytes, close enough above.
        const STRING_COLUMNS: usize = 29;
        let strings = [
            &self.project_id,
            &self.event,
            &self.user_id,
            &self.anonymous_id,
            &self.session_id,
            &self.properties,
            &self.page_url,
            &self.page_path,
            &self.page_referrer,
            &self.page_title,
            &self.app_name,
            &self.app_version,
            &self.library_name,
            &self.library_version,
            &self.locale,
            &self.country,
            &self.region,
            &self.city,
            &self.timezone,
            &self.continent,
            &self.colo,
            &self.browser,
            &self.browser_version,
            &self.os,
            &self.os_version,
            &self.device_type,
            &self.ip_prefix,
            &self.edge_region,
            &self.batch_id,
        ];
        FIXED + STRING_COLUMNS + strings.iter().map(|s| s.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::{event_date, event_time};

    #[test]
    fn dates_are_utc_days_and_clamped() {
        let cases = [
            (0, 0, 0),
            (86_399_999, 0, 86_399),
            (86_400_000, 1, 86_400),
            // 2024-03-01T12:34:56.789Z
            (1_709_296_496_789, 19_783, 1_709_296_496),
            (-1, 0, 0),
            (i64::MIN, 0, 0),
            (i64::MAX, u16::MAX, u32::MAX),
        ];
        for (ts, day, secs) in cases {
            assert_eq!(event_date(ts), day, "date of {ts}");
            assert_eq!(event_time(ts), secs, "time of {ts}");
        }
    }
}
