//! One row type per table Spoor reads or writes row by row, and the
//! column lists their queries use.
//!
//! - [`EventRow`]: a row of `events` as the relay writes it (RowBinary),
//!   and the mapping from a decoded `WireBatch` to rows. Field names and
//!   order match the table exactly (`deploy/clickhouse/001_events.sql`,
//!   then the columns later files add, each `AFTER` the one before, so
//!   `inserted_at` stays last): validation is off for ClickHouse 18.16, so
//!   nothing else checks them. `inserted_at` is left to its `DEFAULT
//!   now()`.
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
use spoor_core::{Campaign, Context, Device, Event, Geo, WireBatch};

use crate::date::{event_date, event_time};

/// Declares [`EventRow`], [`DeviceRow`] and [`DEVICE_COLUMNS`] from one
/// list of the `events` columns, in the table's order. A column marked
/// `shared` is a field of both rows (the device table's view copies it), one
/// marked `event` of the event row only; the device row ends with the
/// server's `inserted_at`. Both rows keep the list's order, which is the
/// order the crate's RowBinary writes and reads.
macro_rules! event_rows {
    ($( $(#[$attr:meta])* $kind:ident $name:ident: $ty:ty, )*) => {
        /// The columns of `events` [`EventRow`] writes, in its field
        /// order: the column list of an insert of its RowBinary.
        pub const EVENT_COLUMNS: &[&str] = &[$(stringify!($name)),*];

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
        #[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
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
    shared project_id: Shared,
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
    shared country: Shared,
    event region: Shared,
    shared city: Shared,
    event timezone: Shared,
    event continent: Shared,
    shared colo: Shared,
    event asn: u32,
    shared browser: Shared,
    shared browser_version: Shared,
    shared os: Shared,
    shared os_version: Shared,
    shared device_type: Shared,
    shared is_bot: u8,
    event ip_prefix: Shared,
    shared edge_region: Shared,
    shared batch_id: Shared,
    /// The campaign (`005_campaign.sql`): the client's `context.campaign`,
    /// else its page URL's `utm_*` parameters; '' when none.
    event utm_source: String,
    event utm_medium: String,
    /// `utm_campaign`: Segment's `context.campaign.name`.
    event utm_campaign: String,
    event utm_term: String,
    event utm_content: String,
}

/// A request-level text column: one allocation per frame, shared by the
/// rows of all its events (a frame's 50 rows would otherwise copy the
/// same 15 strings 50 times).
pub type Shared = std::sync::Arc<str>;

/// The request-level fields of one decoded frame, made [`Shared`] once
/// for all of its rows.
#[derive(Debug, Clone)]
pub struct RequestFields {
    pub project_id: Shared,
    pub country: Shared,
    pub region: Shared,
    pub city: Shared,
    pub timezone: Shared,
    pub continent: Shared,
    pub colo: Shared,
    pub browser: Shared,
    pub browser_version: Shared,
    pub os: Shared,
    pub os_version: Shared,
    pub device_type: Shared,
    pub ip_prefix: Shared,
    pub edge_region: Shared,
    pub batch_id: Shared,
}

impl RequestFields {
    pub fn of(batch: &WireBatch) -> RequestFields {
        let (geo, device) = (&batch.geo, &batch.device);
        RequestFields {
            project_id: batch.project_id.as_str().into(),
            country: geo.country.as_str().into(),
            region: geo.region.as_str().into(),
            city: geo.city.as_str().into(),
            timezone: geo.timezone.as_str().into(),
            continent: geo.continent.as_str().into(),
            colo: geo.colo.as_str().into(),
            browser: device.browser.as_str().into(),
            browser_version: device.browser_version.as_str().into(),
            os: device.os.as_str().into(),
            os_version: device.os_version.as_str().into(),
            device_type: device.device_type.as_str().into(),
            ip_prefix: batch.ip_prefix.as_str().into(),
            edge_region: batch.region.as_str().into(),
            batch_id: batch.batch_id.as_str().into(),
        }
    }
}

impl EventRow {
    /// One event's row, with the batch's request-level fields (geo, device,
    /// ip prefix, region, id) copied onto it. For many events of one batch,
    /// [`EventRow::with`] shares those fields instead.
    pub fn new(batch: &WireBatch, event: Event) -> EventRow {
        EventRow::with(&RequestFields::of(batch), batch, event)
    }

    /// One event's row, sharing `fields` (made from `batch` by
    /// [`RequestFields::of`]) with the batch's other rows.
    pub fn with(fields: &RequestFields, batch: &WireBatch, event: Event) -> EventRow {
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
        let f = fields;
        let campaign = ctx.campaign;
        EventRow {
            project_id: f.project_id.clone(),
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
            country: f.country.clone(),
            region: f.region.clone(),
            city: f.city.clone(),
            timezone: f.timezone.clone(),
            continent: f.continent.clone(),
            colo: f.colo.clone(),
            asn: batch.geo.asn,
            browser: f.browser.clone(),
            browser_version: f.browser_version.clone(),
            os: f.os.clone(),
            os_version: f.os_version.clone(),
            device_type: f.device_type.clone(),
            is_bot: u8::from(batch.device.is_bot),
            ip_prefix: f.ip_prefix.clone(),
            edge_region: f.edge_region.clone(),
            batch_id: f.batch_id.clone(),
            utm_source: campaign.source,
            utm_medium: campaign.medium,
            utm_campaign: campaign.name,
            utm_term: campaign.term,
            utm_content: campaign.content,
        }
    }

    /// The event this row was made from: [`EventRow::new`]'s inverse for
    /// the event's own fields (`event_date` and `event_time` are derived
    /// from `ts_ms` and come back the same).
    pub fn to_event(&self) -> Event {
        Event {
            event_id: self.event_id,
            event_id_derived: self.event_id_derived != 0,
            event: self.event.clone(),
            user_id: self.user_id.clone(),
            anonymous_id: self.anonymous_id.clone(),
            session_id: self.session_id.clone(),
            client_ts_ms: self.client_ts_ms,
            ts_ms: self.ts_ms,
            properties: self.properties.clone(),
            context: Context {
                page_url: self.page_url.clone(),
                page_path: self.page_path.clone(),
                page_referrer: self.page_referrer.clone(),
                page_title: self.page_title.clone(),
                app_name: self.app_name.clone(),
                app_version: self.app_version.clone(),
                library_name: self.library_name.clone(),
                library_version: self.library_version.clone(),
                locale: self.locale.clone(),
                screen_width: self.screen_width,
                screen_height: self.screen_height,
                campaign: Campaign {
                    source: self.utm_source.clone(),
                    medium: self.utm_medium.clone(),
                    name: self.utm_campaign.clone(),
                    term: self.utm_term.clone(),
                    content: self.utm_content.clone(),
                },
            },
        }
    }

    /// The request-level half of the batch this row came from, without
    /// events: everything [`EventRow::new`] copied from the batch.
    pub fn batch_header(&self) -> WireBatch {
        WireBatch {
            batch_id: self.batch_id.to_string(),
            project_id: self.project_id.to_string(),
            region: self.edge_region.to_string(),
            received_at_ms: self.received_at_ms,
            sent_at_ms: self.sent_at_ms,
            geo: Geo {
                country: self.country.to_string(),
                region: self.region.to_string(),
                city: self.city.to_string(),
                timezone: self.timezone.to_string(),
                continent: self.continent.to_string(),
                colo: self.colo.to_string(),
                asn: self.asn,
            },
            device: Device {
                browser: self.browser.to_string(),
                browser_version: self.browser_version.to_string(),
                os: self.os.to_string(),
                os_version: self.os_version.to_string(),
                device_type: self.device_type.to_string(),
                is_bot: self.is_bot != 0,
            },
            ip_prefix: self.ip_prefix.to_string(),
            events: Vec::new(),
        }
    }

    /// Roughly the row's RowBinary size: string bytes plus their length
    /// prefixes plus the fixed-width columns. Used for the byte bound only.
    pub fn estimated_size(&self) -> usize {
        const FIXED: usize = 2 + 4 + 8 + 16 + 1 + 9 + 9 + 8 + 4 + 4 + 4 + 1;
        // One length byte per string column is exact below 128 bytes, close enough above.
        const STRING_COLUMNS: usize = 34;
        let strings: [&str; STRING_COLUMNS] = [
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
            &self.utm_source,
            &self.utm_medium,
            &self.utm_campaign,
            &self.utm_term,
            &self.utm_content,
        ];
        FIXED + STRING_COLUMNS + strings.iter().map(|s| s.len()).sum::<usize>()
    }
}

/// The batches `rows` were made from, rebuilt: rows of one batch (same
/// header, see [`EventRow::batch_header`]) become one `WireBatch` holding
/// their events in the rows' order; batches come in order of their first
/// row. Encoded with `spoor_core::encode_batch`, these are frames the relay
/// reads back as the same rows (how rows it will not insert become a
/// replayable dead letter).
pub fn batches_of<'a>(rows: impl IntoIterator<Item = &'a EventRow>) -> Vec<WireBatch> {
    // Headers (events empty) beside their batches, so a lookup compares
    // headers only.
    let mut headers: Vec<WireBatch> = Vec::new();
    let mut batches: Vec<WireBatch> = Vec::new();
    for row in rows {
        let header = row.batch_header();
        let event = row.to_event();
        match headers.iter().position(|h| *h == header) {
            Some(i) => batches[i].events.push(event),
            None => {
                let mut batch = header.clone();
                batch.events.push(event);
                headers.push(header);
                batches.push(batch);
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use clickhouse::Row as _;

    use super::{DeviceRow, EventRow, DEVICE_COLUMNS};
    use crate::schema::{split_statements, AddColumn, SCHEMA_FILES};

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
        let mut columns: Vec<String> = body
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|c| c.trim_end_matches(',').to_string())
            .collect();
        // The columns later files add, where they add them.
        for statement in SCHEMA_FILES
            .iter()
            .flat_map(|(_, sql)| split_statements(sql))
        {
            if let Some(add) = AddColumn::parse(&statement) {
                if add.table == table {
                    let words: Vec<&str> = statement.split_whitespace().collect();
                    let after = words
                        .iter()
                        .position(|w| *w == "AFTER")
                        .map(|i| words[i + 1].to_string())
                        .unwrap_or_else(|| panic!("{statement}: no AFTER"));
                    let at = columns.iter().position(|c| *c == after).unwrap() + 1;
                    columns.insert(at, add.column.to_string());
                }
            }
        }
        columns
    }

    fn list(columns: &str) -> Vec<String> {
        columns.split(',').map(|c| c.trim().to_string()).collect()
    }

    #[test]
    fn rows_give_back_the_batches_they_were_made_from() {
        use spoor_core::{Campaign, Context, Device, Event, Geo, WireBatch};
        let event = |n: u128, ctx: Context| Event {
            event_id: uuid::Uuid::from_u128(n),
            event_id_derived: n.is_multiple_of(2),
            event: format!("e{n}"),
            user_id: "u".into(),
            anonymous_id: format!("a{n}"),
            session_id: "s".into(),
            client_ts_ms: if n == 1 {
                None
            } else {
                Some(1_700_000_000_000)
            },
            ts_ms: 1_700_000_000_123 + n as i64,
            properties: r#"{"k":1}"#.into(),
            context: ctx,
        };
        let a = WireBatch {
            batch_id: "b-a".into(),
            project_id: "shop".into(),
            region: "eu-west".into(),
            received_at_ms: 1_700_000_000_500,
            sent_at_ms: Some(1_700_000_000_400),
            geo: Geo {
                country: "DE".into(),
                region: "BE".into(),
                city: "Berlin".into(),
                timezone: "Europe/Berlin".into(),
                continent: "EU".into(),
                colo: "TXL".into(),
                asn: 3320,
            },
            device: Device {
                browser: "Firefox".into(),
                browser_version: "120".into(),
                os: "Linux".into(),
                os_version: "6".into(),
                device_type: "desktop".into(),
                is_bot: true,
            },
            ip_prefix: "10.1.2.0/24".into(),
            events: vec![
                event(1, Context::default()),
                event(
                    2,
                    Context {
                        page_url: "https://x/y".into(),
                        page_path: "/y".into(),
                        page_referrer: "r".into(),
                        page_title: "t".into(),
                        app_name: "an".into(),
                        app_version: "av".into(),
                        library_name: "ln".into(),
                        library_version: "lv".into(),
                        locale: "de".into(),
                        screen_width: 1920,
                        screen_height: 1080,
                        campaign: Campaign {
                            source: "newsletter".into(),
                            medium: "email".into(),
                            name: "winter".into(),
                            term: "boots".into(),
                            content: "hero".into(),
                        },
                    },
                ),
            ],
        };
        let b = WireBatch {
            batch_id: "b-b".into(),
            sent_at_ms: None,
            events: vec![event(3, Context::default())],
            ..a.clone()
        };
        let rows_of = |batch: &WireBatch| -> Vec<EventRow> {
            batch
                .events
                .iter()
                .map(|e| EventRow::new(batch, e.clone()))
                .collect()
        };
        let (ra, rb) = (rows_of(&a), rows_of(&b));
        // Interleaved rows still group by batch, in order of first row.
        let rows = [ra[0].clone(), rb[0].clone(), ra[1].clone()];
        assert_eq!(super::batches_of(&rows), vec![a.clone(), b]);
        // Through the frame and back, the rows are the same rows.
        let frame = spoor_core::encode_batch(&super::batches_of(&ra)[0]).unwrap();
        let decoded = spoor_core::decode_batch(&frame, 1 << 20).unwrap();
        assert_eq!(rows_of(&decoded), ra);
    }

    #[test]
    fn the_event_row_is_the_events_table_but_inserted_at() {
        let mut table = table_columns("events");
        assert_eq!(table.pop().as_deref(), Some("inserted_at"));
        assert_eq!(EventRow::COLUMN_NAMES, table);
        assert_eq!(super::EVENT_COLUMNS, table);
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
