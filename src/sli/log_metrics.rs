//! The `[[metrics]]` rules as operators write them: log-to-metric beyond
//! SLIs. Each rule names a counter, gauge or histogram, the condition an
//! event must meet (`when`, the shared condition language), where its value
//! is, and its labels. The SLI tap judges these rules with the SLI rules, in
//! one pass over each batch, into the same series tables with the same
//! cardinality guard; they are exposed where SLI series are (`/metrics`,
//! and through the `internal_metrics` source to any metric sink).
//!
//! Everything that can be checked is checked here, with the key path of the
//! problem (`metrics[2].buckets`).

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use super::config::{parse_rule_array, LabelSource, MAX_BUCKETS, MAX_MAX_SERIES};
use crate::condition::Condition;
use crate::config::{ConfigError, Validate};
use crate::event::FieldPath;

/// Series one rule keeps before new label values go to `__overflow__`.
pub(crate) const DEFAULT_MAX_SERIES: usize = 1000;

/// Histogram buckets when none are configured: the Prometheus client
/// libraries' defaults (as Fluent Bit's `log_to_metrics` uses).
pub(crate) const DEFAULT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Most labels per rule: every series key holds one value of each.
pub(crate) const MAX_LABELS: usize = 16;

/// Metric name prefixes sluice's own families use; a rule may not take
/// them, so a derived series never mixes with a self-metric.
const RESERVED_PREFIXES: [&str; 2] = ["sluice_", "process_"];

/// What a rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MetricKind {
    /// Counts matching events, or sums `increment_by`.
    Counter,
    /// The last `value` seen of the matching events.
    Gauge,
    /// Observes `value` into `buckets`.
    Histogram,
}

impl MetricKind {
    /// The name as written in config.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One `[[metrics]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRule {
    /// The metric name (a Prometheus name); unique among rules. A counter's
    /// family gets `_total` appended unless the name ends in it.
    pub name: String,
    /// Counter, gauge or histogram.
    pub(crate) kind: MetricKind,
    /// The condition an event must meet; none: every event.
    #[serde(default)]
    pub(crate) when: Option<Condition>,
    /// Counters: the numeric field added per event (default: 1 per event).
    #[serde(default, deserialize_with = "optional_field_path")]
    pub(crate) increment_by: Option<FieldPath>,
    /// Gauges and histograms: the numeric field observed.
    #[serde(default, deserialize_with = "optional_field_path")]
    pub(crate) value: Option<FieldPath>,
    /// Histograms: finite upper bounds, strictly increasing (the `+Inf`
    /// bucket is implicit); default [`DEFAULT_BUCKETS`].
    #[serde(default)]
    pub(crate) buckets: Option<Vec<f64>>,
    /// Label name → where its value comes from (a field path, or a table
    /// as the SLI labels take).
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, LabelSource>,
    /// Series kept before new label values go to `__overflow__`.
    #[serde(default = "default_max_series")]
    pub(crate) max_series: usize,
    /// The family's `# HELP` text.
    #[serde(default)]
    pub(crate) help: Option<String>,
    /// Only events of these sources are judged (all when unset).
    #[serde(default)]
    pub(crate) sources: Option<Vec<String>>,
}

fn default_max_series() -> usize {
    DEFAULT_MAX_SERIES
}

fn optional_field_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FieldPath>, D::Error> {
    let s = String::deserialize(d)?;
    FieldPath::parse(&s).map(Some).map_err(de::Error::custom)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, as Prometheus names metrics.
fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

impl MetricRule {
    /// The name of the family it is exposed as: counters end in `_total`.
    pub(crate) fn family_name(&self) -> String {
        match self.kind {
            MetricKind::Counter if !self.name.ends_with("_total") => format!("{}_total", self.name),
            _ => self.name.clone(),
        }
    }

    /// Histogram bounds: the configured or default buckets; none for the
    /// other kinds.
    pub(crate) fn bucket_bounds(&self) -> Vec<f64> {
        match self.kind {
            MetricKind::Histogram => self.buckets.clone().unwrap_or_else(|| DEFAULT_BUCKETS.to_vec()),
            _ => Vec::new(),
        }
    }

    /// The labels in key order, with the `[[metrics]]` defaults applied: a
    /// field the event lacks is read from the same path of its source's
    /// metadata (as conditions do), and a label with no value is empty.
    pub(crate) fn resolved_labels(&self) -> Vec<(String, LabelSource)> {
        self.labels
            .iter()
            .map(|(name, src)| {
                let mut src = src.clone();
                if src.meta.is_none() && src.value.is_none() {
                    src.meta = src.field.first().map(ToString::to_string);
                }
                src.default.get_or_insert_with(String::new);
                src.normalize.get_or_insert(false);
                (name.clone(), src)
            })
            .collect()
    }
}

/// Checks what serde cannot, appending errors under `path` (`metrics[2]`).
impl Validate for MetricRule {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let err = |key: &str, msg: String| ConfigError::new(format!("{path}.{key}"), msg);
        if !is_metric_name(&self.name) {
            errors.push(err(
                "name",
                format!("{:?} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)", self.name),
            ));
        } else if let Some(p) = RESERVED_PREFIXES.iter().find(|p| self.name.starts_with(*p)) {
            errors.push(err("name", format!("names starting with {p:?} are sluice's own")));
        }
        if let Some(c) = &self.when {
            c.validate(&format!("{path}.when"), errors);
        }
        let kind = self.kind.as_str();
        match self.kind {
            MetricKind::Counter => {
                if self.value.is_some() {
                    errors.push(err("value", "a counter counts events or sums increment_by; it has no value".into()));
                }
            }
            MetricKind::Gauge | MetricKind::Histogram => {
                if self.value.is_none() {
                    errors.push(ConfigError::new(path, format!("a {kind} needs value (the field it observes)")));
                }
                if self.increment_by.is_some() {
                    errors.push(err(
                        "increment_by",
                        format!("only counters take increment_by; a {kind} takes value"),
                    ));
                }
            }
        }
        if let Some(b) = &self.buckets {
            if self.kind != MetricKind::Histogram {
                errors.push(err("buckets", format!("only histograms take buckets, not a {kind}")));
            } else if b.is_empty() || b.len() > MAX_BUCKETS || !b.windows(2).all(|w| w[0] < w[1]) || b.iter().any(|x| !x.is_finite()) {
                errors.push(err(
                    "buckets",
                    format!("must be 1 to {MAX_BUCKETS} finite upper bounds, strictly increasing"),
                ));
            }
        }
        if self.labels.len() > MAX_LABELS {
            errors.push(err("labels", format!("at most {MAX_LABELS} labels")));
        }
        for (name, src) in &self.labels {
            let at = format!("{path}.labels.{name}");
            if !is_label_name(name) {
                errors.push(ConfigError::new(
                    &at,
                    "not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)",
                ));
            } else if self.kind == MetricKind::Histogram && name == "le" {
                errors.push(ConfigError::new(&at, "`le` is the histogram's bucket label"));
            }
            src.validate(&at, errors);
        }
        if self.max_series == 0 || self.max_series > MAX_MAX_SERIES {
            errors.push(err("max_series", format!("must be between 1 and {MAX_MAX_SERIES}")));
        }
        if let Some(s) = &self.sources {
            if s.is_empty() {
                errors.push(err("sources", "list at least one source, or leave sources out for all".into()));
            }
        }
    }
}

/// Parses the `metrics` array of a config, appending every error with its
/// key path. Names (and the family names they are exposed as) must be
/// unique; `sources` must name sources of `source_names`.
pub(crate) fn parse_rules(value: serde_json::Value, source_names: &BTreeSet<&str>, errors: &mut Vec<ConfigError>) -> Vec<MetricRule> {
    let mut families = BTreeSet::new();
    parse_rule_array("metrics", value, errors, |path, rule: &MetricRule, errors| {
        if !families.insert(rule.family_name()) {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                format!("another rule is already exposed as {:?}", rule.family_name()),
            ));
        }
        for (j, s) in rule.sources.iter().flatten().enumerate() {
            if !source_names.contains(s.as_str()) {
                errors.push(ConfigError::new(format!("{path}.sources[{j}]"), format!("no source named {s:?}")));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Vec<MetricRule>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let r = parse_rules(v, &BTreeSet::from(["app", "web"]), &mut errors);
        if errors.is_empty() {
            Ok(r)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn counter_and_histogram_rules_parse_with_defaults() {
        let r = parse(json!([
            {"name": "http_errors", "kind": "counter", "when": {"field": "status", "gte": 500},
             "labels": {"route": "path", "ns": {"meta": "kubernetes.namespace"}}},
            {"name": "bytes_total", "kind": "counter", "increment_by": "bytes", "sources": ["web"]},
            {"name": "req_seconds", "kind": "histogram", "value": "took", "buckets": [0.1, 1]},
            {"name": "queue_depth", "kind": "gauge", "value": "depth"},
        ]))
        .unwrap();
        assert_eq!(r[0].family_name(), "http_errors_total");
        assert_eq!(r[1].family_name(), "bytes_total");
        assert_eq!(r[0].max_series, DEFAULT_MAX_SERIES);
        assert!(r[0].bucket_bounds().is_empty());
        assert_eq!(r[2].bucket_bounds(), [0.1, 1.0]);
        assert_eq!(r[3].family_name(), "queue_depth");
        let labels = r[0].resolved_labels();
        let names: Vec<&str> = labels.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ns", "route"]);
        let route = &labels[1].1;
        assert_eq!(route.meta.as_deref(), Some("path"), "a field falls back to the same metadata path");
        assert_eq!(route.default.as_deref(), Some(""), "a missing value is an empty label");
        assert_eq!(route.normalize, Some(false));
        let histogram = parse(json!([{"name": "h", "kind": "histogram", "value": "v"}])).unwrap();
        assert_eq!(histogram[0].bucket_bounds(), DEFAULT_BUCKETS);
    }

    #[test]
    fn bad_rules_are_reported_at_their_key_paths() {
        let errs = parse(json!([
            {"name": "ok_total", "kind": "counter"},
            {"name": "9bad", "kind": "counter", "value": "x"},
            {"name": "h", "kind": "histogram", "buckets": [1, 0.5], "increment_by": "n"},
            {"name": "sluice_mine", "kind": "gauge", "value": "v", "buckets": [1]},
            {"name": "ok", "kind": "counter", "labels": {"le-x": "a", "__x": "b", "le": "c"}, "max_series": 0},
            {"name": "c", "kind": "counter", "when": {"field": "status"}, "sources": ["app", "nope"]},
            {"name": "k", "kind": "summary"},
            {"name": "hh", "kind": "histogram", "value": "v", "labels": {"le": "x"}, "unknown": 1},
            {"name": "e", "kind": "counter", "sources": []},
        ]))
        .unwrap_err();
        let got: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "metrics[1].name",
            "metrics[1].value",
            "metrics[2]",
            "metrics[2].buckets",
            "metrics[2].increment_by",
            "metrics[3].name",
            "metrics[3].buckets",
            "metrics[4].labels.le-x",
            "metrics[4].labels.__x",
            "metrics[4].max_series",
            "metrics[4].name",
            "metrics[5].when",
            "metrics[5].sources[1]",
            "metrics[6].kind",
            "metrics[7].unknown",
            "metrics[8].sources",
        ] {
            assert!(got.contains(&want), "missing {want} in {errs:?}");
        }
        assert!(!got.contains(&"metrics[0].name"), "{errs:?}");
        assert!(!got.contains(&"metrics[4].labels.le"), "le is fine on a counter: {errs:?}");
        assert!(!got.contains(&"metrics[5].sources[0]"), "{errs:?}");
    }

    #[test]
    fn a_histogram_may_not_take_the_le_label() {
        let errs = parse(json!([{"name": "h", "kind": "histogram", "value": "v", "labels": {"le": "x"}}])).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "metrics[0].labels.le");
    }

    #[test]
    fn not_an_array_is_an_error() {
        let errs = parse(json!({"name": "x"})).unwrap_err();
        assert_eq!(errs[0].path, "metrics");
    }
}
