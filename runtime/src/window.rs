//! Time arguments: an RFC 3339 instant, or a span back from now (`90s`,
//! `15m`, `2h`, `1d`). Pure: `now` is passed in.

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is neither an RFC 3339 time (2026-11-22T10:00:00Z) nor a span back from now (90s, 15m, 2h, 1d)")]
pub struct BadTime(pub String);

/// Parses `text` as an instant, with spans counted back from `now`.
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, BadTime> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let bad = || BadTime(text.to_string());
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let span = n.checked_mul(seconds_per).ok_or_else(bad)?;
    now.checked_sub(Duration::seconds(span)).ok_or_else(bad)
}

/// RFC 3339 text for output; falls back to the debug form (never fails).
pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn instants_and_spans() {
        let now = datetime!(2026-11-22 12:00:00 UTC);
        let cases = [
            ("2026-11-22T10:00:00Z", datetime!(2026-11-22 10:00:00 UTC)),
            (
                "2026-11-22T10:00:00+01:00",
                datetime!(2026-11-22 09:00:00 UTC),
            ),
            ("90s", datetime!(2026-11-22 11:58:30 UTC)),
            ("15m", datetime!(2026-11-22 11:45:00 UTC)),
            ("2h", datetime!(2026-11-22 10:00:00 UTC)),
            ("1d", datetime!(2026-11-21 12:00:00 UTC)),
            (" 0m ", now),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text, now), Ok(want), "{text}");
        }
        for bad in [
            "",
            "m",
            "15",
            "15w",
            "-2h",
            "yesterday",
            "99999999999999999999d",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad} should fail");
        }
    }
}
