//! The batch envelope read by a byte scanner: `{"batch": [...], "sent_at":
//! ..., other members}` into `sent_at`'s raw value and each event's JSON
//! text, without tokenizing the events (the per-event parse that follows
//! reads each one fully and validates its syntax).
//!
//! It answers only for bodies it fully understands and `None` for anything
//! else, which `ingest` then reads through the reference path (serde raw
//! values), so every error and every odd case is decided there:
//! a key with an escape or a control character, a repeated `batch` or `sent_at`, `batch` not an
//! array or too long, nesting deeper than `MAX_DEPTH`, text after the
//! envelope, anything cut off. Members other than `batch` are validated
//! by serde (they are small). The element scan does not check that
//! brackets pair up or that literals are well formed: each element is
//! parsed afterwards, and an element that is not valid JSON sends the
//! request to the reference path.

use serde_json::value::RawValue;

use crate::limits::Limits;

/// Deeper than this anywhere in the body, the reference path decides
/// (serde_json stops at 128 levels; the reference path reports it).
const MAX_DEPTH: usize = 100;

/// `sent_at` (if sent) and the events' texts, trimmed of whitespace, or
/// `None` when the reference path must decide.
pub(super) fn split_batch<'a>(
    text: &'a str,
    limits: &Limits,
) -> Option<(Option<&'a RawValue>, Vec<&'a str>)> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut sent_at: Option<&RawValue> = None;
    let mut batch: Option<Vec<&str>> = None;
    i = skip_ws(b, i);
    if b.get(i) == Some(&b'}') {
        return None; // no `batch`: the reference path words the error
    }
    loop {
        // A member: "key" : value
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key = &text[i + 1..key_end - 1];
        // Keys are short: escapes and control characters (which serde
        // refuses) go to the reference path.
        if key.bytes().any(|c| c == b'\\' || c < 0x20) {
            return None;
        }
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        if key == "batch" {
            if batch.is_some() || b.get(i) != Some(&b'[') {
                return None;
            }
            let (events, end) = split_array(text, i, limits)?;
            batch = Some(events);
            i = end;
        } else {
            let end = skip_value(b, i, 1)?;
            let value = &text[i..end];
            // Small members are validated here; `sent_at` is kept raw.
            let raw: &RawValue = serde_json::from_str(value).ok()?;
            if key == "sent_at" {
                if sent_at.is_some() {
                    return None;
                }
                sent_at = Some(raw);
            }
            i = end;
        }
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => {
                i += 1;
                break;
            }
            _ => return None,
        }
    }
    if skip_ws(b, i) != b.len() {
        return None;
    }
    Some((sent_at, batch?))
}

/// The elements of the array opening at `start`, and the index after it.
fn split_array<'a>(text: &'a str, start: usize, limits: &Limits) -> Option<(Vec<&'a str>, usize)> {
    let b = text.as_bytes();
    let mut events = Vec::new();
    let mut i = skip_ws(b, start + 1);
    if b.get(i) == Some(&b']') {
        return Some((events, i + 1));
    }
    loop {
        let end = skip_value(b, i, 2)?;
        if events.len() == limits.max_batch_events {
            return None; // too many: the reference path says so
        }
        events.push(&text[i..end]);
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Some((events, i + 1)),
            _ => return None,
        }
    }
}

/// The end of the JSON value starting at `i` (already past whitespace),
/// found structurally; `depth` is the nesting the value starts at.
fn skip_value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut d = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => {
                        d += 1;
                        if depth + d > MAX_DEPTH {
                            return None;
                        }
                    }
                    b'}' | b']' => {
                        d -= 1;
                        if d == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            // A number or a literal: up to the next delimiter.
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The index after the string whose opening quote is at `i`. Strings are
/// most of a batch's bytes, so they are skipped eight bytes at a time
/// while no quote or backslash is among them.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        while let Some(chunk) = b.get(j..j + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let v = u64::from_le_bytes(word);
            if has_byte(v, b'"') | has_byte(v, b'\\') != 0 {
                break;
            }
            j += 8;
        }
        match *b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// Non-zero when some byte of `v` equals `c` (the classic SWAR test).
fn has_byte(v: u64, c: u8) -> u64 {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = v ^ (LOW * u64::from(c));
    x.wrapping_sub(LOW) & !x & HIGH
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}
