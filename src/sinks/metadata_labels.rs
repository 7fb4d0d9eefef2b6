//! The labels the Prometheus sinks add to every sample: `external_labels`
//! (fixed values) and `metadata_labels` (label name → dotted path in a
//! sample's metadata, `release = "release.version"`). A sample that
//! carries its own metadata members (an OTLP resource's, or an
//! aggregator's sample read back from Kafka) is labelled from them; the
//! source's metadata fills what they lack, and a metadata label replaces
//! an external one of the same name. Missing paths add no label, and a
//! label the sample already has wins over all of them.

use serde_json::Value;
use std::collections::BTreeMap;

use super::prometheus_remote_write::encode::{is_valid_label_name, label_name};
use crate::config::ConfigError;
use crate::enrich::{lookup, SourceContext};

/// The configured labels, by sanitised label name.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddedLabels {
    external: BTreeMap<String, String>,
    paths: Vec<(String, String)>,
}

impl AddedLabels {
    /// From the `external_labels` and `metadata_labels` tables.
    pub(crate) fn new(external: &BTreeMap<String, String>, metadata: &BTreeMap<String, String>) -> AddedLabels {
        AddedLabels {
            external: external.iter().map(|(k, v)| (label_name(k), v.clone())).collect(),
            paths: metadata.iter().map(|(label, path)| (label_name(label), path.clone())).collect(),
        }
    }

    /// The labels every sample of a batch from `source` gets: the external
    /// labels, with those the source's metadata gives put over them.
    pub(crate) fn of_batch(&self, source: &SourceContext) -> BTreeMap<String, String> {
        let mut labels = self.external.clone();
        for (label, path) in &self.paths {
            if let Some(value) = source.meta_value(path).and_then(label_value) {
                labels.insert(label.clone(), value);
            }
        }
        labels
    }

    /// `base` with the labels the event's own metadata members give, or
    /// `None` when they give none (the caller keeps `base`). Reads the
    /// event only when labels are configured.
    pub(crate) fn of_event(&self, event: &[u8], base: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
        if self.paths.is_empty() {
            return None;
        }
        let Ok(Value::Object(o)) = serde_json::from_slice(event) else {
            return None;
        };
        let mut labels = None;
        for (label, path) in &self.paths {
            if let Some(value) = lookup(&o, path).and_then(label_value) {
                labels.get_or_insert_with(|| base.clone()).insert(label.clone(), value);
            }
        }
        labels
    }
}

/// A metadata value as a label value: strings, numbers and booleans.
fn label_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Checks a table of label names to values or paths (`external_labels`,
/// `metadata_labels`): valid names, not reserved, values not empty.
pub(crate) fn validate_label_table(path: &str, table: &str, labels: &BTreeMap<String, String>, errors: &mut Vec<ConfigError>) {
    for (name, value) in labels {
        if !is_valid_label_name(name) || name.starts_with("__") {
            errors.push(ConfigError::at(
                path,
                &format!("{table}.{name}"),
                "a label name must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __",
            ));
        }
        if value.is_empty() {
            errors.push(ConfigError::at(path, &format!("{table}.{name}"), "must not be empty"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_events_own_members_win_and_the_source_fills_the_rest() {
        let config = labels(&[
            ("release", "release.version"),
            ("service", "process.service"),
            ("pod", "kubernetes.pod"),
        ]);
        let m = AddedLabels::new(&labels(&[("release", "external"), ("cluster", "eu1")]), &config);
        let meta = json!({"release": {"version": "1.0"}, "kubernetes": {"pod": "p-1"}});
        let source = SourceContext::new("s".into(), "otlp", String::new(), meta.as_object().cloned().unwrap_or_default());
        let base = m.of_batch(&source);
        assert_eq!(base, labels(&[("release", "1.0"), ("pod", "p-1"), ("cluster", "eu1")]));
        let event = br#"{"name":"x","release":{"version":"2.0"},"process":{"service":"checkout","pid":7}}"#;
        assert_eq!(
            m.of_event(event, &base),
            Some(labels(&[
                ("release", "2.0"),
                ("pod", "p-1"),
                ("service", "checkout"),
                ("cluster", "eu1")
            ]))
        );
        assert_eq!(m.of_event(br#"{"name":"x"}"#, &base), None, "no own members: the batch's labels");
        assert_eq!(m.of_event(b"not json", &base), None);
    }

    #[test]
    fn bad_label_names_and_empty_paths_are_refused_with_their_key_path() {
        let mut errors = Vec::new();
        validate_label_table(
            "sinks.p",
            "metadata_labels",
            &labels(&[("__x", "a"), ("ok", ""), ("9a", "b")]),
            &mut errors,
        );
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{text:?}");
        assert!(text.iter().any(|e| e.contains("sinks.p.metadata_labels.__x")), "{text:?}");
    }
}
