//! One row type per table Spoor reads or writes row by row, and the
//! column lists their queries use.
//!
//! - [`EventRow`]: a row of `events` as the relay writes it (RowBinary),
//!   and the mapping from a decoded `WireBatch` to rows. Field names and
//!   order match `deploy/clickhouse/001_events.sql` exactly: validation is
//!   off for ClickHouse 18.16, so nothing else checks them. `inserted_at`
//!   is left to its `DEFAULT now()`.
//! - [`DeviceRow`]: a row of `events_by_device` as a device lookup reads
//!   it. That table is a copy of `events` made by its view, so the row is
//!   derived from the event row's columns: both rows (and
//!   [`DEVICE_COLUMNS`], the lookups' column list) are declared from one
//!   list of the `events` columns, and the device row adds the server's
//!   `inserted_at`. The tests below hold the rows, the list and the schema
//!   files to each other.
//!
//! Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};
use spoor_core::{Event, WireBatch};

use crate::date::{event_date, event_time};

/// Declares [`EventRow`], [`DeviceRow`] and [`DEVICE_COLUMNS`] from one
/// list of the `events` columns, in the table's order. A column marked
/// `shared` is a field of both rows (the device table's view copies it), one
/// marked `event` of the event row only; the device row ends with the
/// server's `inserted_at`. Both rows keep the list's order, which is the
/// order the crate's RowBinary writes and reads.
macro_rules! event_rows {
    ($( $(#[$attr:meta])* $kind:ident $name:ident: $ty:ty, )*) => {
        event_rows!(@split [$([$(#[$attr])* $kind $name: $ty])*] [] [] []);
    };
    (@split [[$(#[$attr:meta])* shared $name:ident: $ty:ty] $($rest:tt)*]
        [$($event:tt)*] [$($device:tt)*] [$($column:tt)*]) => {
        event_rows!(@split [$($rest)*]
            [$($event)* $(#[$attr])* pub $name: $ty,]
            [$($device)* $(#[$attr])* pub $name: $ty,]
            [$($column)* stringify!($name), ", ",]);
    };
    (@split [[$(#[$attr:meta])* event $name:ident: $ty:ty] $($rest:tt)*]
        [$($event:tt)*] [$($device:tt)*] [$($column:tt)*]) => {
        event_rows!(@split [$($rest)*]
            [$($event)* $(#[$attr])* pub $name: $ty,]
            [$($device)*]
            [$($column)*]);
    };
    (@split [] [$($event:tt)*] [$($device:tt)*] [$($column:tt)*]) => {
        /// One row of `events`.
        #[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
        pub struct EventRow {
            $($event)*
        }

        /// One event as the debug lookup shows it, read from
        /// `events_by_device`: its ids, its path (client time, edge
        /// receipt, insert time, batch) and a summary of its context.
        #[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
        pub struct DeviceRow {
            $($device)*
            /// When ClickHouse stored the row (seconds since the epoch,
            /// server clock).
            pub inserted_at: u32,
        }

        /// The columns of `events_by_device` in [`DeviceRow`]'s field
        /// order: what `events_by_device_mv` copies from `events`, plus
        /// `inserted_at`; what a device lookup selects.
        pub const DEVICE_COLUMNS: &str = concat!($($column)* "inserted_at");
    };
}

event_rows! {
    shared project_id: String,
    /// `Date`: days since 1970-01-01, UTC.
    shared event_date: u16,
    /// `DateTime`: seconds since the epoch.
    event event_time: u32,
    /// Event time (skew-corrected at the edge), ms since the epoch.
    shared ts_ms: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    shared event_id: uuid::Uuid,
    shared event_id_derived: u8,
    shared event: String,
    shared user_id: String,
    shared anonymous_id: String,
    shared session_id: String,
    /// The client's own timestamp, uncorrected, if it sent one.
    shared client_ts_ms: Option<i64>,
    shared sent_at_ms: Option<i64>,
    /// When the edge received the request.
    shared received_at_ms: i64,
    shared properties: String,
    shared page_url: String,
    shared page_path: String,
    event page_referrer: String,
    shared page_title: String,
    shared app_name: String,
    shared app_version: String,
    shared library_name: String,
    shared library_version: String,
    event locale: String,
    event screen_width: u32,
    event screen_height: u32,
    shared country: String,
    event region: String,
    shared city: String,
    event timezone: String,
    event continent: String,
    shared colo: String,
    event asn: u32,
    shared browser: String,
    shared browser_version: String,
    shared os: String,
    shared os_version: String,
    shared device_type: String,
    shared is_bot: u8,
    event ip_prefix: String,
    shared edge_region: String,
    shared batch_id: String,
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
    use clickhouse::Row as _;

    use super::{DeviceRow, EventRow, DEVICE_COLUMNS};
    use crate::schema::{split_statements, SCHEMA_FILES};

    /// The column names of `CREATE TABLE IF NOT EXISTS <table> (...)` in
    /// the embedded schema, in order.
    fn table_columns(table: &str) -> Vec<String> {
        let create = format!("CREATE TABLE IF NOT EXISTS {table}");
        let statement = SCHEMA_FILES
            .iter()
            .flat_map(|(_, sql)| split_statements(sql))
            .find(|s| s.starts_with(&create))
            .unwrap_or_else(|| panic!("{table} is not in the schema"));
        let body = &statement[statement.find('(').unwrap() + 1..statement.find("ENGINE").unwrap()];
        let body = &body[..body.rfind(')').unwrap()];
        body.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|c| c.trim_end_matches(',').to_string())
            .collect()
    }

    fn list(columns: &str) -> Vec<String> {
        columns.split(',').map(|c| c.trim().to_string()).collect()
    }

    #[test]
    fn the_event_row_is_the_events_table_but_inserted_at() {
        let mut table = table_columns("events");
        assert_eq!(table.pop().as_deref(), Some("inserted_at"));
        assert_eq!(EventRow::COLUMN_NAMES, table);
    }

    #[test]
    fn the_device_row_shares_the_event_rows_columns() {
        assert_eq!(list(DEVICE_COLUMNS), DeviceRow::COLUMN_NAMES);
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(list(DEVICE_COLUMNS)),
            sorted(table_columns("events_by_device"))
        );
        for column in DeviceRow::COLUMN_NAMES {
            assert!(
                *column == "inserted_at" || EventRow::COLUMN_NAMES.contains(column),
                "{column} is not an events column"
            );
        }
        // The view copies exactly these columns from `events`.
        let view = SCHEMA_FILES
            .iter()
            .flat_map(|(_, sql)| split_statements(sql))
            .find(|s| s.contains("events_by_device_mv TO events_by_device"))
            .unwrap();
        let selected = &view[view.find("SELECT").unwrap() + 6..view.find("FROM events").unwrap()];
        assert_eq!(sorted(list(selected)), sorted(list(DEVICE_COLUMNS)));
    }
}
