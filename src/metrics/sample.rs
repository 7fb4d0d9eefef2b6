//! One metric sample as one JSON object: the fixed schema every metric
//! batch carries ([`crate::event::EventKind::Metric`]), written by metric
//! sources and read back by metric sinks. JSON log sinks (stdout, Kafka,
//! S3) write the objects as they are, one per line, so an aggregator tier
//! can read them back from Kafka.
//!
//! ```text
//! {"metric":"api.requests","kind":"counter","labels":{"route":"/a"},"timestamp_ms":1733480000000,
//!  "value":12, …source metadata members…}
//! {"metric":"api.latency","kind":"histogram","labels":{},"timestamp_ms":…,
//!  "count":3,"sum":41.5,"buckets":[{"le":10,"count":1},{"le":50,"count":3}], …}
//! {"metric":"rpc","kind":"summary",…,"count":3,"sum":4.5,"quantiles":[{"quantile":0.5,"value":1.2}], …}
//! ```
//!
//! - `kind`: `counter`, `gauge`, `histogram`, `summary` or `set`.
//! - `value`: a counter's running total since its series started (as a
//!   Prometheus counter: it only resets when the series restarts), a
//!   gauge's value, a set's count of distinct members in the interval.
//! - `buckets`: finite upper bounds, ascending, with cumulative counts; the
//!   `+Inf` bucket is `count`.
//! - Labels and the metric name are kept as the source wrote them; a sink
//!   with naming rules (Prometheus) adapts them.
//! - The source's metadata (host, release, process) follows as top-level
//!   members, exactly as it is spliced into log events.

use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::enrich::Fragment;
use crate::json_text::escape_json_str;

/// The kinds of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A running total that only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted into explicit buckets.
    Histogram,
    /// Observations summarised as quantiles.
    Summary,
    /// Distinct members seen in an interval.
    Set,
}

impl MetricKind {
    /// The schema's name for the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
            MetricKind::Set => "set",
        }
    }
}

/// What a sample measures, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleValue<'a> {
    /// Running total.
    Counter(f64),
    /// Current value.
    Gauge(f64),
    /// Distinct members in the interval.
    Set(u64),
    /// Bucketed observations.
    Histogram {
        /// Finite upper bounds, ascending.
        bounds: &'a [f64],
        /// Cumulative count per bound (`bounds.len()` of them).
        cumulative: &'a [f64],
        /// All observations (the `+Inf` bucket).
        count: f64,
        /// Sum of the observations.
        sum: f64,
    },
    /// Quantiles of observations.
    Summary {
        /// `(quantile, value)` pairs.
        quantiles: &'a [(f64, f64)],
        /// Observations.
        count: f64,
        /// Sum of the observations.
        sum: f64,
    },
}

impl SampleValue<'_> {
    /// The kind this value belongs to.
    pub fn kind(&self) -> MetricKind {
        match self {
            SampleValue::Counter(_) => MetricKind::Counter,
            SampleValue::Gauge(_) => MetricKind::Gauge,
            SampleValue::Set(_) => MetricKind::Set,
            SampleValue::Histogram { .. } => MetricKind::Histogram,
            SampleValue::Summary { .. } => MetricKind::Summary,
        }
    }
}

/// Appends one sample as a JSON object (no newline) to `out`. `labels` must
/// not repeat a name. Non-finite numbers (which JSON cannot hold) are
/// written as `null`.
pub fn write_sample<'l>(
    out: &mut Vec<u8>,
    name: &str,
    labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    timestamp_ms: i64,
    value: &SampleValue<'_>,
    metadata: &Fragment,
) {
    out.extend_from_slice(b"{\"metric\":\"");
    escape_json_str(name, out);
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(value.kind().as_str().as_bytes());
    out.extend_from_slice(b"\",\"labels\":{");
    for (i, (k, v)) in labels.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        escape_json_str(k, out);
        out.extend_from_slice(b"\":\"");
        escape_json_str(v, out);
        out.push(b'"');
    }
    out.extend_from_slice(b"},\"timestamp_ms\":");
    out.extend_from_slice(itoa::Buffer::new().format(timestamp_ms).as_bytes());
    match value {
        SampleValue::Counter(v) | SampleValue::Gauge(v) => {
            out.extend_from_slice(b",\"value\":");
            write_number(out, *v);
        }
        SampleValue::Set(n) => {
            out.extend_from_slice(b",\"value\":");
            out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
        }
        SampleValue::Histogram {
            bounds,
            cumulative,
            count,
            sum,
        } => {
            write_count_sum(out, *count, *sum);
            let pairs = bounds.iter().copied().zip(cumulative.iter().copied());
            write_pairs(out, "buckets", "le", "count", pairs);
        }
        SampleValue::Summary { quantiles, count, sum } => {
            write_count_sum(out, *count, *sum);
            write_pairs(out, "quantiles", "quantile", "value", quantiles.iter().copied());
        }
    }
    for m in metadata.members() {
        out.push(b',');
        out.extend_from_slice(m.rendered());
    }
    out.push(b'}');
}

/// `,"<array>":[{"<a>":x,"<b>":y},…]`: the `buckets` and `quantiles`
/// arrays.
fn write_pairs(out: &mut Vec<u8>, array: &str, a: &str, b: &str, pairs: impl Iterator<Item = (f64, f64)>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(array.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, (x, y)) in pairs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\":");
        write_number(out, x);
        out.extend_from_slice(b",\"");
        out.extend_from_slice(b.as_bytes());
        out.extend_from_slice(b"\":");
        write_number(out, y);
        out.push(b'}');
    }
    out.push(b']');
}

fn write_count_sum(out: &mut Vec<u8>, count: f64, sum: f64) {
    out.extend_from_slice(b",\"count\":");
    write_number(out, count);
    out.extend_from_slice(b",\"sum\":");
    write_number(out, sum);
}

/// Integers as integers (`12`, not `12.0`), other finite numbers in their
/// shortest exact form, non-finite ones as `null`.
fn write_number(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        out.extend_from_slice(b"null");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
    } else {
        out.extend_from_slice(ryu::Buffer::new().format(v).as_bytes());
    }
}

/// One bucket of a histogram sample.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Bucket {
    /// Upper bound.
    pub le: f64,
    /// Observations at or below it.
    pub count: f64,
}

/// One quantile of a summary sample.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Quantile {
    /// The quantile, `0..=1`.
    pub quantile: f64,
    /// Its value.
    pub value: f64,
}

/// A sample read back from its JSON object; strings borrow from it where
/// they hold no escapes. Unknown members (the source metadata) are skipped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sample<'a> {
    /// The metric name as the source wrote it.
    #[serde(borrow, rename = "metric")]
    pub name: Cow<'a, str>,
    /// The kind.
    pub kind: MetricKind,
    /// Labels, by name.
    #[serde(borrow, default)]
    pub labels: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Counter, gauge and set value.
    #[serde(default)]
    pub value: Option<f64>,
    /// Histogram and summary observation count.
    #[serde(default)]
    pub count: Option<f64>,
    /// Histogram and summary observation sum.
    #[serde(default)]
    pub sum: Option<f64>,
    /// Histogram buckets.
    #[serde(default)]
    pub buckets: Vec<Bucket>,
    /// Summary quantiles.
    #[serde(default)]
    pub quantiles: Vec<Quantile>,
}

/// Why an event is not a sample.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SampleError {
    /// Not JSON of the schema's shape.
    #[error("not a metric sample: {0}")]
    Shape(#[from] serde_json::Error),
    /// A member the kind needs is missing (`value`, `count`).
    #[error("a {kind} sample needs `{member}`")]
    Missing {
        /// The sample's kind.
        kind: &'static str,
        /// The missing member.
        member: &'static str,
    },
}

impl<'a> Sample<'a> {
    /// Reads one event of a metric batch. Objects in the form
    /// [`write_sample`] writes take a fast reader ([`super::canonical`]);
    /// the rest serde_json, with the same result.
    pub fn parse(event: &'a [u8]) -> Result<Sample<'a>, SampleError> {
        if let Some(s) = super::canonical::parse(event) {
            return Ok(s);
        }
        Self::parse_general(event)
    }

    /// [`Sample::parse`] through serde_json alone.
    pub(super) fn parse_general(event: &'a [u8]) -> Result<Sample<'a>, SampleError> {
        let s: Sample<'a> = serde_json::from_slice(event)?;
        let missing = |member| SampleError::Missing {
            kind: s.kind.as_str(),
            member,
        };
        match s.kind {
            MetricKind::Counter | MetricKind::Gauge | MetricKind::Set if s.value.is_none() => Err(missing("value")),
            MetricKind::Histogram | MetricKind::Summary if s.count.is_none() => Err(missing("count")),
            MetricKind::Histogram | MetricKind::Summary if s.sum.is_none() => Err(missing("sum")),
            _ => Ok(s),
        }
    }
}

/// Appends `message` (one JSON object from outside: a Kafka message that a
/// JSON sink wrote) to `out` as one event of a metric batch, after checking
/// that it is a sample. Every member is kept, so the writer's metadata
/// (`host`, `release`, …) travels on. It is copied as it is, unless it
/// holds a line break (pretty-printed JSON): then it is written again
/// compactly, numbers exact, so the event stays one line.
pub fn copy_sample(message: &[u8], out: &mut Vec<u8>) -> Result<(), SampleError> {
    let message = message.trim_ascii();
    Sample::parse(message)?;
    if message.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        let doc: serde_json::Value = serde_json::from_slice(message)?;
        serde_json::to_writer(&mut *out, &doc)?;
    } else {
        out.extend_from_slice(message);
    }
    Ok(())
}

/// Reads every NUL-separated piece of `data` as a sample message
/// ([`copy_sample`]), and the copies back as samples (the fuzz target's entry point): any input
/// gives samples or errors, never a panic, and what was copied parses
/// again to the same sample.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_samples(data: &[u8]) -> usize {
    let mut copied = 0;
    for message in data.split(|b| *b == 0) {
        if let Some(fast) = super::canonical::parse(message) {
            match Sample::parse_general(message) {
                Ok(general) => assert!(same_sample(&fast, &general), "the fast reader read another sample"),
                Err(e) => panic!("the fast reader took what serde_json refuses: {e}"),
            }
        }
        let mut out = Vec::new();
        if copy_sample(message, &mut out).is_ok() {
            let (Ok(a), Ok(b)) = (Sample::parse(message.trim_ascii()), Sample::parse(&out)) else {
                panic!("a copied sample no longer parses");
            };
            assert!(!out.contains(&b'\n'), "a copied sample holds a line break");
            assert!(same_sample(&a, &b), "copying changed the sample");
            copied += 1;
        }
    }
    copied
}

/// Equal, counting NaN-free numbers by their bits (a copy is exact).
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn same_sample(a: &Sample<'_>, b: &Sample<'_>) -> bool {
    let bits = |v: Option<f64>| v.map(f64::to_bits);
    a.name == b.name
        && a.kind == b.kind
        && a.labels == b.labels
        && a.timestamp_ms == b.timestamp_ms
        && bits(a.value) == bits(b.value)
        && bits(a.count) == bits(b.count)
        && bits(a.sum) == bits(b.sum)
        && a.buckets.len() == b.buckets.len()
        && a.buckets
            .iter()
            .zip(&b.buckets)
            .all(|(x, y)| x.le.to_bits() == y.le.to_bits() && x.count.to_bits() == y.count.to_bits())
        && a.quantiles.len() == b.quantiles.len()
        && a.quantiles
            .iter()
            .zip(&b.quantiles)
            .all(|(x, y)| x.quantile.to_bits() == y.quantile.to_bits() && x.value.to_bits() == y.value.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn written(value: &SampleValue<'_>, meta: &Fragment) -> Vec<u8> {
        let mut out = Vec::new();
        write_sample(
            &mut out,
            "api.req\"s",
            [("route", "/a"), ("z", "ü\n")],
            1_700_000_000_123,
            value,
            meta,
        );
        out
    }

    #[test]
    fn every_kind_round_trips_through_its_json_object() {
        let mut meta = Map::new();
        meta.insert("host".into(), json!("h1"));
        let meta = Fragment::from_map(&meta);
        let bounds = [0.5, 10.0];
        let cumulative = [1.0, 3.0];
        let quantiles = [(0.5, 1.25), (0.99, 7.0)];
        let values = [
            SampleValue::Counter(12.0),
            SampleValue::Gauge(-3.5),
            SampleValue::Set(4),
            SampleValue::Histogram {
                bounds: &bounds,
                cumulative: &cumulative,
                count: 4.0,
                sum: 41.5,
            },
            SampleValue::Summary {
                quantiles: &quantiles,
                count: 3.0,
                sum: 4.5,
            },
        ];
        for v in &values {
            let text = written(v, &meta);
            let doc: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(doc["host"], "h1", "metadata is spliced: {doc}");
            let s = Sample::parse(&text).unwrap();
            assert_eq!(s.name, "api.req\"s");
            assert_eq!(s.kind, v.kind());
            assert_eq!(s.labels.get("z").map(|c| c.as_ref()), Some("ü\n"));
            assert_eq!(s.timestamp_ms, 1_700_000_000_123);
            match v {
                SampleValue::Counter(x) | SampleValue::Gauge(x) => assert_eq!(s.value, Some(*x)),
                SampleValue::Set(n) => assert_eq!(s.value, Some(*n as f64)),
                SampleValue::Histogram { count, sum, .. } => {
                    assert_eq!((s.count, s.sum), (Some(*count), Some(*sum)));
                    assert_eq!(s.buckets, vec![Bucket { le: 0.5, count: 1.0 }, Bucket { le: 10.0, count: 3.0 }]);
                }
                SampleValue::Summary { count, .. } => {
                    assert_eq!(s.count, Some(*count));
                    assert_eq!(
                        s.quantiles[1],
                        Quantile {
                            quantile: 0.99,
                            value: 7.0
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn integers_stay_integers_and_non_finite_numbers_become_null() {
        let text = written(&SampleValue::Counter(12.0), &Fragment::default());
        assert!(text.ends_with(b"\"value\":12}"), "{}", String::from_utf8_lossy(&text));
        let text = written(&SampleValue::Gauge(f64::NAN), &Fragment::default());
        assert!(text.ends_with(b"\"value\":null}"));
        assert!(matches!(Sample::parse(&text), Err(SampleError::Missing { member: "value", .. })));
    }

    #[test]
    fn every_finite_number_a_sample_holds_reads_back_bit_exact() {
        // Written in the shortest exact form, any finite f64 must read
        // back as the same bits: the aggregator tier reads what agents
        // wrote, and a counter off by one unit in the last place is wrong.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut wrong = Vec::new();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if !v.is_finite() {
                continue;
            }
            let text = written(&SampleValue::Gauge(v), &Fragment::default());
            let back = Sample::parse(&text).unwrap().value.unwrap();
            if back.to_bits() != v.to_bits() {
                wrong.push((v, back));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of 20000 read back wrong, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
    }

    #[test]
    fn a_sample_message_is_copied_as_one_line_with_its_metadata() {
        let one_line = br#"{"metric":"a","kind":"counter","labels":{"x":"1"},"timestamp_ms":5,"value":3,"host":"h1"}"#;
        let mut out = Vec::new();
        copy_sample(one_line, &mut out).unwrap();
        assert_eq!(out, one_line.to_vec(), "copied byte for byte");
        let pretty =
            b"{\n  \"metric\": \"a\",\n  \"kind\": \"gauge\",\r\n  \"timestamp_ms\": 5,\n  \"value\": 0.1,\n  \"host\": \"h1\"\n}\n";
        let mut out = Vec::new();
        copy_sample(pretty, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"metric":"a","kind":"gauge","timestamp_ms":5,"value":0.1,"host":"h1"}"#
        );
        for bad in [
            &b"{\"message\":\"hi\"}"[..],
            b"not json",
            b"{\"metric\":\"a\",\"kind\":\"counter\",\"timestamp_ms\":1}",
        ] {
            let mut out = Vec::new();
            assert!(copy_sample(bad, &mut out).is_err());
            assert!(out.is_empty(), "nothing is written for a message that is not a sample");
        }
    }

    #[test]
    fn events_that_are_not_samples_are_errors_not_panics() {
        for bad in [
            &b"{}"[..],
            b"{\"message\":\"hi\"}",
            b"[1]",
            b"",
            b"{\"metric\":\"x\",\"kind\":\"odd\",\"timestamp_ms\":1}",
        ] {
            assert!(Sample::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
