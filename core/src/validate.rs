//! Field-level rules for one event: event names, identities, the property
//! bag's shape and size. Each failure maps to a stable reason code and a
//! sentence a client developer can act on. No rule here allocates per byte of
//! input beyond the compact copy of the property bag.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

use crate::limits::Limits;

/// Why one event was rejected: a stable machine code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            reason,
            message: message.into(),
        }
    }
}

/// Event names: 1..=max bytes, starting with a letter, `_` or `$`, then
/// letters, digits, spaces and `_ - . : $ /`, with no leading or trailing space.
pub fn check_event_name(name: &str, limits: &Limits) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::new(
            "missing_event_name",
            "`event` must be a non-empty string",
        ));
    }
    if name.len() > limits.max_event_name_bytes {
        return Err(Invalid::new(
            "invalid_event_name",
            format!(
                "`event` is {} bytes; the limit is {}",
                name.len(),
                limits.max_event_name_bytes
            ),
        ));
    }
    let first_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '$');
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.' | ':' | '$' | '/'));
    if !first_ok || !rest_ok || name.ends_with(' ') {
        return Err(Invalid::new(
            "invalid_event_name",
            format!(
                "`event` {name:?} must start with a letter, `_` or `$` and hold only letters, digits, spaces and `_ - . : $ /`"
            ),
        ));
    }
    Ok(())
}

/// user_id, anonymous_id and session_id: bounded and free of control characters.
pub fn check_id(field: &str, value: &str, limits: &Limits) -> Result<(), Invalid> {
    if value.len() > limits.max_id_bytes {
        return Err(Invalid::new(
            "id_too_long",
            format!(
                "`{field}` is {} bytes; the limit is {}",
                value.len(),
                limits.max_id_bytes
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(
            "invalid_id",
            format!("`{field}` holds control characters"),
        ));
    }
    Ok(())
}

pub fn check_string(field: &str, value: &str, limits: &Limits) -> Result<(), Invalid> {
    if value.len() > limits.max_string_bytes {
        return Err(Invalid::new(
            "string_too_long",
            format!(
                "`{field}` is {} bytes; the limit is {}",
                value.len(),
                limits.max_string_bytes
            ),
        ));
    }
    Ok(())
}

/// Checks that `json` is an object within the depth and string limits, and
/// returns it as compact JSON text.
pub fn check_properties(json: &str, limits: &Limits) -> Result<String, Invalid> {
    let trimmed = json.trim();
    if !trimmed.starts_with('{') {
        return Err(Invalid::new(
            "invalid_properties",
            "`properties` must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(trimmed);
    let mut problem = None;
    let seed = Walk {
        depth: 0,
        limits,
        problem: &mut problem,
        path_hint: "properties",
    };
    let res = seed.deserialize(&mut de);
    if let Some(p) = problem {
        return Err(p);
    }
    res.map_err(|e| Invalid::new("invalid_properties", format!("`properties`: {e}")))?;
    Ok(minify_json(trimmed))
}

/// Walks a JSON value checking nesting depth and string sizes. It records the
/// first problem in `problem` and stops by returning a serde error.
struct Walk<'p, 'l> {
    depth: usize,
    limits: &'l Limits,
    problem: &'p mut Option<Invalid>,
    path_hint: &'static str,
}

impl Walk<'_, '_> {
    fn fail<E: de::Error>(&mut self, inv: Invalid) -> E {
        let msg = inv.message.clone();
        *self.problem = Some(inv);
        E::custom(msg)
    }

    fn check_str<E: de::Error>(&mut self, s: &str, what: &str) -> Result<(), E> {
        if s.len() > self.limits.max_string_bytes {
            let inv = Invalid::new(
                "string_too_long",
                format!(
                    "a {what} in `{}` is {} bytes; the limit is {}",
                    self.path_hint,
                    s.len(),
                    self.limits.max_string_bytes
                ),
            );
            return Err(self.fail(inv));
        }
        Ok(())
    }

    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        if self.depth + 1 > self.limits.max_property_depth {
            let inv = Invalid::new(
                "properties_too_deep",
                format!(
                    "`{}` nests deeper than {} levels",
                    self.path_hint, self.limits.max_property_depth
                ),
            );
            return Err(self.fail(inv));
        }
        Ok(())
    }

    fn child(&mut self) -> Walk<'_, '_> {
        Walk {
            depth: self.depth + 1,
            limits: self.limits,
            problem: self.problem,
            path_hint: self.path_hint,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(mut self, s: &str) -> Result<(), E> {
        self.check_str(s, "string")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.enter()?;
        while seq.next_element_seed(self.child())?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.enter()?;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            self.check_str(&key, "key")?;
            map.next_value_seed(self.child())?;
        }
        Ok(())
    }
}

/// Removes whitespace outside string literals from valid JSON text, so the
/// stored bag is compact (ClickHouse 18.16's visitParam* functions need that).
pub fn minify_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_str = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        let l = Limits::default();
        for ok in [
            "page_view",
            "Order Completed",
            "$pageview",
            "_x",
            "checkout:step-2",
            "a/b.c",
        ] {
            assert_eq!(check_event_name(ok, &l), Ok(()), "{ok}");
        }
        for (bad, reason) in [
            ("", "missing_event_name"),
            ("1abc", "invalid_event_name"),
            (" x", "invalid_event_name"),
            ("x ", "invalid_event_name"),
            ("a\nb", "invalid_event_name"),
            ("emoji🎉", "invalid_event_name"),
            (&"x".repeat(129), "invalid_event_name"),
        ] {
            assert_eq!(
                check_event_name(bad, &l).unwrap_err().reason,
                reason,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn properties_rules() {
        let l = Limits {
            max_property_depth: 3,
            max_string_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(
            check_properties(r#" { "a" : [1, {"b": "x y"}] } "#, &l).unwrap(),
            r#"{"a":[1,{"b":"x y"}]}"#
        );
        assert_eq!(
            check_properties("[1]", &l).unwrap_err().reason,
            "invalid_properties"
        );
        assert_eq!(
            check_properties("\"s\"", &l).unwrap_err().reason,
            "invalid_properties"
        );
        assert_eq!(
            check_properties(r#"{"a":{"b":{"c":{}}}}"#, &l)
                .unwrap_err()
                .reason,
            "properties_too_deep"
        );
        assert_eq!(
            check_properties(r#"{"a":"0123456789A"}"#, &l)
                .unwrap_err()
                .reason,
            "string_too_long"
        );
        assert_eq!(
            check_properties(r#"{"0123456789A":1}"#, &l)
                .unwrap_err()
                .reason,
            "string_too_long"
        );
        assert!(check_properties(r#"{"a":{"b":{}}}"#, &l).is_ok());
    }

    #[test]
    fn minify_keeps_strings() {
        assert_eq!(
            minify_json("{ \"a \\\" b\" : 1 ,\n\"c\":[ 1 , 2 ] }"),
            "{\"a \\\" b\":1,\"c\":[1,2]}"
        );
    }
}
