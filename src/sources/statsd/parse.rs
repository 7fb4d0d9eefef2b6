//! The statsd line protocol, with the DogStatsD extensions:
//!
//! ```text
//! <name>:<value>[:<value>…]|<type>[|@<sample rate>][|#<tag>[:<value>],…][|c:<container>][|T<timestamp>]
//! ```
//!
//! Types: `c` counter, `g` gauge (a value with a leading `+` or `-` is a
//! delta), `ms` timer, `h` histogram, `d` distribution, `s` set. Unknown
//! `|` sections are skipped, so newer client extensions do not make a line
//! bad. DogStatsD events (`_e{…}`) and service checks (`_sc|…`) are not
//! metrics and are refused as `unsupported`. A tag without a value gets
//! the value `true`.

use std::str;

/// Most tags on one line.
pub(crate) const MAX_TAGS: usize = 64;

/// Longest metric name, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 512;

/// A statsd metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatsdType {
    /// `c`.
    Counter,
    /// `g`.
    Gauge,
    /// `ms`, `h` and `d`: observations.
    Timer,
    /// `s`.
    Set,
}

/// One parsed line. `values` holds one or more values separated by `:`
/// (DogStatsD packs several into one line).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line<'a> {
    pub(crate) name: &'a str,
    pub(crate) values: &'a str,
    pub(crate) kind: StatsdType,
    /// In `(0, 1]`.
    pub(crate) rate: f64,
}

/// Why a line was refused, as counted in
/// `sluice_metric_lines_invalid_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not `name:value|type`.
    Format,
    /// Empty, too long, or not UTF-8.
    Name,
    /// Not a finite number.
    Value,
    /// An unknown type.
    Type,
    /// A sample rate outside `(0, 1]`.
    Rate,
    /// A tag with no name, too many tags, or a tag value over the limit.
    Tag,
    /// A DogStatsD event or service check.
    Unsupported,
}

impl Invalid {
    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Invalid::Format => "format",
            Invalid::Name => "name",
            Invalid::Value => "value",
            Invalid::Type => "type",
            Invalid::Rate => "sample_rate",
            Invalid::Tag => "tag",
            Invalid::Unsupported => "unsupported",
        }
    }
}

/// Parses one line (without its newline); its tags are appended to
/// `tags`. `None` for a blank line, which is not an error.
pub(crate) fn parse_line<'a>(
    line: &'a [u8],
    max_tag_value: usize,
    tags: &mut Vec<(&'a str, &'a str)>,
) -> Option<Result<Line<'a>, Invalid>> {
    let line = trim(line);
    if line.is_empty() {
        return None;
    }
    Some(parse(line, max_tag_value, tags))
}

fn parse<'a>(line: &'a [u8], max_tag_value: usize, tags: &mut Vec<(&'a str, &'a str)>) -> Result<Line<'a>, Invalid> {
    if line.starts_with(b"_e{") || line.starts_with(b"_sc|") {
        return Err(Invalid::Unsupported);
    }
    let line = str::from_utf8(line).map_err(|_| Invalid::Format)?;
    let mut sections = line.split('|');
    let head = sections.next().unwrap_or_default();
    let (name, values) = head.split_once(':').ok_or(Invalid::Format)?;
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(Invalid::Name);
    }
    if values.is_empty() {
        return Err(Invalid::Value);
    }
    let kind = match sections.next().ok_or(Invalid::Format)? {
        "c" => StatsdType::Counter,
        "g" => StatsdType::Gauge,
        "ms" | "h" | "d" => StatsdType::Timer,
        "s" => StatsdType::Set,
        _ => return Err(Invalid::Type),
    };
    let mut rate = 1.0;
    for section in sections {
        if let Some(r) = section.strip_prefix('@') {
            rate = r.parse::<f64>().map_err(|_| Invalid::Rate)?;
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(Invalid::Rate);
            }
        } else if let Some(list) = section.strip_prefix('#') {
            for tag in list.split(',') {
                if tag.is_empty() {
                    continue;
                }
                let (k, v) = tag.split_once(':').unwrap_or((tag, "true"));
                if k.is_empty() || v.len() > max_tag_value || k.len() > MAX_NAME_BYTES || tags.len() >= MAX_TAGS {
                    return Err(Invalid::Tag);
                }
                tags.push((k, v));
            }
        }
        // `c:` (container id), `T` (timestamp) and newer sections: skipped.
    }
    if kind != StatsdType::Set {
        for v in values.split(':') {
            number(v, kind)?;
        }
    }
    Ok(Line { name, values, kind, rate })
}

/// A value as a number; for a gauge, whether it is a delta.
pub(crate) fn number(v: &str, kind: StatsdType) -> Result<(f64, bool), Invalid> {
    let delta = kind == StatsdType::Gauge && (v.starts_with('+') || v.starts_with('-'));
    let n: f64 = v.parse().map_err(|_| Invalid::Value)?;
    if !n.is_finite() {
        return Err(Invalid::Value);
    }
    Ok((n, delta))
}

fn trim(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., last] = line {
        if last.is_ascii_whitespace() || *last == 0 {
            line = rest;
        } else {
            break;
        }
    }
    while let [first, rest @ ..] = line {
        if first.is_ascii_whitespace() {
            line = rest;
        } else {
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> (Line<'_>, Vec<(&str, &str)>) {
        let mut tags = Vec::new();
        let l = parse_line(line.as_bytes(), 1024, &mut tags).unwrap().unwrap();
        (l, tags)
    }

    fn err(line: &str) -> Invalid {
        let mut tags = Vec::new();
        parse_line(line.as_bytes(), 16, &mut tags).unwrap().unwrap_err()
    }

    #[test]
    fn the_line_protocol_with_rates_tags_and_packed_values_is_read() {
        let (l, t) = ok("api.hits:3|c|@0.5|#env:prod,canary,region:eu:west|c:abc|T1700000000\r\n");
        assert_eq!((l.name, l.values, l.kind, l.rate), ("api.hits", "3", StatsdType::Counter, 0.5));
        assert_eq!(t, vec![("env", "prod"), ("canary", "true"), ("region", "eu:west")]);
        let (l, _) = ok("lat:1:2.5:3|d");
        assert_eq!((l.values, l.kind), ("1:2.5:3", StatsdType::Timer));
        assert_eq!(ok("users:alice|s").0.kind, StatsdType::Set);
        assert_eq!(number("-3", StatsdType::Gauge), Ok((-3.0, true)));
        assert_eq!(number("-3", StatsdType::Counter), Ok((-3.0, false)));
        assert_eq!(number("+4", StatsdType::Gauge), Ok((4.0, true)));
        assert_eq!(ok("t:5|ms|@1").0.kind, StatsdType::Timer);
        assert_eq!(ok("h:5|h").0.kind, StatsdType::Timer);
        assert!(parse_line(b"  \r\n", 16, &mut Vec::new()).is_none(), "a blank line is not an error");
    }

    #[test]
    fn malformed_lines_are_refused_with_a_reason() {
        assert_eq!(err("nocolon|c"), Invalid::Format);
        assert_eq!(err("x:1"), Invalid::Format);
        assert_eq!(err(":1|c"), Invalid::Name);
        assert_eq!(err("x:|c"), Invalid::Value);
        assert_eq!(err("x:abc|c"), Invalid::Value);
        assert_eq!(err("x:inf|g"), Invalid::Value);
        assert_eq!(err("x:NaN|ms"), Invalid::Value);
        assert_eq!(err("x:1|q"), Invalid::Type);
        assert_eq!(err("x:1|c|@0"), Invalid::Rate);
        assert_eq!(err("x:1|c|@1.5"), Invalid::Rate);
        assert_eq!(err("x:1|c|@x"), Invalid::Rate);
        assert_eq!(err("x:1|c|#:v"), Invalid::Tag);
        assert_eq!(err(&format!("x:1|c|#k:{}", "v".repeat(17))), Invalid::Tag);
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}:v")).collect();
        assert_eq!(err(&format!("x:1|c|#{}", many.join(","))), Invalid::Tag);
        assert_eq!(err("_e{5,4}:title|text"), Invalid::Unsupported);
        assert_eq!(err("_sc|check|0"), Invalid::Unsupported);
        let mut tags = Vec::new();
        assert_eq!(parse_line(b"x\xff:1|c", 16, &mut tags), Some(Err(Invalid::Format)));
    }
}
