//! ClickHouse's `Date` and `DateTime` values from epoch milliseconds, and
//! back to text. Pure: no clock.
//!
//! A `Date` is days since 1970-01-01 (UTC) in a `u16`, so it spans
//! 1970-01-01 ..= 2149-06-06; a `DateTime` is seconds since the epoch in a
//! `u32`. Conversions clamp to those ranges, so no input can fail an
//! insert.

/// Milliseconds in a UTC day.
pub const MS_PER_DAY: i64 = 86_400_000;
/// 1970-01-01 as a Julian day.
pub(crate) const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// The UTC day of `ts_ms` as a ClickHouse `Date`, clamped to its range
/// (1970-01-01 ..= 2149-06-06) so no input can fail the insert.
pub fn event_date(ts_ms: i64) -> u16 {
    ts_ms.div_euclid(MS_PER_DAY).clamp(0, i64::from(u16::MAX)) as u16
}

/// `ts_ms` in whole seconds as a ClickHouse `DateTime`, clamped to its range.
pub fn event_time(ts_ms: i64) -> u32 {
    ts_ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32
}

/// A ClickHouse `Date` (days since 1970-01-01) as `YYYY-MM-DD`.
pub fn date_string(days: u16) -> String {
    // Every u16 day is a valid date.
    time::Date::from_julian_day(UNIX_EPOCH_JULIAN_DAY + i32::from(days))
        .map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
        .unwrap_or_else(|_| "1970-01-01".to_string())
}

#[cfg(test)]
mod tests {
    use super::{date_string, event_date, event_time};

    #[test]
    fn dates_format_as_iso_days() {
        assert_eq!(date_string(0), "1970-01-01");
        assert_eq!(date_string(20_415), "2025-11-23");
        assert_eq!(date_string(u16::MAX), "2149-06-06");
    }

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
