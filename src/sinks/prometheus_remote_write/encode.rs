//! Prometheus remote write 1.0: metric samples as a `prometheus.WriteRequest`
//! (protobuf written straight from the samples, byte for byte what prost
//! writes for the structs below, which carry the upstream field numbers),
//! compressed as one raw snappy block.
//!
//! A sample becomes the series Prometheus itself would record for it: a
//! counter, gauge or set one series; a histogram `_bucket{le}` per bound
//! plus `+Inf`, `_sum` and `_count`; a summary `{quantile}` per quantile,
//! `_sum` and `_count`. Names and label names are made valid Prometheus
//! names (other characters become `_`); labels are sorted by name, as the
//! protocol requires; empty label values are left out (Prometheus treats
//! them as absent).

use prost::encoding::{encode_varint, encoded_len_varint};
use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::metrics::{MetricKind, Sample};

/// `prometheus.WriteRequest`: what a request body decodes to.
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

/// Compresses an encoded `WriteRequest` (the series [`SeriesBuilder::add`]
/// wrote) as one raw snappy block, the body remote write sends.
pub fn compress(body: &[u8]) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(body)
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_') && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `name` made a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`): other
/// characters (the dots of statsd names) become `_`.
pub(crate) fn metric_name(name: &str) -> String {
    sanitize(name, true).into_owned()
}

/// `name` made a valid label name.
pub(crate) fn label_name(name: &str) -> String {
    sanitize(name, false).into_owned()
}

/// `name` with every character that is not valid in a metric name
/// (`colon`) or a label name made `_`, and a leading digit prefixed with
/// `_`; borrowed when it is valid already (the common case).
fn sanitize(name: &str, colon: bool) -> Cow<'_, str> {
    let ok = |i: usize, c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (i > 0 && c.is_ascii_digit());
    // Valid names are ASCII, so their bytes are their characters: the
    // check of the common case walks bytes, not decoded characters.
    if !name.is_empty() && name.bytes().enumerate().all(|(i, b)| ok(i, char::from(b))) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 1);
    for (i, c) in name.chars().enumerate() {
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
            out.push(c);
        } else {
            out.push(if ok(i, c) { c } else { '_' });
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    Cow::Owned(out)
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
/// not already set, and writes them straight as protobuf.
#[derive(Debug, Default)]
pub(crate) struct SeriesBuilder {
    /// Added to every series unless it has the label (external labels and
    /// the batch's metadata labels), by sanitised name.
    pub(crate) extra: BTreeMap<String, String>,
    /// The last metric name that needed changing and its valid form: the
    /// samples of a batch mostly share a few names, and statsd names
    /// (`api.requests`) all need changing, so each is made once, not per
    /// sample.
    renamed: Option<(String, String)>,
}

impl SeriesBuilder {
    /// A builder that adds `extra` to every series.
    pub(crate) fn new(extra: BTreeMap<String, String>) -> SeriesBuilder {
        SeriesBuilder { extra, renamed: None }
    }

    /// Appends the series of `sample` to `out`, an encoded `WriteRequest`
    /// (each series one `timeseries` member, field 1); returns how many
    /// samples they hold.
    ///
    /// The labels are sanitised and sorted once per sample, borrowing the
    /// sample's strings; each series writes them with its `__name__` (and
    /// `le` or `quantile`) merged in place. No string is copied apart from
    /// names that need sanitising and the bounds of histogram buckets. The
    /// bytes are what prost writes for [`TimeSeries`] (fields at their
    /// default left out).
    pub(crate) fn add(&mut self, sample: &Sample<'_>, out: &mut Vec<u8>) -> usize {
        let raw: &str = &sample.name;
        if !matches!(&self.renamed, Some((r, _)) if r == raw) {
            self.renamed = match sanitize(raw, true) {
                Cow::Borrowed(_) => None,
                Cow::Owned(valid) => Some((raw.to_owned(), valid)),
            };
        }
        // `renamed` is now this sample's name, if it needed changing.
        let name = self.renamed.as_ref().map_or(raw, |(_, valid)| valid.as_str());
        let mut labels: Vec<(Cow<'_, str>, &str)> = Vec::with_capacity(sample.labels.len() + self.extra.len());
        for (k, v) in &sample.labels {
            if !v.is_empty() {
                labels.push((sanitize(k, false), v));
            }
        }
        // Stable: of labels that sanitise to one name, the last in the
        // sample's (sorted) order wins, as a map insert would.
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        labels.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        let own = labels.len();
        for (k, v) in &self.extra {
            if labels[..own].binary_search_by(|l| l.0.as_ref().cmp(k)).is_err() {
                labels.push((Cow::Borrowed(k.as_str()), v.as_str()));
            }
        }
        if labels.len() > own {
            labels.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let series = SeriesWriter {
            labels: &labels,
            name,
            timestamp: sample.timestamp_ms,
        };
        let mut n = 0;
        let mut put = |suffix: &str, extra: Option<(&str, &str)>, value: f64| {
            series.write(suffix, extra, value, out);
            n += 1;
        };
        match sample.kind {
            MetricKind::Counter | MetricKind::Gauge | MetricKind::Set => put("", None, sample.value.unwrap_or(0.0)),
            MetricKind::Histogram => {
                let count = sample.count.unwrap_or(0.0);
                for b in &sample.buckets {
                    put("_bucket", Some(("le", &float_label(b.le))), b.count);
                }
                put("_bucket", Some(("le", "+Inf")), count);
                put("_sum", None, sample.sum.unwrap_or(0.0));
                put("_count", None, count);
            }
            MetricKind::Summary => {
                for q in &sample.quantiles {
                    put("", Some(("quantile", &float_label(q.quantile))), q.value);
                }
                put("_sum", None, sample.sum.unwrap_or(0.0));
                put("_count", None, sample.count.unwrap_or(0.0));
            }
        }
        n
    }
}

/// The series of one sample, written as protobuf `TimeSeries` messages.
struct SeriesWriter<'a> {
    /// Sorted by name, no name twice.
    labels: &'a [(Cow<'a, str>, &'a str)],
    /// The sanitised metric name, before its suffix.
    name: &'a str,
    timestamp: i64,
}

impl SeriesWriter<'_> {
    /// Writes the series `<name><suffix>{labels, extra}` with one sample,
    /// as a `timeseries` member of a `WriteRequest`.
    fn write(&self, suffix: &str, extra: Option<(&str, &str)>, value: f64, out: &mut Vec<u8>) {
        let mut len = 0;
        self.each_label(suffix, extra, |name, value, tail| {
            let label = label_len(name, value, tail);
            len += 1 + encoded_len_varint(label as u64) + label;
        });
        let sample = sample_len(value, self.timestamp);
        len += 1 + encoded_len_varint(sample as u64) + sample;
        out.push(TAG_TIMESERIES);
        encode_varint(len as u64, out);
        self.each_label(suffix, extra, |name, value, tail| {
            out.push(TAG_LABELS);
            encode_varint(label_len(name, value, tail) as u64, out);
            put_string(out, TAG_LABEL_NAME, name, "");
            put_string(out, TAG_LABEL_VALUE, value, tail);
        });
        out.push(TAG_SAMPLES);
        encode_varint(sample as u64, out);
        if value != 0.0 {
            out.push(TAG_SAMPLE_VALUE);
            out.extend_from_slice(&value.to_le_bytes());
        }
        if self.timestamp != 0 {
            out.push(TAG_SAMPLE_TIMESTAMP);
            encode_varint(self.timestamp as u64, out);
        }
    }

    /// Calls `f(name, value, value_tail)` for every label in name order:
    /// the sample's labels with `__name__` (the name and `suffix`) and
    /// `extra` put in place, replacing a label of the same name.
    fn each_label(&self, suffix: &str, extra: Option<(&str, &str)>, mut f: impl FnMut(&str, &str, &str)) {
        // `__name__` sorts before `le` and `quantile`.
        let mut special = [Some(("__name__", self.name, suffix)), extra.map(|(k, v)| (k, v, ""))]
            .into_iter()
            .flatten()
            .peekable();
        for (name, value) in self.labels {
            let mut replaced = false;
            while let Some(&(k, v, tail)) = special.peek() {
                if k > name.as_ref() {
                    break;
                }
                f(k, v, tail);
                special.next();
                if k == name.as_ref() {
                    replaced = true;
                    break;
                }
            }
            if !replaced {
                f(name, value, "");
            }
        }
        for (k, v, tail) in special {
            f(k, v, tail);
        }
    }
}

/// Protobuf keys (field number and wire type) of the remote write messages.
const TAG_TIMESERIES: u8 = 0x0a; // WriteRequest.timeseries = 1, length-delimited
const TAG_LABELS: u8 = 0x0a; // TimeSeries.labels = 1, length-delimited
const TAG_SAMPLES: u8 = 0x12; // TimeSeries.samples = 2, length-delimited
const TAG_LABEL_NAME: u8 = 0x0a; // Label.name = 1, length-delimited
const TAG_LABEL_VALUE: u8 = 0x12; // Label.value = 2, length-delimited
const TAG_SAMPLE_VALUE: u8 = 0x09; // Sample.value = 1, 64-bit
const TAG_SAMPLE_TIMESTAMP: u8 = 0x10; // Sample.timestamp = 2, varint

/// Bytes of a string field holding `head` and `tail` (none when empty).
fn string_len(head: &str, tail: &str) -> usize {
    let n = head.len() + tail.len();
    if n == 0 {
        0
    } else {
        1 + encoded_len_varint(n as u64) + n
    }
}

/// Bytes of a `Label` message.
fn label_len(name: &str, value: &str, tail: &str) -> usize {
    string_len(name, "") + string_len(value, tail)
}

/// Bytes of a `Sample` message.
fn sample_len(value: f64, timestamp: i64) -> usize {
    let value = if value != 0.0 { 9 } else { 0 };
    let timestamp = if timestamp != 0 {
        1 + encoded_len_varint(timestamp as u64)
    } else {
        0
    };
    value + timestamp
}

/// Writes the string field `tag` holding `head` and `tail`, unless empty.
fn put_string(out: &mut Vec<u8>, tag: u8, head: &str, tail: &str) {
    let n = head.len() + tail.len();
    if n > 0 {
        out.push(tag);
        encode_varint(n as u64, out);
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(tail.as_bytes());
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
        let mut b = SeriesBuilder::new(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        decoded(&mut b, &s)
    }

    /// The series `b` writes for `s`, read back with prost; the bytes must
    /// be exactly what prost writes for them.
    fn decoded(b: &mut SeriesBuilder, s: &Sample<'_>) -> Vec<TimeSeries> {
        use prost::Message;
        let mut body = Vec::new();
        let n = b.add(s, &mut body);
        let req = WriteRequest::decode(body.as_slice()).unwrap();
        assert_eq!(n, req.timeseries.len());
        assert_eq!(req.encode_to_vec(), body, "written as prost writes it");
        req.timeseries
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
        let mut b = SeriesBuilder::new(
            [("a_b", "x"), ("cluster", "c1"), ("Zone", "x")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let out = decoded(&mut b, &s);
        assert_eq!(text(&out[0]), "Zone=z,__name__=m,a_b=2,cluster=c1,le=own 1@7");
    }

    #[test]
    fn series_replace_a_sample_label_named_like_theirs_and_keep_defaults_and_long_values_exact() {
        // Zero values and a zero timestamp are fields prost leaves out; a
        // negative timestamp is a ten-byte varint; a 300-byte value has a
        // two-byte length; `__name__` and `le` of the sample give way to
        // the series' own; an empty extra value is left out as prost does.
        let long = "v".repeat(300);
        let bounds = [1.0];
        let cumulative = [0.0];
        for ts in [0, -5, 1_700_000_000_000] {
            let mut line = Vec::new();
            write_sample(
                &mut line,
                "h",
                [("__name__", "own"), ("le", "own"), ("long", long.as_str()), ("a", "1")],
                ts,
                &SampleValue::Histogram {
                    bounds: &bounds,
                    cumulative: &cumulative,
                    count: 0.0,
                    sum: 0.0,
                },
                &Fragment::default(),
            );
            let s = Sample::parse(&line).unwrap();
            let mut b = SeriesBuilder::new(
                [("empty", ""), ("z", "last")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            let out = decoded(&mut b, &s);
            let got: Vec<String> = out.iter().map(text).collect();
            let l = format!("long={long}");
            assert_eq!(
                got,
                vec![
                    format!("__name__=h_bucket,a=1,empty=,le=1,{l},z=last 0@{ts}"),
                    format!("__name__=h_bucket,a=1,empty=,le=+Inf,{l},z=last 0@{ts}"),
                    format!("__name__=h_sum,a=1,empty=,le=own,{l},z=last 0@{ts}"),
                    format!("__name__=h_count,a=1,empty=,le=own,{l},z=last 0@{ts}"),
                ]
            );
        }
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

    #[test]
    fn each_sample_of_a_builder_keeps_its_own_metric_name() {
        // One builder writes a batch's samples: names that need changing,
        // valid ones and repeats, in turns, each under its own name.
        let mut b = SeriesBuilder::default();
        let names = [
            "api.hits",
            "api.hits",
            "valid_name",
            "api.hits",
            "db.q-1",
            "db.q-1",
            "valid_name",
            "9x",
        ];
        let want = [
            "api_hits",
            "api_hits",
            "valid_name",
            "api_hits",
            "db_q_1",
            "db_q_1",
            "valid_name",
            "_9x",
        ];
        for (name, want) in names.iter().zip(want) {
            let mut line = Vec::new();
            write_sample(&mut line, name, [], 7, &SampleValue::Counter(1.0), &Fragment::default());
            let s = Sample::parse(&line).unwrap();
            let out = decoded(&mut b, &s);
            assert_eq!(text(&out[0]), format!("__name__={want} 1@7"), "sample named {name}");
        }
    }
}
