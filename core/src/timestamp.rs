//! Client timestamps: RFC 3339 strings or epoch milliseconds, and the
//! clock-skew correction that uses the batch's `sent_at`.
//!
//! The rule: an event's time is `timestamp + (received_at - sent_at)` when the
//! batch has `sent_at` (the client's clock offset cancels out), else the
//! client's `timestamp`, else `received_at`. Events more than 30 days in the
//! past or 1 day in the future after correction are rejected with
//! `timestamp_out_of_range`.

use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses a JSON value holding an RFC 3339 string or an integer of epoch ms.
pub fn parse_json_timestamp(raw: &RawValue) -> Result<i64, String> {
    let text = raw.get().trim();
    if text.starts_with('"') {
        let s: std::borrow::Cow<'_, str> =
            serde_json::from_str(text).map_err(|e| format!("not a string: {e}"))?;
        parse_rfc3339_ms(&s)
    } else if text == "null" {
        Err("is null".into())
    } else {
        let n: serde_json::Number = serde_json::from_str(text)
            .map_err(|_| "must be an RFC 3339 string or epoch milliseconds".to_string())?;
        n.as_i64()
            .ok_or_else(|| "epoch milliseconds must be a whole number".to_string())
    }
}

/// Parses RFC 3339 (`2026-11-22T07:40:00.123Z`, with any offset) to epoch ms.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let t =
        OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("{s:?} is not RFC 3339 ({e})"))?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms).map_err(|_| "timestamp out of range".to_string())
}

/// Formats epoch ms as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The event time after clock-skew correction.
///
/// The client stamps events and `sent_at` with the same (possibly wrong)
/// clock, so `received_at - sent_at` is that clock's offset (plus network
/// time). Adding it to the event's own timestamp moves the event onto the
/// server's clock. Without `sent_at` the client time is taken as is; without
/// a client time the event happened when it was received.
pub fn corrected_time(client_ts: Option<i64>, sent_at: Option<i64>, received_at: i64) -> i64 {
    match (client_ts, sent_at) {
        (Some(ts), Some(sent)) => ts.saturating_add(received_at.saturating_sub(sent)),
        (Some(ts), None) => ts,
        (None, _) => received_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            parse_json_timestamp(&raw("1700000000123")),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_json_timestamp(&raw("\"2023-11-14T22:13:20.123Z\"")),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_json_timestamp(&raw("\"2023-11-14T23:13:20.123+01:00\"")),
            Ok(1_700_000_000_123)
        );
        assert!(parse_json_timestamp(&raw("\"yesterday\"")).is_err());
        assert!(parse_json_timestamp(&raw("1.5")).is_err());
        assert!(parse_json_timestamp(&raw("null")).is_err());
        assert!(parse_json_timestamp(&raw("true")).is_err());
    }

    #[test]
    fn skew_correction() {
        // Client clock 1 h fast: event at client 10:00, sent at client 10:05,
        // received at server 09:05 → event really at 09:00.
        let h = 3_600_000;
        assert_eq!(
            corrected_time(Some(10 * h), Some(10 * h + 300_000), 9 * h + 300_000),
            9 * h
        );
        assert_eq!(corrected_time(Some(5), None, 100), 5);
        assert_eq!(corrected_time(None, Some(1), 100), 100);
    }

    #[test]
    fn formats_ms() {
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
