//! The server-to-client wire parser: one pure function, [`parse_op`], that
//! reads at most one protocol operation from the front of a byte buffer.
//!
//! It is pure so that it can be fuzzed and table-tested without a socket, and
//! so the client's read loop is only "append bytes, call `parse_op`". It must
//! never panic on any input, never allocate more than the bytes it was given
//! plus what it returns, and never wait for more than [`Limits`] allow: a
//! control line longer than `max_line` or a payload larger than
//! `max_payload` is an error as soon as it is seen, not after it arrived.

use crate::headers::{parse_headers, Headers};
use serde::Deserialize;

#[cfg(test)]
mod tests;

/// NATS's own hard ceiling on `max_payload`; nothing we receive may be larger
/// whatever INFO claims.
pub const HARD_MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// Bounds on what [`parse_op`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest control line (without CRLF). INFO is the long one: a cluster's
    /// `connect_urls` can run to kilobytes.
    pub max_line: usize,
    /// Largest `MSG`/`HMSG` body (headers + payload).
    pub max_payload: usize,
}

impl Default for Limits {
    /// Before INFO told us the server's `max_payload`: NATS's default (1 MiB).
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            max_payload: 1024 * 1024,
        }
    }
}

/// One operation sent by the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerOp {
    Info(Box<ServerInfo>),
    Msg(Message),
    Ping,
    Pong,
    Ok,
    /// `-ERR` with its text, quotes removed.
    Err(String),
}

impl ServerOp {
    /// The operation's name, for error messages that must not dump payloads.
    pub fn name(&self) -> &'static str {
        match self {
            ServerOp::Info(_) => "INFO",
            ServerOp::Msg(m) if m.headers.is_some() => "HMSG",
            ServerOp::Msg(_) => "MSG",
            ServerOp::Ping => "PING",
            ServerOp::Pong => "PONG",
            ServerOp::Ok => "+OK",
            ServerOp::Err(_) => "-ERR",
        }
    }
}

/// A delivered message (`MSG`, or `HMSG` with `headers: Some`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    pub headers: Option<Headers>,
    pub payload: Vec<u8>,
}

impl Message {
    /// The inline status of an `HMSG` (503 = no responders).
    pub fn status(&self) -> Option<u16> {
        self.headers.as_ref().and_then(|h| h.status)
    }
}

/// The fields of the server's `INFO` this client uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: i64,
    pub max_payload: usize,
    pub headers: bool,
    pub jetstream: bool,
    pub auth_required: bool,
    pub client_id: Option<u64>,
    /// The challenge an nkey user signs (`Auth::NKey`); servers send it
    /// when nkey users are configured.
    pub nonce: Option<String>,
}

impl Default for ServerInfo {
    fn default() -> Self {
        ServerInfo {
            server_id: String::new(),
            server_name: String::new(),
            version: String::new(),
            proto: 0,
            max_payload: Limits::default().max_payload,
            headers: false,
            jetstream: false,
            auth_required: false,
            client_id: None,
            nonce: None,
        }
    }
}

/// Why the bytes from the server are not the NATS protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("control line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    #[error("bad arguments to {op}: {line:?}")]
    BadArguments { op: &'static str, line: String },
    #[error("message body of {size} bytes exceeds the limit of {max}")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("message body not followed by CRLF")]
    MissingPayloadTerminator,
    #[error("unparseable INFO: {0}")]
    BadInfo(String),
    #[error("bad header block: {0}")]
    BadHeaders(String),
}

/// Parses the operation at the front of `buf`.
///
/// `Ok(None)` means the buffer holds only a prefix of an operation: read more
/// and call again with the longer buffer. `Ok(Some((op, n)))` means `op`
/// occupied the first `n` bytes. An `Err` is final: the stream cannot be
/// resynchronised and the connection must be dropped.
pub fn parse_op(buf: &[u8], limits: &Limits) -> Result<Option<(ServerOp, usize)>, ProtocolError> {
    // The line may be max_line bytes plus "\r\n".
    let window = &buf[..buf.len().min(limits.max_line.saturating_add(2))];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_line.saturating_add(1) {
            return Err(ProtocolError::LineTooLong {
                max: limits.max_line,
            });
        }
        return Ok(None);
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limits.max_line {
        return Err(ProtocolError::LineTooLong {
            max: limits.max_line,
        });
    }
    let after_line = nl + 1;
    let (name, rest) = split_first_word(line);

    if name.eq_ignore_ascii_case(b"PING") {
        no_args("PING", rest)?;
        return Ok(Some((ServerOp::Ping, after_line)));
    }
    if name.eq_ignore_ascii_case(b"PONG") {
        no_args("PONG", rest)?;
        return Ok(Some((ServerOp::Pong, after_line)));
    }
    if name.eq_ignore_ascii_case(b"+OK") {
        no_args("+OK", rest)?;
        return Ok(Some((ServerOp::Ok, after_line)));
    }
    if name.eq_ignore_ascii_case(b"-ERR") {
        let text = String::from_utf8_lossy(trim(rest));
        let text = text.trim_matches('\'').to_string();
        return Ok(Some((ServerOp::Err(text), after_line)));
    }
    if name.eq_ignore_ascii_case(b"INFO") {
        let json = trim(rest);
        // serde would also build the struct from a JSON array.
        if !json.starts_with(b"{") {
            return Err(ProtocolError::BadInfo("not a JSON object".into()));
        }
        let info: ServerInfo =
            serde_json::from_slice(json).map_err(|e| ProtocolError::BadInfo(e.to_string()))?;
        return Ok(Some((ServerOp::Info(Box::new(info)), after_line)));
    }
    let headers = if name.eq_ignore_ascii_case(b"MSG") {
        false
    } else if name.eq_ignore_ascii_case(b"HMSG") {
        true
    } else {
        let shown = String::from_utf8_lossy(&name[..name.len().min(16)]).into_owned();
        return Err(ProtocolError::UnknownOp(shown));
    };
    parse_msg(buf, after_line, line, rest, headers, limits)
}

fn parse_msg(
    buf: &[u8],
    after_line: usize,
    line: &[u8],
    rest: &[u8],
    with_headers: bool,
    limits: &Limits,
) -> Result<Option<(ServerOp, usize)>, ProtocolError> {
    let op = if with_headers { "HMSG" } else { "MSG" };
    let bad = || ProtocolError::BadArguments {
        op,
        line: String::from_utf8_lossy(&line[..line.len().min(256)]).into_owned(),
    };
    // At most 5 arguments; collecting more than that is never needed.
    let mut args: [&[u8]; 6] = [&[]; 6];
    let mut n = 0;
    for word in rest
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
    {
        if n == args.len() {
            return Err(bad());
        }
        args[n] = word;
        n += 1;
    }
    let fixed = if with_headers { 4 } else { 3 }; // without the optional reply
    let (reply, sizes) = match n {
        x if x == fixed => (None, &args[2..n]),
        x if x == fixed + 1 => (Some(args[2]), &args[3..n]),
        _ => return Err(bad()),
    };
    let subject = utf8(args[0]).ok_or_else(bad)?;
    let sid: u64 = parse_number(args[1]).ok_or_else(bad)?;
    let reply = match reply {
        Some(r) => Some(utf8(r).ok_or_else(bad)?),
        None => None,
    };
    let (hdr_len, total): (usize, usize) = if with_headers {
        let h = parse_number(sizes[0]).ok_or_else(bad)?;
        let t = parse_number(sizes[1]).ok_or_else(bad)?;
        if h > t {
            return Err(bad());
        }
        (h, t)
    } else {
        (0, parse_number(sizes[0]).ok_or_else(bad)?)
    };
    let max = limits.max_payload.min(HARD_MAX_PAYLOAD);
    if total > max {
        return Err(ProtocolError::PayloadTooLarge { size: total, max });
    }
    // total <= 64 MiB, so none of these additions can overflow.
    let body_end = after_line + total;
    let op_end = body_end + 2;
    if buf.len() < op_end {
        return Ok(None);
    }
    if &buf[body_end..op_end] != b"\r\n" {
        return Err(ProtocolError::MissingPayloadTerminator);
    }
    let body = &buf[after_line..body_end];
    let headers = if with_headers {
        Some(parse_headers(&body[..hdr_len])?)
    } else {
        None
    };
    let msg = Message {
        subject: subject.to_string(),
        sid,
        reply: reply.map(str::to_string),
        headers,
        payload: body[hdr_len..].to_vec(),
    };
    Ok(Some((ServerOp::Msg(msg), op_end)))
}

fn split_first_word(line: &[u8]) -> (&[u8], &[u8]) {
    let end = line
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(line.len());
    (&line[..end], &line[end..])
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

fn no_args(op: &'static str, rest: &[u8]) -> Result<(), ProtocolError> {
    if trim(rest).is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::BadArguments {
            op,
            line: String::from_utf8_lossy(&rest[..rest.len().min(256)]).into_owned(),
        })
    }
}

fn utf8(s: &[u8]) -> Option<&str> {
    std::str::from_utf8(s).ok()
}

/// A decimal size or sid: digits only (no sign, no spaces, no `+` that
/// `str::parse` would accept), at most 19 of them; `parse` catches overflow.
fn parse_number<T: std::str::FromStr>(s: &[u8]) -> Option<T> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}
