//! NATS message headers: parsing the block the server sends in `HMSG`
//! (including the `NATS/1.0 503` status line that means "no responders") and
//! encoding the block we send in `HPUB`. Pure functions over bytes; they must
//! never panic on any input and never emit a block that could break framing
//! (CR/LF inside a name or value would let a value forge a new header or end
//! the block early).

use crate::parser::ProtocolError;

const VERSION_LINE: &[u8] = b"NATS/1.0";

/// A parsed header block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// The inline status, e.g. `Some(503)` for no responders.
    pub status: Option<u16>,
    /// The text after the status, e.g. `No Responders` (often empty).
    pub description: String,
    /// Header lines in order; a name may repeat.
    pub entries: Vec<(String, String)>,
}

impl Headers {
    /// The first value of `name`, compared ASCII-case-insensitively because
    /// other clients canonicalise header names differently.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a complete header block (exactly the `hdr_len` bytes of an `HMSG`,
/// ending in an empty line).
pub fn parse_headers(block: &[u8]) -> Result<Headers, ProtocolError> {
    let bad = |why: &str| ProtocolError::BadHeaders(why.to_string());
    let body = block
        .strip_suffix(b"\r\n\r\n")
        .ok_or_else(|| bad("header block does not end with an empty line"))?;
    let mut lines = body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let rest = first
        .strip_prefix(VERSION_LINE)
        .ok_or_else(|| bad("header block does not start with NATS/1.0"))?;
    let mut headers = Headers::default();
    let rest = std::str::from_utf8(rest).map_err(|_| bad("status line is not UTF-8"))?;
    if !rest.is_empty() {
        if !rest.starts_with([' ', '\t']) {
            return Err(bad("garbage after NATS/1.0"));
        }
        let rest = rest.trim_start();
        let (code, desc) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        if !code.is_empty() {
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("status is not a 3-digit code"));
            }
            headers.status = code.parse().ok();
            headers.description = desc.trim().to_string();
        }
    }
    for line in lines {
        let line = std::str::from_utf8(line).map_err(|_| bad("header line is not UTF-8"))?;
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("header line without ':'"))?;
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("invalid header name"));
        }
        headers
            .entries
            .push((name.to_string(), value.trim().to_string()));
    }
    Ok(headers)
}

/// Why a header name or value cannot be sent, or `None` if it can.
pub fn invalid_header(name: &str, value: &str) -> Option<String> {
    if name.is_empty()
        || name
            .bytes()
            .any(|b| b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Some(format!(
            "header name {name:?} is empty or has ':', whitespace or controls"
        ));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Some(format!("value of header {name:?} contains CR or LF"));
    }
    None
}

/// Appends a header block with `entries` to `out`. The caller has checked
/// every entry with [`invalid_header`].
pub fn encode_headers<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(VERSION_LINE);
    out.extend_from_slice(b"\r\n");
    for (k, v) in entries {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks() {
        let h = |status: Option<u16>, desc: &str, e: &[(&str, &str)]| Headers {
            status,
            description: desc.into(),
            entries: e
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let cases: &[(&[u8], Headers)] = &[
            (b"NATS/1.0\r\n\r\n", h(None, "", &[])),
            (b"NATS/1.0 503\r\n\r\n", h(Some(503), "", &[])),
            (
                b"NATS/1.0 503 No Responders\r\n\r\n",
                h(Some(503), "No Responders", &[]),
            ),
            (
                b"NATS/1.0 408 Request Timeout\r\n\r\n",
                h(Some(408), "Request Timeout", &[]),
            ),
            (
                b"NATS/1.0\r\nA: 1\r\nB:2 \r\nA: x: y\r\n\r\n",
                h(None, "", &[("A", "1"), ("B", "2"), ("A", "x: y")]),
            ),
            (b"NATS/1.0\r\nEmpty:\r\n\r\n", h(None, "", &[("Empty", "")])),
        ];
        for (raw, want) in cases {
            assert_eq!(
                &parse_headers(raw).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let hs = parse_headers(b"NATS/1.0\r\nnats-msg-id: abc\r\n\r\n").unwrap();
        assert_eq!(hs.get("Nats-Msg-Id"), Some("abc"));
    }

    #[test]
    fn rejects_bad_blocks() {
        let cases: &[&[u8]] = &[
            b"",
            b"\r\n\r\n",
            b"NATS/1.0\r\n",
            b"NATS/2.0\r\n\r\n",
            b"NATS/1.0x\r\n\r\n",
            b"NATS/1.0 50\r\n\r\n",
            b"NATS/1.0 5034\r\n\r\n",
            b"NATS/1.0 abc\r\n\r\n",
            b"NATS/1.0\r\nNoColon\r\n\r\n",
            b"NATS/1.0\r\n: v\r\n\r\n",
            b"NATS/1.0\r\nA B: v\r\n\r\n",
            b"NATS/1.0\r\nA: \xff\r\n\r\n",
            b"NATS/1.0\r\n\r\nA: late\r\n\r\n",
        ];
        for raw in cases {
            assert!(
                parse_headers(raw).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn encode_round_trips() {
        let mut out = Vec::new();
        encode_headers([("Nats-Msg-Id", "m1"), ("X", "y z")], &mut out);
        assert_eq!(out, b"NATS/1.0\r\nNats-Msg-Id: m1\r\nX: y z\r\n\r\n");
        let h = parse_headers(&out).unwrap();
        assert_eq!(h.get("nats-msg-id"), Some("m1"));
        assert_eq!(h.get("x"), Some("y z"));
    }

    #[test]
    fn header_validation() {
        assert!(invalid_header("Nats-Msg-Id", "abc").is_none());
        assert!(invalid_header("", "v").is_some());
        assert!(invalid_header("A:B", "v").is_some());
        assert!(invalid_header("A B", "v").is_some());
        assert!(invalid_header("A", "v\r\nB: forged").is_some());
        assert!(invalid_header("A", "v\n").is_some());
    }
}
