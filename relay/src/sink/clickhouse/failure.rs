//! What a failed insert says about its rows: the server refused them for
//! what they hold (dead-letter the guilty ones, insert the rest), the block
//! was too wide for one insert (split it; every row is fine), or ClickHouse
//! or the way to it is unwell (wait and retry the same rows).
//!
//! The `clickhouse` crate hands a server exception over as
//! `Error::BadResponse(text)`, the body ClickHouse sent, trimmed. 18.16
//! writes `Code: 395, e.displayText() = DB::Exception: ..., e.what() =
//! DB::Exception`; current releases write `Code: 469. DB::Exception: ...
//! (VIOLATED_CONSTRAINT) (version 24.8.4.13 (official build))`. When the
//! body is empty the crate gives `Code: <n>` from the
//! `X-ClickHouse-Exception-Code` header, or the HTTP status line. So the
//! code is the number after a leading `Code:`, in every release.
//!
//! Anything not known to be about the rows is an outage: a wrong verdict
//! there only costs a wait, while a wrong "the data" verdict would move good
//! rows to the dead letters. A schema mismatch (missing column, wrong type,
//! truncated RowBinary) is the relay's or the operator's fault, not the
//! rows', so it stalls with a clear error rather than dead-lettering
//! everything.

/// Why an insert failed, as far as the rows are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// ClickHouse, or the way to it, is unwell (refused connections,
    /// timeouts, 5xx without a data exception, memory limits, too many
    /// parts, a schema mismatch): retry the same rows later.
    Outage,
    /// The server refused rows for what they hold (a constraint, a
    /// `throwIf` in a default or a view, a value it cannot convert): smaller
    /// inserts find the guilty rows.
    Rows,
    /// The block as a whole is refused (rows over more partitions than
    /// `max_partitions_per_insert_block`): its rows go in smaller blocks.
    BlockTooWide,
}

/// Exception codes that mean the server refused rows for their values.
/// Outside tests and a column the schema does not have, the relay's typed
/// RowBinary cannot carry an unparsable value, so these come from what the
/// table or a view computes from the rows: constraints (current releases),
/// `throwIf` and conversions in `MATERIALIZED`/`DEFAULT` columns and in
/// materialized views.
pub const DATA_CODES: &[(u32, &str)] = &[
    (6, "CANNOT_PARSE_TEXT"),
    (27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED"),
    (38, "CANNOT_PARSE_DATE"),
    (41, "CANNOT_PARSE_DATETIME"),
    (69, "ARGUMENT_OUT_OF_BOUND"),
    (70, "CANNOT_CONVERT_TYPE"),
    (72, "CANNOT_PARSE_NUMBER"),
    (117, "INCORRECT_DATA"),
    (131, "TOO_LARGE_STRING_SIZE"),
    (153, "ILLEGAL_DIVISION"),
    (190, "SIZES_OF_ARRAYS_DONT_MATCH"),
    (321, "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"),
    (376, "CANNOT_PARSE_UUID"),
    (395, "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"),
    (407, "DECIMAL_OVERFLOW"),
    (469, "VIOLATED_CONSTRAINT"),
];

/// `TOO_MANY_PARTS`: back-pressure ("Too many parts (300). Merges are
/// processing significantly slower than inserts"), an outage; but current
/// releases also raise it for a block over `max_partitions_per_insert_block`,
/// which only smaller blocks cure.
const TOO_MANY_PARTS: u32 = 252;
const TOO_MANY_PARTITIONS_TEXT: &str = "Too many partitions for single INSERT block";

/// The cause of a failed insert.
pub fn classify(error: &clickhouse::error::Error) -> Cause {
    match error {
        clickhouse::error::Error::BadResponse(text) => classify_text(text),
        // Network errors, timeouts, (de)compression trouble: nothing the rows did.
        _ => Cause::Outage,
    }
}

/// The cause named by a server's exception text.
pub fn classify_text(text: &str) -> Cause {
    match exception_code(text) {
        Some(TOO_MANY_PARTS) if text.contains(TOO_MANY_PARTITIONS_TEXT) => Cause::BlockTooWide,
        Some(code) if DATA_CODES.iter().any(|(c, _)| *c == code) => Cause::Rows,
        _ => Cause::Outage,
    }
}

/// The number after a leading `Code:` (`Code: 395,` on 18.16, `Code: 469.`
/// on current releases, `Code: 252` from the header alone).
pub fn exception_code(text: &str) -> Option<u32> {
    let rest = text.trim_start().strip_prefix("Code:")?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{classify, classify_text, exception_code, Cause};

    /// Bodies as ClickHouse 18.16 (Debian's) sends them over HTTP, captured
    /// from the server the tests run.
    const V18_THROW_IF: &str = "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception";
    const V18_MEMORY: &str = "Code: 241, e.displayText() = DB::Exception: Memory limit (for query) exceeded: would use 2.00 MiB (attempt to allocate chunk of 4096 bytes), maximum: 976.56 KiB, e.what() = DB::Exception";
    const V18_TIMEOUT: &str = "Code: 159, e.displayText() = DB::Exception: Timeout exceeded: elapsed 1.003999953 seconds, maximum: 1, e.what() = DB::Exception";
    const V18_UNKNOWN_TABLE: &str = "Code: 60, e.displayText() = DB::Exception: Table default.nope doesn't exist., e.what() = DB::Exception";
    const V18_TOO_MANY_PARTS: &str = "Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts., e.what() = DB::Exception";
    const V18_NO_COLUMN: &str = "Code: 16, e.displayText() = DB::Exception: No such column nope in table t, e.what() = DB::Exception";
    const V18_SHORT_ROW: &str = "Code: 33, e.displayText() = DB::Exception: Cannot read all data. Bytes read: 1. Bytes expected: 4.: (at row 1)\n, e.what() = DB::Exception";

    const V18_UNKNOWN_USER: &str =
        "Code: 192, e.displayText() = DB::Exception: Unknown user nobody, e.what() = DB::Exception";

    /// Bodies as a current release (26.9) words them, captured from
    /// chdb-core, with the version suffix the HTTP interface adds.
    const V26_CONSTRAINT: &str = "Code: 469. DB::Exception: Constraint `c` for table p.t (8a7c307f-a792-4e1f-9543-8f28b48ff85f) is violated at row 2. Expression: (x != 13). Column values: x = 13. (VIOLATED_CONSTRAINT) (version 26.9.2.1 (official build))";
    const V26_THROW_IF: &str = "Code: 395. DB::Exception: poison: while executing 'FUNCTION throwIf(equals(x, 14_UInt8) :: 6, 'poison'_String :: 3) -> throwIf(equals(x, 14_UInt8), 'poison'_String) UInt8 : 0'. (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO) (version 26.9.2.1 (official build))";
    const V26_PARTITIONS: &str = "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 1). The limit is controlled by 'max_partitions_per_insert_block' setting. Large number of partitions is a common misconception. It will lead to severe negative performance impact, including slow server startup, slow INSERT queries and slow SELECT queries. Recommended total number of partitions for a table is under 1000..10000. Please note, that partitioning is not intended to speed up SELECT queries (ORDER BY key is sufficient to make range queries fast). Partitions are intended for data manipulation (DROP PARTITION, etc). (TOO_MANY_PARTS) (version 26.9.2.1 (official build))";
    const V26_TOO_MANY_PARTS: &str = "Code: 252. DB::Exception: Too many parts (3001 with average size of 1.07 KiB) in table 'spoor.events (5d7c1f6e-2a7b-4c3d-9e8f-0a1b2c3d4e5f)'. Merges are processing significantly slower than inserts. (TOO_MANY_PARTS) (version 26.9.2.1 (official build))";
    const V26_MEMORY: &str = "Code: 241. DB::Exception: Query memory limit exceeded: would use 2.06 MiB (attempt to allocate chunk of 0.00 B), maximum: 976.56 KiB: While executing AggregatingTransform. (MEMORY_LIMIT_EXCEEDED) (version 26.9.2.1 (official build))";
    const V26_UNKNOWN_TABLE: &str = "Code: 60. DB::Exception: Unknown table expression identifier 'p.nope'. Maybe you meant system.one? In scope SELECT count() FROM p.nope. (UNKNOWN_TABLE) (version 26.9.2.1 (official build))";

    #[test]
    fn refused_values_are_the_rows_fault_on_every_release() {
        for text in [V18_THROW_IF, V26_CONSTRAINT, V26_THROW_IF] {
            assert_eq!(classify_text(text), Cause::Rows, "{text}");
        }
    }

    #[test]
    fn too_many_partitions_splits_but_too_many_parts_waits() {
        assert_eq!(classify_text(V26_PARTITIONS), Cause::BlockTooWide);
        assert_eq!(classify_text(V26_TOO_MANY_PARTS), Cause::Outage);
        assert_eq!(classify_text(V18_TOO_MANY_PARTS), Cause::Outage);
    }

    #[test]
    fn the_server_being_unwell_or_misconfigured_is_an_outage() {
        for text in [
            V18_MEMORY,
            V18_TIMEOUT,
            V18_UNKNOWN_TABLE,
            V18_NO_COLUMN,
            V18_SHORT_ROW,
            V18_UNKNOWN_USER,
            V26_MEMORY,
            V26_UNKNOWN_TABLE,
            // What the crate gives when the body is empty.
            "503 Service Unavailable",
            "502 Bad Gateway",
            "Code: 241",
            "",
            "some proxy's HTML error page",
        ] {
            assert_eq!(classify_text(text), Cause::Outage, "{text}");
        }
        // The header-only form of a data code is still the data.
        assert_eq!(classify_text("Code: 469"), Cause::Rows);
    }

    #[test]
    fn errors_that_are_not_server_exceptions_are_outages() {
        use clickhouse::error::Error;
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify(&Error::Network(Box::new(refused))), Cause::Outage);
        assert_eq!(classify(&Error::TimedOut), Cause::Outage);
        assert_eq!(
            classify(&Error::BadResponse(V26_CONSTRAINT.into())),
            Cause::Rows
        );
    }

    #[test]
    fn codes_are_read_in_both_spellings() {
        assert_eq!(exception_code(V18_THROW_IF), Some(395));
        assert_eq!(exception_code(V26_CONSTRAINT), Some(469));
        assert_eq!(exception_code("Code: 252"), Some(252));
        assert_eq!(exception_code("  Code:6. x"), Some(6));
        assert_eq!(exception_code("500 Internal Server Error"), None);
        assert_eq!(exception_code("Code: x"), None);
        assert_eq!(exception_code("Code: 99999999999999999999"), None);
    }
}
