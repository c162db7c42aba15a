//! Reading the Prometheus text exposition format (what every Spoor daemon
//! and the edge serve at `/metrics`): the one parser behind the CLI's
//! `reconcile --relay`, the demo's relay summary and the tests' metric
//! checks.
//!
//! A page is lines; `#` lines (HELP, TYPE, comments) and blank lines carry
//! no sample. A sample line is `name{label="value",...} value [timestamp]`:
//! label values may hold `\\`, `\"` and `\n` escapes, values may be `NaN`,
//! `+Inf` or `-Inf`, the timestamp is ignored. Pure and platform-neutral: it
//! reads text and never fetches it.
//!
//! Selectors name one series in the same syntax without a value
//! (`spoor_relay_decode_errors_total{kind="bad_magic"}`); a series matches
//! when its name and its whole label set are equal, in any order.

use std::fmt;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Labels in the order the page lists them, values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn matches(&self, name: &str, labels: &[(String, String)]) -> bool {
        self.name == name
            && self.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// A line that is not a sample, a comment or blank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based; 0 for a selector.
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// The samples of a page, one `Result` per line that is not a comment or
/// blank (so a caller may skip what it cannot read, or stop at it).
pub fn samples(text: &str) -> impl Iterator<Item = Result<Sample, ParseError>> + '_ {
    text.lines().enumerate().filter_map(|(i, line)| {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return None;
        }
        Some(parse_sample(trimmed).map_err(|reason| ParseError {
            line: i + 1,
            reason,
            text: line.to_string(),
        }))
    })
}

/// A parsed page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Every sample of the page; the first line that does not parse is an error.
    pub fn parse(text: &str) -> Result<Metrics, ParseError> {
        Ok(Metrics {
            samples: samples(text).collect::<Result<_, _>>()?,
        })
    }

    /// Every sample of the page that parses; other lines are skipped.
    pub fn parse_lossy(text: &str) -> Metrics {
        Metrics {
            samples: samples(text).filter_map(Result::ok).collect(),
        }
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The value of the series `selector` names (`name` or
    /// `name{k="v",...}`), if the page has it. A selector that does not
    /// parse matches nothing.
    pub fn get(&self, selector: &str) -> Option<f64> {
        let (name, labels) = parse_series(selector.trim()).ok()?;
        self.samples
            .iter()
            .find(|s| s.matches(name, &labels))
            .map(|s| s.value)
    }

    /// The sum of every series named `name`, whatever its labels (0 when
    /// there is none).
    pub fn sum(&self, name: &str) -> f64 {
        // A fold from +0.0: `Sum for f64` starts at -0.0, which would print
        // an absent counter as "-0".
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .fold(0.0, |sum, s| sum + s.value)
    }
}

impl fmt::Display for Sample {
    /// The sample as a page line (labels escaped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                let v = v
                    .replace('\\', r"\\")
                    .replace('"', "\\\"")
                    .replace('\n', r"\n");
                write!(f, "{k}=\"{v}\"")?;
            }
            f.write_str("}")?;
        }
        write!(f, " {}", format_value(self.value))
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// A selector: a series and nothing after it.
fn parse_series(text: &str) -> Result<(&str, Vec<(String, String)>), &'static str> {
    let mut p = Cursor { text, pos: 0 };
    let series = p.series()?;
    if p.pos != text.len() {
        return Err("text after the series");
    }
    Ok(series)
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let mut p = Cursor { text: line, pos: 0 };
    let (name, labels) = p.series()?;
    let rest = &line[p.pos..];
    if !rest.starts_with([' ', '\t']) {
        return Err("no value after the series");
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value after the series")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| "a timestamp that is not an integer")?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp");
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_value(text: &str) -> Result<f64, &'static str> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => {
            // Only plain decimal and exponent forms: Rust would also read
            // "inf" or "infinity", which the format spells otherwise.
            if !text
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            {
                return Err("a value that is not a number");
            }
            text.parse().map_err(|_| "a value that is not a number")
        }
    }
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// A metric name and its labels, if any.
    fn series(&mut self) -> Result<(&'a str, Vec<(String, String)>), &'static str> {
        let name = self.name()?;
        let labels = if self.peek() == Some('{') {
            self.labels()?
        } else {
            Vec::new()
        };
        Ok((name, labels))
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` (metric names; label names are the same
    /// without `:`, which is accepted here too).
    fn name(&mut self) -> Result<&'a str, &'static str> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphabetic()
                || c == '_'
                || c == ':'
                || (self.pos > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err("no name");
        }
        Ok(&self.text[start..self.pos])
    }

    /// `{k="v",...}`, a trailing comma allowed.
    fn labels(&mut self) -> Result<Vec<(String, String)>, &'static str> {
        self.bump(); // '{'
        let mut labels = Vec::new();
        loop {
            self.skip_spaces();
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(labels);
            }
            let key = self.name()?.to_string();
            self.skip_spaces();
            if self.bump() != Some('=') {
                return Err("a label without `=`");
            }
            self.skip_spaces();
            if self.bump() != Some('"') {
                return Err("a label value without quotes");
            }
            let mut value = String::new();
            loop {
                match self.bump().ok_or("an unterminated label value")? {
                    '"' => break,
                    '\\' => match self.bump().ok_or("an unterminated label value")? {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        _ => return Err("an unknown escape in a label value"),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            self.skip_spaces();
            match self.bump() {
                Some(',') => {}
                Some('}') => return Ok(labels),
                _ => return Err("labels not separated by `,` or closed by `}`"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP spoor_relay_dead_lettered_total Frames moved to the dead-letter stream.
# TYPE spoor_relay_dead_lettered_total counter
spoor_relay_messages_received_total 12

spoor_relay_dead_lettered_total{reason=\"bad_magic\"} 2
spoor_relay_dead_lettered_total{reason=\"too_large\"} 1
spoor_relay_insert_batch_rows_bucket{le=\"1024.0\"} 7
spoor_relay_insert_batch_rows_bucket{le=\"+Inf\"} 9
spoor_edge_published_events_total{region=\"eu\",mode=\"fast\"} 3 1700000000000
weird{path=\"a \\\"q\\\" b\\\\c\\nd\"} NaN
gauge_up +Inf
gauge_down -Inf
small 1.5e-3
";

    #[test]
    fn reads_names_labels_values_and_skips_comments() {
        let m = Metrics::parse(PAGE).unwrap();
        assert_eq!(m.samples().len(), 10);
        assert_eq!(m.get("spoor_relay_messages_received_total"), Some(12.0));
        assert_eq!(
            m.get(r#"spoor_relay_dead_lettered_total{reason="too_large"}"#),
            Some(1.0)
        );
        assert_eq!(
            m.get(r#"spoor_relay_insert_batch_rows_bucket{le="+Inf"}"#),
            Some(9.0)
        );
        assert_eq!(m.get("small"), Some(0.0015));
        assert_eq!(m.get("gauge_up"), Some(f64::INFINITY));
        assert_eq!(m.get("gauge_down"), Some(f64::NEG_INFINITY));
    }

    #[test]
    fn label_values_are_unescaped() {
        let m = Metrics::parse(PAGE).unwrap();
        let weird = m.samples().iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(weird.label("path"), Some("a \"q\" b\\c\nd"));
        assert!(weird.value.is_nan());
        assert_eq!(weird.to_string(), r#"weird{path="a \"q\" b\\c\nd"} NaN"#);
        assert!(m.get(r#"weird{path="a \"q\" b\\c\nd"}"#).unwrap().is_nan());
    }

    #[test]
    fn a_selector_matches_the_whole_label_set_in_any_order() {
        let m = Metrics::parse(PAGE).unwrap();
        let edge = "spoor_edge_published_events_total";
        assert_eq!(
            m.get(&format!(r#"{edge}{{region="eu",mode="fast"}}"#)),
            Some(3.0)
        );
        assert_eq!(
            m.get(&format!(r#"{edge}{{mode="fast", region="eu"}}"#)),
            Some(3.0)
        );
        assert_eq!(m.get(&format!(r#"{edge}{{region="eu"}}"#)), None);
        assert_eq!(m.get(edge), None);
        assert_eq!(m.get("spoor_relay_dead_lettered_total"), None);
        assert_eq!(m.get("absent_total"), None);
        assert_eq!(m.get("not a selector"), None);
        assert_eq!(m.get(r#"x{a="1"} 3"#), None);
    }

    #[test]
    fn sum_adds_every_series_of_a_name() {
        let m = Metrics::parse(PAGE).unwrap();
        assert_eq!(m.sum("spoor_relay_dead_lettered_total"), 3.0);
        assert_eq!(m.sum("spoor_relay_messages_received_total"), 12.0);
        // A name is whole: no prefix matches.
        assert_eq!(m.sum("spoor_relay_dead_lettered"), 0.0);
        assert_eq!(m.sum("absent_total"), 0.0);
        assert!(m.sum("absent_total").is_sign_positive());
    }

    #[test]
    fn bad_lines_are_errors_with_their_line_number_or_skipped_when_lossy() {
        for (line, reason) in [
            ("x", "no value after the series"),
            ("x{a=\"1\"", "labels not separated by `,` or closed by `}`"),
            ("x{a=1} 2", "a label value without quotes"),
            ("x{a=\"\\t\"} 2", "an unknown escape in a label value"),
            ("x{a=\"1} 2", "an unterminated label value"),
            ("x 1 2 3", "text after the timestamp"),
            ("x one", "a value that is not a number"),
            ("x inf", "a value that is not a number"),
            ("x 1 soon", "a timestamp that is not an integer"),
            ("{a=\"1\"} 2", "no name"),
        ] {
            let text = format!("ok 1\n{line}\n");
            let err = Metrics::parse(&text).unwrap_err();
            assert_eq!(
                err,
                ParseError {
                    line: 2,
                    reason,
                    text: line.to_string()
                },
                "{line}"
            );
            assert_eq!(Metrics::parse_lossy(&text).get("ok"), Some(1.0));
        }
    }

    #[test]
    fn empty_pages_have_no_samples() {
        assert_eq!(Metrics::parse("").unwrap(), Metrics::default());
        assert_eq!(Metrics::parse("# only\n\n").unwrap().samples().len(), 0);
    }
}
