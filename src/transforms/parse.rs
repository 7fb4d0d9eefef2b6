//! `parse`: turns text in a field (`message` by default) into fields:
//! logfmt, key=value with chosen separators, a regular expression with
//! named captures, or a JSON object held in a string. A timestamp among
//! them may be normalised into RFC 3339. An event whose text does not
//! parse passes unchanged (and keeps its bytes).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::graph::{Compiler, KeyId, Run, Step};
use super::stream::{lookup, remove_at, set_at, Item};
use super::TransformComponent;
use crate::condition::Pattern;
use crate::config::{ConfigError, Validate};
use crate::event::FieldPath;

/// How the text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Format {
    /// `key=value key2="quoted value"`.
    Logfmt,
    /// Pairs split by `field_split`, key and value by `value_split`;
    /// double-quoted values may hold either.
    KeyValue,
    /// `pattern`'s named captures.
    Regex,
    /// A JSON object in a string.
    Json,
}

/// How a timestamp is written.
#[derive(Debug, Clone, PartialEq)]
enum TimeFormat {
    Rfc3339,
    /// Epoch seconds, milliseconds, microseconds or nanoseconds.
    Epoch(i64),
    /// A `strftime` format (`%Y-%m-%d %H:%M:%S%.f`); without an offset the
    /// time is taken as UTC.
    Strftime(String),
}

impl<'de> Deserialize<'de> for TimeFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TimeFormat, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "rfc3339" => TimeFormat::Rfc3339,
            "epoch_s" => TimeFormat::Epoch(1_000_000_000),
            "epoch_ms" => TimeFormat::Epoch(1_000_000),
            "epoch_us" => TimeFormat::Epoch(1_000),
            "epoch_ns" => TimeFormat::Epoch(1),
            f if f.contains('%') => TimeFormat::Strftime(f.to_owned()),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown timestamp format {other:?}: use rfc3339, epoch_s, epoch_ms, epoch_us, epoch_ns, or a strftime format with %"
                )))
            }
        })
    }
}

/// The `timestamp` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimestampConfig {
    /// The field holding it, after parsing.
    field: String,
    /// How it is written.
    format: TimeFormat,
    /// Where the RFC 3339 form goes; default the same field.
    #[serde(default)]
    target: Option<String>,
}

/// `[transforms.<name>] type = "parse"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParseConfig {
    /// How the text is read.
    format: Format,
    /// The field holding the text; default `message`.
    #[serde(default = "default_field")]
    field: String,
    /// Where the parsed fields go; default the top level (a parsed field
    /// replaces an event field of the same name).
    #[serde(default)]
    target: Option<String>,
    /// `regex`: the expression with named captures.
    #[serde(default)]
    pattern: Option<Pattern>,
    /// `key_value`: between pairs; default a space.
    #[serde(default = "default_field_split")]
    field_split: String,
    /// `key_value`: between key and value; default `=`.
    #[serde(default = "default_value_split")]
    value_split: String,
    /// Remove the source field once parsed.
    #[serde(default)]
    drop_field: bool,
    /// A timestamp to normalise.
    #[serde(default)]
    timestamp: Option<TimestampConfig>,
}

fn default_field() -> String {
    "message".into()
}

fn default_field_split() -> String {
    " ".into()
}

fn default_value_split() -> String {
    "=".into()
}

impl Validate for ParseConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut check = |key: &str, p: &str| {
            if let Err(e) = FieldPath::parse(p) {
                errors.push(ConfigError::new(format!("{path}.{key}"), e));
            }
        };
        check("field", &self.field);
        if let Some(t) = &self.target {
            check("target", t);
        }
        if let Some(ts) = &self.timestamp {
            check("timestamp.field", &ts.field);
            if let Some(t) = &ts.target {
                check("timestamp.target", t);
            }
        }
        match (self.format, &self.pattern) {
            (Format::Regex, None) => errors.push(ConfigError::new(format!("{path}.pattern"), "format regex needs a pattern")),
            (Format::Regex, Some(p)) if p.0.capture_names().flatten().next().is_none() => {
                errors.push(ConfigError::new(format!("{path}.pattern"), "needs named captures: (?P<name>...)"))
            }
            (Format::Regex, _) | (_, None) => {}
            (_, Some(_)) => errors.push(ConfigError::new(format!("{path}.pattern"), "only format regex takes a pattern")),
        }
        if self.field_split.is_empty() || self.value_split.is_empty() || self.field_split == self.value_split {
            errors.push(ConfigError::new(
                format!("{path}.field_split"),
                "field_split and value_split must be set and differ",
            ));
        }
    }
}

fn segments(p: &str) -> Vec<String> {
    FieldPath::parse(p).map(|p| p.segments().to_vec()).unwrap_or_default()
}

impl TransformComponent for ParseConfig {
    fn build(&self, _name: &str, cx: &mut Compiler) -> Box<dyn Step> {
        let field = FieldPath::parse(&self.field).ok();
        Box::new(Parse {
            key: field.as_ref().map(|p| cx.key(p)),
            field: segments(&self.field),
            config: self.clone(),
        })
    }
}

struct Parse {
    key: Option<KeyId>,
    field: Vec<String>,
    config: ParseConfig,
}

/// Parses `text` the way `config` says; `None` when it does not parse or
/// yields no field.
pub(crate) fn parse_text(config: &ParseConfig, text: &str) -> Option<Map<String, Value>> {
    let parsed = match config.format {
        Format::Logfmt => pairs(text, " ", "="),
        Format::KeyValue => pairs(text, &config.field_split, &config.value_split),
        Format::Regex => {
            let re = &config.pattern.as_ref()?.0;
            let caps = re.captures(text)?;
            re.capture_names()
                .flatten()
                .filter_map(|n| caps.name(n).map(|m| (n.to_owned(), Value::String(m.as_str().to_owned()))))
                .collect()
        }
        Format::Json => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => return None,
        },
    };
    (!parsed.is_empty()).then_some(parsed)
}

/// `k=v` pairs split by `field_split`; a value may be double-quoted (with
/// `\"` and `\\` escapes) and then hold the separators. A piece without
/// `value_split` is a key with the value `true` (logfmt's bare keys).
pub(crate) fn pairs(text: &str, field_split: &str, value_split: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let mut rest = text.trim_start_matches(field_split);
    while !rest.is_empty() {
        let piece_end = rest.find(field_split).unwrap_or(rest.len());
        let (key, after) = match rest.find(value_split) {
            Some(eq) if eq < piece_end => (&rest[..eq], &rest[eq + value_split.len()..]),
            _ => {
                let key = rest[..piece_end].trim();
                if !key.is_empty() {
                    out.insert(key.to_owned(), Value::Bool(true));
                }
                rest = rest[piece_end..].trim_start_matches(field_split);
                continue;
            }
        };
        let key = key.trim();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            v.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(field_split).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        if !key.is_empty() {
            out.insert(key.to_owned(), Value::String(value));
        }
        rest = next.trim_start_matches(field_split);
    }
    out
}

/// A timestamp as RFC 3339 (UTC, with the precision it had).
fn normalise_time(v: &Value, format: &TimeFormat) -> Option<String> {
    let ts = match format {
        TimeFormat::Rfc3339 => v.as_str()?.trim().parse::<jiff::Timestamp>().ok()?,
        TimeFormat::Epoch(ns_per_unit) => {
            let unit = i128::from(*ns_per_unit);
            // Whole numbers in integer arithmetic, so no precision is lost.
            let whole = match v {
                Value::Number(n) => n.as_i64().map(i128::from),
                Value::String(s) => s.trim().parse::<i128>().ok(),
                _ => None,
            };
            let ns = match whole {
                Some(n) => n.checked_mul(unit)?,
                None => {
                    let n: f64 = match v {
                        Value::Number(n) => n.as_f64()?,
                        Value::String(s) => s.trim().parse().ok()?,
                        _ => return None,
                    };
                    let ns = n * unit as f64;
                    if !ns.is_finite() || ns.abs() > 9.0e18 {
                        return None;
                    }
                    ns as i128
                }
            };
            jiff::Timestamp::from_nanosecond(ns).ok()?
        }
        TimeFormat::Strftime(f) => {
            let text = v.as_str()?.trim();
            let parsed = jiff::fmt::strtime::parse(f, text).ok()?;
            match parsed.to_timestamp() {
                Ok(ts) => ts,
                Err(_) => parsed.to_datetime().ok()?.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp(),
            }
        }
    };
    Some(ts.to_string())
}

impl Parse {
    /// Applies the parsed fields (and the timestamp) to the event.
    fn apply(&self, event: &mut Map<String, Value>, parsed: Map<String, Value>) {
        let c = &self.config;
        if c.drop_field {
            remove_at(event, &self.field);
        }
        match &c.target {
            Some(t) => set_at(event, &segments(t), Value::Object(parsed)),
            None => {
                for (k, v) in parsed {
                    event.insert(k, v);
                }
            }
        }
        if let Some(ts) = &c.timestamp {
            let from = segments(&ts.field);
            if let Some(text) = lookup(event, &from).and_then(|v| normalise_time(v, &ts.format)) {
                let to = ts.target.as_deref().map(segments).unwrap_or(from);
                set_at(event, &to, Value::String(text));
            }
        }
    }
}

impl Step for Parse {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let [kept] = out else { return };
        kept.reserve(input.len());
        let mut text = String::new();
        for mut item in input {
            let parsed = self
                .key
                .and_then(|k| run.key_text(k, &item, &mut text))
                .and_then(|text| parse_text(&self.config, text));
            if let Some(parsed) = parsed {
                if let Some(event) = run.change(&mut item) {
                    self.apply(event, parsed);
                }
            }
            kept.push(item);
        }
    }

    fn drop_reason(&self) -> &'static str {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_valid;
    use serde_json::json;

    fn config(v: Value) -> ParseConfig {
        let mut errors = Vec::new();
        parse_valid("t", v, &mut errors).unwrap_or_else(|| panic!("{errors:?}"))
    }

    fn parsed(c: &ParseConfig, text: &str) -> Value {
        parse_text(c, text).map_or(Value::Null, Value::Object)
    }

    #[test]
    fn logfmt_reads_quoted_values_escapes_and_bare_keys() {
        let c = config(json!({"format": "logfmt"}));
        assert_eq!(
            parsed(&c, r#"level=info msg="a \"quoted\" value" dur=12ms  ok"#),
            json!({"level": "info", "msg": "a \"quoted\" value", "dur": "12ms", "ok": true})
        );
        assert_eq!(parsed(&c, ""), Value::Null);
        assert_eq!(parsed(&c, r#"a="unterminated"#), json!({"a": "unterminated"}));
    }

    #[test]
    fn key_value_uses_its_separators() {
        let c = config(json!({"format": "key_value", "field_split": ";", "value_split": ":"}));
        assert_eq!(parsed(&c, "a:1;b: two ;c:\"x;y\""), json!({"a": "1", "b": " two ", "c": "x;y"}));
    }

    #[test]
    fn regex_takes_named_captures_and_json_takes_objects() {
        let c = config(json!({"format": "regex", "pattern": r"^(?P<method>\S+) (?P<path>\S+) (?P<status>\d+)"}));
        assert_eq!(
            parsed(&c, "GET /a 200 extra"),
            json!({"method": "GET", "path": "/a", "status": "200"})
        );
        assert_eq!(parsed(&c, "nope"), Value::Null);
        let c = config(json!({"format": "json"}));
        assert_eq!(parsed(&c, r#"{"a":{"b":1}}"#), json!({"a": {"b": 1}}));
        assert_eq!(parsed(&c, "[1]"), Value::Null);
    }

    #[test]
    fn timestamps_normalise_to_rfc3339() {
        let cases = [
            (json!("2026-11-01T10:30:00.5+01:00"), TimeFormat::Rfc3339, "2026-11-01T09:30:00.5Z"),
            (json!(1_700_000_000), TimeFormat::Epoch(1_000_000_000), "2023-11-14T22:13:20Z"),
            (json!("1700000000123"), TimeFormat::Epoch(1_000_000), "2023-11-14T22:13:20.123Z"),
            (json!(1_700_000_000_000_000i64), TimeFormat::Epoch(1_000), "2023-11-14T22:13:20Z"),
            (
                json!("2026-11-01 10:30:00"),
                TimeFormat::Strftime("%Y-%m-%d %H:%M:%S".into()),
                "2026-11-01T10:30:00Z",
            ),
        ];
        for (v, f, want) in cases {
            assert_eq!(normalise_time(&v, &f).as_deref(), Some(want), "{v} {f:?}");
        }
        assert_eq!(normalise_time(&json!("yesterday"), &TimeFormat::Rfc3339), None);
        assert_eq!(normalise_time(&json!(1e30), &TimeFormat::Epoch(1)), None);
    }

    proptest::proptest! {
        /// Pairs written with quoted, escaped values come back exactly
        /// (the fuzz target `transforms` checks the same on any bytes).
        #[test]
        fn quoted_pairs_round_trip(values in proptest::collection::vec(".*", 0..6), text in ".*") {
            let mut written = String::new();
            let mut want = Map::new();
            for (i, v) in values.iter().enumerate() {
                let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
                written.push_str(&format!("k{i}=\"{escaped}\" "));
                want.insert(format!("k{i}"), Value::String(v.clone()));
            }
            proptest::prop_assert_eq!(pairs(&written, " ", "="), want);
            for (k, _) in pairs(&text, " ", "=") {
                proptest::prop_assert!(!k.is_empty() && !k.contains(' '));
            }
        }
    }

    #[test]
    fn settings_are_checked_with_their_key_paths() {
        let mut errors = Vec::new();
        let _: Option<ParseConfig> = parse_valid("t", json!({"format": "regex", "pattern": "(a)"}), &mut errors);
        let _: Option<ParseConfig> = parse_valid(
            "t",
            json!({"format": "logfmt", "pattern": "(?P<a>a)", "field": "a..b"}),
            &mut errors,
        );
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for want in [
            "t.pattern: needs named captures",
            "t.pattern: only format regex",
            "t.field: invalid field path",
        ] {
            assert!(text.iter().any(|t| t.starts_with(want)), "missing {want} in {text:?}");
        }
    }
}
