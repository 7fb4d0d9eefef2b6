//! The `[[sli]]` rules as operators write them: which events are requests,
//! what makes one an error, where its latency is, which labels it carries,
//! and the objective its error budget is measured against.
//!
//! Everything that can be checked is checked here, at config time, with the
//! key path of the problem (`sli[0].latency.unit`); regular expressions are
//! compiled here, once, and never per event.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

pub(crate) use crate::condition::{Condition, Pattern};
use crate::config::{parse_at, ConfigError, Validate};
use crate::event::FieldPath;

/// Series one SLI keeps before new label values go to `__overflow__`.
pub(crate) const DEFAULT_MAX_SERIES: usize = 1000;

/// The most series an SLI may be configured for. Each series costs about
/// 2 KiB with the default windows, so this caps one rule near 2 GiB: a
/// typo (an extra zero) is an error, not an out-of-memory kill.
pub(crate) const MAX_MAX_SERIES: usize = 1_000_000;

/// Burn-rate windows when none are configured: the short and long window
/// of the Google SRE workbook's fast-burn page (2% of a 30-day budget in
/// one hour).
pub(crate) const DEFAULT_WINDOWS: [Duration; 2] = [Duration::from_secs(300), Duration::from_secs(3600)];

/// Most burn-rate windows per SLI; each costs ~1 KiB per series.
pub(crate) const MAX_WINDOWS: usize = 8;

/// Latency buckets (seconds) when none are configured: request latencies
/// from one millisecond to ten seconds, dense where web SLO thresholds
/// usually sit (50 ms to 1 s) so `histogram_quantile` stays close there.
pub(crate) const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// Most latency buckets per SLI (every series carries one counter each).
pub(crate) const MAX_BUCKETS: usize = 64;

/// The label value of series past the series limit.
pub(crate) const OVERFLOW_LABEL: &str = "__overflow__";

/// The value of a label whose source is missing from an event, unless the
/// label sets its own `default`.
pub(crate) const DEFAULT_MISSING_LABEL: &str = "unknown";

/// One `[[sli]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliRule {
    /// The `sli` label value; unique among rules.
    pub name: String,
    /// Target fraction of good events, in (0, 1), such as 0.999. Without it
    /// no burn rate is computed.
    #[serde(default)]
    pub(crate) objective: Option<f64>,
    /// Conditions an event must all meet to count as a request. Empty:
    /// every event whose outcome can be decided.
    #[serde(default, rename = "match")]
    pub(crate) matches: Vec<Condition>,
    /// When an event is an error; default `status >= 500`. Exclusive with
    /// `success`.
    #[serde(default)]
    pub(crate) error: Option<Condition>,
    /// When an event is a success (every other event is an error).
    #[serde(default)]
    pub(crate) success: Option<Condition>,
    /// Where the latency is, its unit, buckets and threshold.
    #[serde(default)]
    pub(crate) latency: Option<LatencyConfig>,
    /// Where the label values come from.
    #[serde(default)]
    pub(crate) labels: LabelsConfig,
    /// Burn-rate windows; default 5m and 1h. Needs `objective`.
    #[serde(default, deserialize_with = "optional_durations")]
    pub(crate) windows: Option<Vec<Duration>>,
    /// Series kept before new label values go to `__overflow__`.
    #[serde(default = "default_max_series")]
    pub(crate) max_series: usize,
}

fn default_max_series() -> usize {
    DEFAULT_MAX_SERIES
}

/// The `latency` table of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LatencyConfig {
    /// The dotted path of the latency field (`duration_ms`, `http.took`).
    #[serde(deserialize_with = "field_path")]
    pub(crate) field: FieldPath,
    /// What a number in that field means; default `ms`.
    #[serde(default)]
    pub(crate) unit: LatencyUnit,
    /// A latency SLI: an event slower than this is `slow` and spends error
    /// budget. A duration (`"300ms"`) or seconds.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) threshold: Option<Duration>,
    /// Histogram bucket upper bounds in seconds, increasing; default
    /// [`DEFAULT_BUCKETS`]. The threshold is always added as a bound.
    #[serde(default)]
    pub(crate) buckets: Option<Vec<f64>>,
}

/// The unit of a latency field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub(crate) enum LatencyUnit {
    /// Nanoseconds.
    #[serde(rename = "ns")]
    Nanoseconds,
    /// Microseconds (`us` or `µs`).
    #[serde(rename = "us", alias = "µs", alias = "μs")]
    Microseconds,
    /// Milliseconds (the default).
    #[default]
    #[serde(rename = "ms")]
    Milliseconds,
    /// Seconds.
    #[serde(rename = "s")]
    Seconds,
    /// A duration string such as `"12.5ms"` or `"1m3s"`; a bare number is
    /// seconds.
    #[serde(rename = "duration")]
    Duration,
}

/// The `labels` table of a rule. `service` and `release` are always
/// present; `route` and `method` only when configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LabelsConfig {
    /// Default: the event's `service` field.
    #[serde(default)]
    pub(crate) service: Option<LabelSource>,
    /// Default: the event's `release.version`, else the source metadata's
    /// `release.version` (`SLUICE_RELEASE`, the pod's version label).
    #[serde(default)]
    pub(crate) release: Option<LabelSource>,
    /// No default. Path normalisation is on for this label unless
    /// `normalize = false`.
    #[serde(default)]
    pub(crate) route: Option<LabelSource>,
    /// No default.
    #[serde(default)]
    pub(crate) method: Option<LabelSource>,
}

impl LabelsConfig {
    /// The four label sources with defaults applied, in output order:
    /// service, release, route, method.
    pub(crate) fn resolved(&self) -> [Option<LabelSource>; 4] {
        let service = self.service.clone().unwrap_or_else(|| LabelSource::field("service"));
        let release = self.release.clone().unwrap_or_else(|| {
            let mut s = LabelSource::field("release.version");
            s.meta = Some("release.version".into());
            s
        });
        [Some(service), Some(release), self.route.clone(), self.method.clone()]
    }
}

/// Where one label's value comes from: a static `value`, else the first of
/// `field` present in the event, else `meta` from the source's metadata,
/// else `default`. A plain string is shorthand for `{ field = "..." }`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSource {
    /// Event fields tried in order.
    pub(crate) field: Vec<FieldPath>,
    /// A dotted path into the source metadata (`release.version`,
    /// `kubernetes.namespace`).
    pub(crate) meta: Option<String>,
    /// A fixed value for every event.
    pub(crate) value: Option<String>,
    /// The value when nothing else gives one; default `unknown`.
    pub(crate) default: Option<String>,
    /// Replace numeric and UUID path segments with `:id` and drop query
    /// strings. Default: on for `route`, off for the others.
    pub(crate) normalize: Option<bool>,
    /// Rewrites applied after normalisation, in order.
    pub(crate) patterns: Vec<RoutePattern>,
}

impl LabelSource {
    fn field(path: &str) -> LabelSource {
        LabelSource {
            field: vec![FieldPath::parse(path).unwrap_or_else(|_| unreachable!("constant path"))],
            ..LabelSource::default()
        }
    }
}

impl Validate for LabelSource {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.value.is_some() && (!self.field.is_empty() || self.meta.is_some()) {
            errors.push(ConfigError::new(format!("{path}.value"), "a fixed value excludes field and meta"));
        }
        if self.value.is_none() && self.field.is_empty() && self.meta.is_none() {
            errors.push(ConfigError::new(path, "needs field, meta or value"));
        }
        if let Some(meta) = &self.meta {
            if meta.split('.').any(str::is_empty) {
                errors.push(ConfigError::new(format!("{path}.meta"), format!("invalid metadata path {meta:?}")));
            }
        }
    }
}

/// One configured rewrite of a label value: every match of `pattern` is
/// replaced with `replace` (`$1` refers to a capture group).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutePattern {
    /// What to find.
    pub(crate) pattern: Pattern,
    /// What to put instead.
    pub(crate) replace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelSourceTable {
    #[serde(default, deserialize_with = "field_paths")]
    field: Vec<FieldPath>,
    #[serde(default)]
    meta: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    patterns: Vec<RoutePattern>,
}

impl<'de> Deserialize<'de> for LabelSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LabelSource, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LabelSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field path or a table with field, meta, value, default, normalize, patterns")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<LabelSource, E> {
                let path = FieldPath::parse(s).map_err(E::custom)?;
                Ok(LabelSource {
                    field: vec![path],
                    ..LabelSource::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LabelSource, A::Error> {
                let t = LabelSourceTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(LabelSource {
                    field: t.field,
                    meta: t.meta,
                    value: t.value,
                    default: t.default,
                    normalize: t.normalize,
                    patterns: t.patterns,
                })
            }
        }
        d.deserialize_any(V)
    }
}

fn field_path<'de, D: Deserializer<'de>>(d: D) -> Result<FieldPath, D::Error> {
    let s = String::deserialize(d)?;
    FieldPath::parse(&s).map_err(de::Error::custom)
}

/// A path or a list of paths.
fn field_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FieldPath>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<FieldPath>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a field path or a list of field paths")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<FieldPath>, E> {
            Ok(vec![FieldPath::parse(s).map_err(E::custom)?])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<FieldPath>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(FieldPath::parse(&s).map_err(de::Error::custom)?);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::config::duration(d).map(Some)
}

fn optional_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
    #[derive(Deserialize)]
    struct One(#[serde(deserialize_with = "crate::config::duration")] Duration);
    let list = Vec::<One>::deserialize(d)?;
    Ok(Some(list.into_iter().map(|o| o.0).collect()))
}

impl SliRule {
    /// The burn-rate windows, with the default applied.
    pub(crate) fn windows(&self) -> Vec<Duration> {
        self.windows.clone().unwrap_or_else(|| DEFAULT_WINDOWS.to_vec())
    }

    /// The outcome condition and whether it tests for an error (`true`) or
    /// for a success (`false`).
    pub(crate) fn outcome(&self) -> (Condition, bool) {
        match (&self.error, &self.success) {
            (_, Some(s)) => (s.clone(), false),
            (Some(e), None) => (e.clone(), true),
            (None, None) => (Condition::default_error(), true),
        }
    }

    /// Histogram bounds in seconds: the configured or default buckets, with
    /// the threshold added so "faster than the threshold" is exact.
    pub(crate) fn bucket_bounds(&self) -> Vec<f64> {
        let Some(lat) = &self.latency else { return Vec::new() };
        let mut b = lat.buckets.clone().unwrap_or_else(|| DEFAULT_BUCKETS.to_vec());
        if let Some(t) = lat.threshold {
            let t = t.as_secs_f64();
            if !b.iter().any(|x| (x - t).abs() <= f64::EPSILON * t.max(1.0)) {
                b.push(t);
                b.sort_by(f64::total_cmp);
            }
        }
        b
    }
}

/// Checks what serde cannot, appending errors under `path` (`sli[2]`).
impl Validate for SliRule {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                "SLI names may use letters, digits, `_`, `-` and `.`",
            ));
        }
        if let Some(o) = self.objective {
            if !(o > 0.0 && o < 1.0) {
                errors.push(ConfigError::new(
                    format!("{path}.objective"),
                    format!("must be between 0 and 1 exclusive (such as 0.999), not {o}"),
                ));
            }
        }
        for (i, c) in self.matches.iter().enumerate() {
            c.validate(&format!("{path}.match[{i}]"), errors);
        }
        if self.error.is_some() && self.success.is_some() {
            errors.push(ConfigError::new(
                format!("{path}.success"),
                "set either error or success, not both: the other outcome is everything else",
            ));
        }
        if let Some(c) = &self.error {
            c.validate(&format!("{path}.error"), errors);
        }
        if let Some(c) = &self.success {
            c.validate(&format!("{path}.success"), errors);
        }
        if let Some(lat) = &self.latency {
            if let Some(t) = lat.threshold {
                if t.is_zero() {
                    errors.push(ConfigError::new(format!("{path}.latency.threshold"), "must be greater than zero"));
                }
            }
            if let Some(b) = &lat.buckets {
                let increasing = b.windows(2).all(|w| w[0] < w[1]);
                if b.is_empty() || !increasing || b.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                    errors.push(ConfigError::new(
                        format!("{path}.latency.buckets"),
                        "must be finite positive upper bounds in seconds, strictly increasing",
                    ));
                }
            }
            if self.bucket_bounds().len() > MAX_BUCKETS {
                errors.push(ConfigError::new(
                    format!("{path}.latency.buckets"),
                    format!("at most {MAX_BUCKETS} buckets"),
                ));
            }
        }
        if let Some(w) = &self.windows {
            if self.objective.is_none() {
                errors.push(ConfigError::new(
                    format!("{path}.windows"),
                    "burn-rate windows need an objective (such as objective = 0.999)",
                ));
            }
            if w.is_empty() || w.len() > MAX_WINDOWS {
                errors.push(ConfigError::new(
                    format!("{path}.windows"),
                    format!("list between 1 and {MAX_WINDOWS} windows"),
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, d) in w.iter().enumerate() {
                if *d < Duration::from_secs(1) || *d > Duration::from_secs(400 * 86_400) {
                    errors.push(ConfigError::new(format!("{path}.windows[{i}]"), "must be between 1s and 400d"));
                }
                if !seen.insert(super::window::window_label(*d)) {
                    errors.push(ConfigError::new(format!("{path}.windows[{i}]"), "duplicate window"));
                }
            }
        }
        if self.max_series == 0 || self.max_series > MAX_MAX_SERIES {
            errors.push(ConfigError::new(
                format!("{path}.max_series"),
                format!("must be between 1 and {MAX_MAX_SERIES}"),
            ));
        }
        let [service, release, route, method] = [&self.labels.service, &self.labels.release, &self.labels.route, &self.labels.method];
        for (name, src) in [("service", service), ("release", release), ("route", route), ("method", method)] {
            if let Some(s) = src {
                s.validate(&format!("{path}.labels.{name}"), errors);
            }
        }
    }
}

/// Parses the `sli` array of a config, appending every error with its key
/// path. Names must be unique.
pub(crate) fn parse_rules(value: serde_json::Value, errors: &mut Vec<ConfigError>) -> Vec<SliRule> {
    let mut names = BTreeSet::new();
    parse_rule_array("sli", value, errors, |path, rule: &SliRule, errors| {
        if !names.insert(rule.name.clone()) {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate SLI name {:?}", rule.name),
            ));
        }
    })
}

/// Parses an array of rule tables (`[[sli]]`, `[[metrics]]`) at `key`:
/// each is read and validated at `key[i]`, then `across` checks it against
/// the rules before it. Not `parse_valid`: a rule with other problems is
/// still kept for `across`, so a duplicate name is reported too.
pub(crate) fn parse_rule_array<R: serde::de::DeserializeOwned + Validate>(
    key: &str,
    value: serde_json::Value,
    errors: &mut Vec<ConfigError>,
    mut across: impl FnMut(&str, &R, &mut Vec<ConfigError>),
) -> Vec<R> {
    let serde_json::Value::Array(items) = value else {
        errors.push(ConfigError::new(key, format!("must be an array of tables ([[{key}]])")));
        return Vec::new();
    };
    let mut rules = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("{key}[{i}]");
        let Some(rule) = parse_at::<R>(&path, item, errors) else {
            continue;
        };
        rule.validate(&path, errors);
        across(&path, &rule, errors);
        rules.push(rule);
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Vec<SliRule>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let r = parse_rules(v, &mut errors);
        if errors.is_empty() {
            Ok(r)
        } else {
            Err(errors)
        }
    }

    fn paths(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn minimal_rule_gets_defaults() {
        let r = parse(json!([{"name": "api"}])).unwrap();
        let (cond, is_error) = r[0].outcome();
        assert!(is_error);
        assert_eq!(cond.field.as_ref().map(ToString::to_string).unwrap_or_default(), "status");
        assert_eq!(cond.gte, Some(500.0));
        assert_eq!(r[0].max_series, DEFAULT_MAX_SERIES);
        assert_eq!(r[0].windows(), DEFAULT_WINDOWS.to_vec());
        let [service, release, route, method] = r[0].labels.resolved();
        assert_eq!(service.unwrap().field[0].to_string(), "service");
        assert_eq!(release.unwrap().meta.as_deref(), Some("release.version"));
        assert!(route.is_none() && method.is_none());
    }

    #[test]
    fn errors_carry_key_paths() {
        let errs = parse(json!([
            {"name": "ok", "latency": {"field": "d", "unit": "fortnights"}},
            {"name": "re", "match": [{"field": "path", "pattern": "("}]},
            {"name": "bad name!", "objective": 1.5, "windows": ["5m", "300s"],
             "match": [{"field": "x"}],
             "error": {"field": "status", "gte": 500}, "success": {"field": "status", "lt": 500},
             "labels": {"route": {"normalize": true}}, "max_series": 0},
            {"name": "ok", "latency": {"field": "d", "buckets": [1.0, 0.5]}, "windows": ["1m"]},
        ]))
        .unwrap_err();
        let p = paths(&errs);
        for want in [
            "sli[0].latency.unit",
            "sli[1].match[0].pattern",
            "sli[2].name",
            "sli[2].objective",
            "sli[2].windows[1]",
            "sli[2].match[0]",
            "sli[2].success",
            "sli[2].labels.route",
            "sli[2].max_series",
            "sli[3].latency.buckets",
            "sli[3].windows",
        ] {
            assert!(p.contains(&want), "missing {want} in {errs:?}");
        }
    }

    #[test]
    fn second_error_pass_finds_condition_problems() {
        let errs = parse(json!([
            {"name": "a", "match": [{"field": "x"}, {"field": "y", "equals": 1, "prefix": "z"}, {"field": "z", "gt": 1, "gte": 2}]},
            {"name": "a"},
        ]))
        .unwrap_err();
        let p = paths(&errs);
        for want in ["sli[0].match[0]", "sli[0].match[1]", "sli[0].match[2].gte", "sli[1].name"] {
            assert!(p.contains(&want), "missing {want} in {errs:?}");
        }
    }

    #[test]
    fn label_shorthand_lists_and_threshold_bucket() {
        let r = parse(json!([{
            "name": "lat", "objective": 0.99,
            "latency": {"field": "took", "unit": "µs", "threshold": "333ms"},
            "labels": {"service": "app", "route": {"field": ["route", "path"], "patterns": [{"pattern": "^/v[0-9]+", "replace": "/v:n"}]}}
        }]))
        .unwrap();
        let lat = r[0].latency.as_ref().unwrap();
        assert_eq!(lat.unit, LatencyUnit::Microseconds);
        assert!(r[0].bucket_bounds().contains(&0.333));
        let [service, _, route, _] = r[0].labels.resolved();
        assert_eq!(service.unwrap().field[0].to_string(), "app");
        let route = route.unwrap();
        assert_eq!(route.field.len(), 2);
        assert_eq!(route.patterns.len(), 1);
    }
}
