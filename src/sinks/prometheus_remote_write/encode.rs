//! Prometheus remote write 1.0: metric samples as a `prometheus.WriteRequest`
//! (hand-written prost structs with the upstream field numbers),
//! compressed as one raw snappy block.
//!
//! A sample becomes the series Prometheus itself would record for it: a
//! counter, gauge or set one series; a histogram `_bucket{le}` per bound
//! plus `+Inf`, `_sum` and `_count`; a summary `{quantile}` per quantile,
//! `_sum` and `_count`. Names and label names are made valid Prometheus
//! names (other characters become `_`); labels are sorted by name, as the
//! protocol requires; empty label values are left out (Prometheus treats
//! them as absent).

use std::collections::BTreeMap;

use crate::metrics::{MetricKind, Sample};

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Sorted by name; `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<PromSample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct Label {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PromSample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Encodes a request as protobuf, compressed as one raw snappy block.
pub fn encode(req: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    use prost::Message;
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec())
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_') && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `name` made a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`): other
/// characters (the dots of statsd names) become `_`.
pub(crate) fn metric_name(name: &str) -> String {
    sanitize(name, true)
}

/// `name` made a valid label name.
pub(crate) fn label_name(name: &str) -> String {
    sanitize(name, false)
}

fn sanitize(name: &str, colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (i > 0 && c.is_ascii_digit());
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
            out.push(c);
        } else {
            out.push(if ok { c } else { '_' });
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// A float the way Prometheus writes `le` and `quantile` labels: `1`,
/// `0.25`, `+Inf`.
pub(crate) fn float_label(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        itoa::Buffer::new().format(v as i64).to_owned()
    } else {
        ryu::Buffer::new().format(v).to_owned()
    }
}

/// Turns samples into series, adding labels that a series' own labels do
/// not already set.
#[derive(Debug, Default)]
pub(crate) struct SeriesBuilder {
    /// Added to every series unless it has the label (external labels and
    /// the batch's metadata labels), by sanitised name.
    pub(crate) extra: BTreeMap<String, String>,
}

impl SeriesBuilder {
    /// Appends the series of `sample` to `out`; returns how many samples
    /// they hold.
    ///
    /// The labels are sorted once per sample, into a vector (no map), and
    /// each series gets them with its `__name__` (and `le` or `quantile`)
    /// put in place; the last series takes them without a copy.
    pub(crate) fn add(&self, sample: &Sample<'_>, out: &mut Vec<TimeSeries>) -> usize {
        let mut base: Vec<Label> = Vec::with_capacity(sample.labels.len() + self.extra.len() + 2);
        for (k, v) in &sample.labels {
            if !v.is_empty() {
                base.push(Label {
                    name: label_name(k),
                    value: v.to_string(),
                });
            }
        }
        // Stable: of labels that sanitise to one name, the last in the
        // sample's (sorted) order wins, as a map insert would.
        base.sort_by(|a, b| a.name.cmp(&b.name));
        base.dedup_by(|later, kept| {
            let same = later.name == kept.name;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        let own = base.len();
        for (k, v) in &self.extra {
            if base[..own].binary_search_by(|l| l.name.as_str().cmp(k)).is_err() {
                base.push(Label {
                    name: k.clone(),
                    value: v.clone(),
                });
            }
        }
        if base.len() > own {
            base.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let name = metric_name(&sample.name);
        let ts = sample.timestamp_ms;
        let series = |suffix: &str, extra: Option<(&str, String)>, value: f64, labels: Vec<Label>| {
            let mut labels = labels;
            put(&mut labels, "__name__", format!("{name}{suffix}"));
            if let Some((k, v)) = extra {
                put(&mut labels, k, v);
            }
            TimeSeries {
                labels,
                samples: vec![PromSample { value, timestamp: ts }],
            }
        };
        let before = out.len();
        match sample.kind {
            MetricKind::Counter | MetricKind::Gauge | MetricKind::Set => out.push(series("", None, sample.value.unwrap_or(0.0), base)),
            MetricKind::Histogram => {
                let count = sample.count.unwrap_or(0.0);
                for b in &sample.buckets {
                    out.push(series("_bucket", Some(("le", float_label(b.le))), b.count, base.clone()));
                }
                out.push(series("_bucket", Some(("le", "+Inf".into())), count, base.clone()));
                out.push(series("_sum", None, sample.sum.unwrap_or(0.0), base.clone()));
                out.push(series("_count", None, count, base));
            }
            MetricKind::Summary => {
                for q in &sample.quantiles {
                    out.push(series("", Some(("quantile", float_label(q.quantile))), q.value, base.clone()));
                }
                out.push(series("_sum", None, sample.sum.unwrap_or(0.0), base.clone()));
                out.push(series("_count", None, sample.count.unwrap_or(0.0), base));
            }
        }
        out.len() - before
    }
}

/// Sets label `name` in sorted `labels`: replaces its value, or inserts it
/// in its place.
fn put(labels: &mut Vec<Label>, name: &str, value: String) {
    match labels.binary_search_by(|l| l.name.as_str().cmp(name)) {
        Ok(i) => labels[i].value = value,
        Err(i) => labels.insert(
            i,
            Label {
                name: name.to_owned(),
                value,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Fragment;
    use crate::metrics::sample::{write_sample, SampleValue};

    fn series(value: SampleValue<'_>, extra: &[(&str, &str)]) -> Vec<TimeSeries> {
        let mut line = Vec::new();
        write_sample(
            &mut line,
            "api.latency-ms",
            [("route", "/a"), ("env", ""), ("dc.name", "x")],
            7,
            &value,
            &Fragment::default(),
        );
        let s = Sample::parse(&line).unwrap();
        let b = SeriesBuilder {
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let mut out = Vec::new();
        let n = b.add(&s, &mut out);
        assert_eq!(n, out.len());
        out
    }

    fn text(ts: &TimeSeries) -> String {
        let labels: Vec<String> = ts.labels.iter().map(|l| format!("{}={}", l.name, l.value)).collect();
        format!("{} {}@{}", labels.join(","), ts.samples[0].value, ts.samples[0].timestamp)
    }

    #[test]
    fn a_histogram_becomes_buckets_sum_and_count_with_sorted_valid_labels() {
        let bounds = [0.25, 10.0];
        let cumulative = [1.0, 3.0];
        let out = series(
            SampleValue::Histogram {
                bounds: &bounds,
                cumulative: &cumulative,
                count: 4.0,
                sum: 20.5,
            },
            &[("cluster", "c1"), ("route", "ignored")],
        );
        let got: Vec<String> = out.iter().map(text).collect();
        assert_eq!(
            got,
            vec![
                "__name__=api_latency_ms_bucket,cluster=c1,dc_name=x,le=0.25,route=/a 1@7",
                "__name__=api_latency_ms_bucket,cluster=c1,dc_name=x,le=10,route=/a 3@7",
                "__name__=api_latency_ms_bucket,cluster=c1,dc_name=x,le=+Inf,route=/a 4@7",
                "__name__=api_latency_ms_sum,cluster=c1,dc_name=x,route=/a 20.5@7",
                "__name__=api_latency_ms_count,cluster=c1,dc_name=x,route=/a 4@7",
            ]
        );
    }

    #[test]
    fn counters_and_summaries_become_their_prometheus_series() {
        assert_eq!(
            series(SampleValue::Counter(12.0), &[]).iter().map(text).collect::<Vec<_>>(),
            vec!["__name__=api_latency_ms,dc_name=x,route=/a 12@7"]
        );
        let q = [(0.5, 1.5)];
        let out = series(
            SampleValue::Summary {
                quantiles: &q,
                count: 2.0,
                sum: 3.0,
            },
            &[],
        );
        assert_eq!(text(&out[0]), "__name__=api_latency_ms,dc_name=x,quantile=0.5,route=/a 1.5@7");
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn labels_that_sanitise_to_one_name_keep_the_last_and_a_sample_label_beats_extra_ones() {
        let mut line = Vec::new();
        write_sample(
            &mut line,
            "m",
            [("a.b", "1"), ("a_b", "2"), ("Zone", "z"), ("le", "own")],
            7,
            &SampleValue::Gauge(1.0),
            &Fragment::default(),
        );
        let s = Sample::parse(&line).unwrap();
        let b = SeriesBuilder {
            extra: [("a_b", "x"), ("cluster", "c1"), ("Zone", "x")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut out = Vec::new();
        b.add(&s, &mut out);
        assert_eq!(text(&out[0]), "Zone=z,__name__=m,a_b=2,cluster=c1,le=own 1@7");
    }

    #[test]
    fn names_are_made_valid_for_prometheus() {
        assert_eq!(metric_name("a.b-c:d"), "a_b_c:d");
        assert_eq!(metric_name("9lives"), "_9lives");
        assert_eq!(label_name("a:b"), "a_b");
        assert_eq!(label_name(""), "_");
        assert!(is_valid_label_name("le") && !is_valid_label_name("1x") && !is_valid_label_name(""));
        assert_eq!(float_label(0.005), "0.005");
        assert_eq!(float_label(f64::INFINITY), "+Inf");
    }
}
