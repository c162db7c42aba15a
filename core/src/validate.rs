//! Field-level rules for one event: event names, identities, the property
//! bag's shape and size. Each failure maps to a stable reason code and a
//! sentence a client developer can act on. No rule here allocates per byte of
//! input beyond the compact copy of the property bag.

use std::borrow::Cow;

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

/// Checks that `json`, a JSON value the parser has already read (so its
/// syntax is valid), is an object within the depth and string limits, and
/// returns it as compact JSON text: borrowed when it already is compact,
/// as SDKs send it.
///
/// One pass over the bytes: containers are counted for depth, strings are
/// measured raw (a string without escapes is as long as its text), and the
/// rare string with escapes, or number with an exponent or many digits, is
/// decoded by serde_json to apply the same rules a full parse would (lone
/// surrogates and infinite numbers are errors). The tests hold it to the
/// verdicts of a full serde walk.
pub fn check_properties<'a>(json: &'a str, limits: &Limits) -> Result<Cow<'a, str>, Invalid> {
    let trimmed = json.trim();
    if !trimmed.starts_with('{') {
        return Err(Invalid::new(
            "invalid_properties",
            "`properties` must be a JSON object",
        ));
    }
    let b = trimmed.as_bytes();
    // Per open container: is it an object (whose next string is a key)?
    let mut stack: Vec<bool> = Vec::with_capacity(8);
    let mut expect_key = false;
    let mut compact = true;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                if stack.len() + 1 > limits.max_property_depth {
                    return Err(Invalid::new(
                        "properties_too_deep",
                        format!(
                            "`properties` nests deeper than {} levels",
                            limits.max_property_depth
                        ),
                    ));
                }
                let object = b[i] == b'{';
                stack.push(object);
                expect_key = object;
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
                i += 1;
            }
            b',' => {
                expect_key = stack.last() == Some(&true);
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' {
                        escaped = true;
                        j += 1;
                    }
                    j += 1;
                }
                let end = j.min(b.len());
                let what = if expect_key { "key" } else { "string" };
                let len = if escaped {
                    let token = trimmed.get(i..(end + 1).min(b.len())).unwrap_or("");
                    serde_json::from_str::<Cow<'_, str>>(token)
                        .map_err(|e| invalid_properties(&e))?
                        .len()
                } else {
                    end - start
                };
                if len > limits.max_string_bytes {
                    return Err(Invalid::new(
                        "string_too_long",
                        format!(
                            "a {what} in `properties` is {len} bytes; the limit is {}",
                            limits.max_string_bytes
                        ),
                    ));
                }
                expect_key = false;
                i = end + 1;
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                compact = false;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut plain = true;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    plain &= !matches!(b[i], b'e' | b'E');
                    i += 1;
                }
                // An integer too large for 64 bits is read as a float, and
                // only a float can be out of range.
                if !plain || i - start > 300 {
                    let n: f64 = trimmed[start..i].parse().unwrap_or(f64::INFINITY);
                    if !n.is_finite() {
                        return Err(Invalid::new(
                            "invalid_properties",
                            "`properties`: number out of range",
                        ));
                    }
                }
            }
            // The letters of true, false and null.
            _ => i += 1,
        }
    }
    Ok(if compact {
        Cow::Borrowed(trimmed)
    } else {
        Cow::Owned(minify_json(trimmed))
    })
}

fn invalid_properties(e: &serde_json::Error) -> Invalid {
    Invalid::new("invalid_properties", format!("`properties`: {e}"))
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
    use proptest::prelude::*;
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// The rules as a full serde walk (the implementation before the byte
    /// scanner): the oracle `check_properties` must agree with.
    fn reference_check_properties(json: &str, limits: &Limits) -> Result<String, Invalid> {
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

    /// JSON text with random whitespace, escapes (valid, lone surrogates),
    /// huge and tiny numbers and nesting.
    fn arb_json() -> impl Strategy<Value = String> {
        let ws = prop_oneof![Just(""), Just(""), Just(" "), Just("\n\t")];
        let string = prop_oneof![
            "[a-z]{0,12}".prop_map(|s| format!("\"{s}\"")),
            ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            prop::sample::select(vec![
                r#""\u00e9\u00e9\u00e9""#,
                r#""\ud83d\ude00x""#,
                r#""\ud800""#,
                r#""a\"b\\c""#,
                r#""\n\t\r\/\b\f0123456""#,
                r#""\udc00\ud800""#,
            ])
            .prop_map(str::to_string),
        ];
        let number = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
            prop::sample::select(vec![
                "1e400",
                "-1e999",
                "1e-400",
                "123456789012345678901234567890",
                "1.5E3",
                "0.0",
                "-0",
            ])
            .prop_map(str::to_string),
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            number,
            string.clone(),
        ];
        leaf.prop_recursive(6, 48, 5, move |inner| {
            let ws = ws.clone();
            prop_oneof![
                (
                    prop::collection::vec((inner.clone(), ws.clone()), 0..5),
                    ws.clone()
                )
                    .prop_map(|(items, w)| {
                        let parts: Vec<String> = items
                            .into_iter()
                            .map(|(v, w2)| format!("{w2}{v}{w2}"))
                            .collect();
                        format!("[{w}{}]", parts.join(","))
                    }),
                (
                    prop::collection::vec((string.clone(), inner, ws.clone()), 0..5),
                    ws
                )
                    .prop_map(|(items, w)| {
                        let parts: Vec<String> = items
                            .into_iter()
                            .map(|(k, v, w2)| format!("{w2}{k}{w2}:{w}{v}"))
                            .collect();
                        format!("{{{w}{}}}", parts.join(","))
                    }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_byte_scanner_agrees_with_a_full_serde_walk(v in arb_json(), wrap in any::<bool>(),
                                                          depth in 1usize..6, max_str in 0usize..16) {
            let json = if wrap { format!("{{\"k\": {v}}}") } else { v };
            // check_properties reads text the parser has already accepted.
            prop_assume!(serde_json::from_str::<&serde_json::value::RawValue>(&json).is_ok());
            let l = Limits { max_property_depth: depth, max_string_bytes: max_str, ..Limits::default() };
            let new = check_properties(&json, &l).map(Cow::into_owned);
            let old = reference_check_properties(&json, &l);
            match (&new, &old) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a.reason, b.reason, "{:?} vs {:?}", a, b);
                    if a.reason != "invalid_properties" {
                        prop_assert_eq!(&a.message, &b.message);
                    }
                }
                _ => prop_assert!(false, "{json}: scanner {new:?}, serde walk {old:?}"),
            }
        }
    }

    #[test]
    fn compact_properties_are_borrowed() {
        let l = Limits::default();
        assert!(matches!(
            check_properties(r#"{"a":[1,"x y"]}"#, &l),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            check_properties(r#"{"a": 1}"#, &l),
            Ok(Cow::Owned(_))
        ));
    }

    #[test]
    fn minify_keeps_strings() {
        assert_eq!(
            minify_json("{ \"a \\\" b\" : 1 ,\n\"c\":[ 1 , 2 ] }"),
            "{\"a \\\" b\":1,\"c\":[1,2]}"
        );
    }
}
