//! OTLP metrics and sluice metric samples, both ways, by one table
//! (docs/otlp.md). Each data point becomes one sample of the metric
//! schema (`crate::metrics::sample`):
//!
//! - a monotonic Sum is a `counter`, any other Sum a `gauge`; a delta Sum
//!   is added up per series into its running total ([`DeltaSeries`]), as a
//!   Prometheus counter needs;
//! - a Gauge is a `gauge`;
//! - a Histogram is a `histogram` (explicit bounds, cumulative counts);
//! - an ExponentialHistogram is a `histogram` whose bounds are the
//!   exponential buckets' boundaries, `±2^(index·2^-scale)`, with the zero
//!   bucket at `zero_threshold` ([`exponential_buckets`]);
//! - a Summary is a `summary`.
//!
//! Data point attributes are the labels; the resource becomes the same
//! metadata members as a log record's (`release`, `process`, `kubernetes`,
//! `host`, `resource`), and the scope a `scope` member. The sink reads the
//! samples back into an export request grouped by resource, scope and
//! metric.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json};

use super::logs::{event_resource, event_scope, resource_key, resource_members, scope_member, value_to_json, write_str};
use super::proto::{
    AnyValue, Buckets, ExponentialHistogramDataPoint, ExportMetricsServiceRequest, Gauge, Histogram, HistogramDataPoint, KeyValue, Metric,
    MetricData, NumberDataPoint, NumberValue, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, Value, ValueAtQuantile,
    FLAG_NO_RECORDED_VALUE, TEMPORALITY_CUMULATIVE, TEMPORALITY_DELTA,
};
use crate::enrich::Fragment;
use crate::metrics::sample::{write_sample, Sample, SampleValue};
use crate::metrics::MetricKind;

/// The exponential histogram scales the OTLP spec allows.
const SCALES: std::ops::RangeInclusive<i32> = -10..=20;

/// Buckets an exponential histogram may have (positive and negative):
/// each becomes an explicit bucket, and a remote-write series. SDKs keep
/// 160 by default.
pub(crate) const MAX_EXPONENTIAL_BUCKETS: usize = 2048;

/// Why a data point was rejected (it is reported in the export's partial
/// success and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// A number data point without a value.
    NoValue = 0,
    /// Histogram buckets that do not add up (counts against bounds or
    /// the total), bounds not ascending and finite, or too many buckets.
    Buckets = 1,
    /// An exponential histogram scale outside -10..=20.
    Scale = 2,
    /// A delta series past `max_delta_series`.
    SeriesLimit = 3,
    /// A metric without a name.
    NoName = 4,
}

impl Reject {
    const ALL: [Reject; 5] = [Reject::NoValue, Reject::Buckets, Reject::Scale, Reject::SeriesLimit, Reject::NoName];

    /// The `reason` label of the rejection counter.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Reject::NoValue => "no_value",
            Reject::Buckets => "buckets",
            Reject::Scale => "scale",
            Reject::SeriesLimit => "series_limit",
            Reject::NoName => "no_name",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Reject::NoValue => "a number data point has no value",
            Reject::Buckets => "histogram buckets do not match their bounds or count",
            Reject::Scale => "an exponential histogram scale is outside -10..=20",
            Reject::SeriesLimit => "too many delta series (max_delta_series)",
            Reject::NoName => "a metric has no name",
        }
    }
}

/// What [`write_samples`] did with a request.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Written {
    /// Samples written (one per data point taken).
    pub(crate) samples: usize,
    /// Data points rejected, by [`Reject`] (as its index).
    pub(crate) rejected: [usize; 5],
}

impl Written {
    /// Data points rejected, all reasons.
    pub(crate) fn rejected_total(&self) -> usize {
        self.rejected.iter().sum()
    }

    /// The rejections by reason, those that happened.
    pub(crate) fn rejections(&self) -> impl Iterator<Item = (Reject, usize)> + '_ {
        Reject::ALL
            .into_iter()
            .map(|r| (r, self.rejected[r as usize]))
            .filter(|(_, n)| *n > 0)
    }

    /// The partial success message: what was wrong, first reason first.
    pub(crate) fn message(&self) -> String {
        self.rejections()
            .map(|(r, n)| format!("{n} data points rejected: {}", r.message()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A running total a delta series has added up to.
#[derive(Debug, Clone, PartialEq)]
enum Total {
    Number(f64),
    Histogram(Buckets64),
}

/// Histogram buckets as per-bucket counts (not cumulative), by finite
/// upper bound, ascending; what is above the last bound is `count` minus
/// their sum.
#[derive(Debug, Clone, PartialEq, Default)]
struct Buckets64 {
    bounds: Vec<f64>,
    counts: Vec<f64>,
    count: f64,
    sum: f64,
}

impl Buckets64 {
    /// Adds `other` to this total: counts of equal bounds add up, the
    /// bounds of either stay (an exponential histogram that changed its
    /// scale keeps exact counts at every bound of both).
    fn add(&mut self, other: &Buckets64) {
        let (mut i, mut j) = (0, 0);
        let (mut bounds, mut counts) = (Vec::new(), Vec::new());
        while i < self.bounds.len() || j < other.bounds.len() {
            let a = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            let b = other.bounds.get(j).copied().unwrap_or(f64::INFINITY);
            if a <= b {
                bounds.push(a);
                let mut c = self.counts[i];
                i += 1;
                if a == b {
                    c += other.counts[j];
                    j += 1;
                }
                counts.push(c);
            } else {
                bounds.push(b);
                counts.push(other.counts[j]);
                j += 1;
            }
        }
        self.bounds = bounds;
        self.counts = counts;
        self.count += other.count;
        self.sum += other.sum;
    }

    fn cumulative(&self) -> Vec<f64> {
        let mut total = 0.0;
        self.counts
            .iter()
            .map(|c| {
                total += c;
                total
            })
            .collect()
    }
}

/// Running totals of delta series, so that a delta Sum or histogram
/// leaves as the cumulative sample Prometheus needs. Bounded: past
/// `max_series` a new series' points are rejected, once series not updated
/// for `expire_after` are removed.
#[derive(Debug)]
pub(crate) struct DeltaSeries {
    max_series: usize,
    expire_after: Duration,
    series: HashMap<Vec<u8>, (Total, Instant)>,
}

impl DeltaSeries {
    /// No series yet.
    pub(crate) fn new(max_series: usize, expire_after: Duration) -> DeltaSeries {
        DeltaSeries {
            max_series,
            expire_after,
            series: HashMap::new(),
        }
    }

    /// Series held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.series.len()
    }

    /// Adds `delta` to the series `key`: its new total, or `None` past the
    /// series limit.
    fn add(&mut self, key: &[u8], delta: Total, now: Instant) -> Option<Total> {
        if let Some((total, seen)) = self.series.get_mut(key) {
            *seen = now;
            match (total, &delta) {
                (Total::Number(t), Total::Number(d)) => *t += d,
                (Total::Histogram(t), Total::Histogram(d)) => t.add(d),
                // The series changed kind: it starts again.
                (t, _) => *t = delta,
            }
            return Some(self.series[key].0.clone());
        }
        if self.series.len() >= self.max_series {
            let expire = self.expire_after;
            self.series.retain(|_, (_, seen)| now.duration_since(*seen) < expire);
            if self.series.len() >= self.max_series {
                return None;
            }
        }
        self.series.insert(key.to_vec(), (delta.clone(), now));
        Some(delta)
    }
}

/// Writes every data point of `request` as one sample line (NDJSON) into
/// `out`. `collector` is the collector's own metadata: its members are
/// added where the resource has none of the same name. Points with the
/// no-recorded-value flag are skipped (neither samples nor rejected).
pub(crate) fn write_samples(
    request: &ExportMetricsServiceRequest,
    collector: &Fragment,
    deltas: &mut DeltaSeries,
    now_ms: i64,
    out: &mut Vec<u8>,
) -> Written {
    let mut written = Written::default();
    let now = Instant::now();
    let mut scope_part = Vec::new();
    let mut tail = Vec::new();
    let mut labels = Vec::new();
    let mut key = Vec::new();
    for rm in &request.resource_metrics {
        let resource = resource_members(rm.resource.as_ref());
        let mut resource_part = resource.rendered;
        for m in collector.members() {
            if !resource.keys.contains(&m.key()) {
                resource_part.push(b',');
                resource_part.extend_from_slice(m.rendered());
            }
        }
        for sm in &rm.scope_metrics {
            scope_member(sm.scope.as_ref(), &mut scope_part);
            for metric in &sm.metrics {
                tail.clear();
                if !metric.unit.is_empty() {
                    tail.extend_from_slice(b",\"unit\":");
                    write_str(&metric.unit, &mut tail);
                }
                if !metric.description.is_empty() {
                    tail.extend_from_slice(b",\"description\":");
                    write_str(&metric.description, &mut tail);
                }
                tail.extend_from_slice(&scope_part);
                tail.extend_from_slice(&resource_part);
                let mut point = Point {
                    name: &metric.name,
                    tail: &tail,
                    labels: &mut labels,
                    key: &mut key,
                    deltas: &mut *deltas,
                    now,
                    now_ms,
                    out: &mut *out,
                    written: &mut written,
                };
                point.metric(metric);
            }
        }
    }
    written
}

/// One metric's points on their way out: what each needs to be written.
struct Point<'a> {
    name: &'a str,
    /// Members after the sample's own: unit, description, scope, resource.
    tail: &'a [u8],
    labels: &'a mut Vec<(String, String)>,
    key: &'a mut Vec<u8>,
    deltas: &'a mut DeltaSeries,
    now: Instant,
    now_ms: i64,
    out: &'a mut Vec<u8>,
    written: &'a mut Written,
}

impl Point<'_> {
    fn metric(&mut self, metric: &Metric) {
        if metric.name.is_empty() {
            self.written.rejected[Reject::NoName as usize] += points_of(metric);
            return;
        }
        match &metric.data {
            None => {}
            Some(MetricData::Gauge(g)) => {
                for p in g.data_points.iter().filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0) {
                    self.number(p, MetricKind::Gauge, false);
                }
            }
            Some(MetricData::Sum(s)) => {
                let kind = if s.is_monotonic { MetricKind::Counter } else { MetricKind::Gauge };
                let delta = s.aggregation_temporality == TEMPORALITY_DELTA;
                for p in s.data_points.iter().filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0) {
                    self.number(p, kind, delta);
                }
            }
            Some(MetricData::Histogram(h)) => {
                let delta = h.aggregation_temporality == TEMPORALITY_DELTA;
                for p in h.data_points.iter().filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0) {
                    let buckets = explicit_buckets(p);
                    self.histogram(&p.attributes, p.time_unix_nano, p.start_time_unix_nano, buckets, delta);
                }
            }
            Some(MetricData::ExponentialHistogram(h)) => {
                let delta = h.aggregation_temporality == TEMPORALITY_DELTA;
                for p in h.data_points.iter().filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0) {
                    let buckets = exponential_buckets(p);
                    self.histogram(&p.attributes, p.time_unix_nano, p.start_time_unix_nano, buckets, delta);
                }
            }
            Some(MetricData::Summary(s)) => {
                for p in s.data_points.iter().filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0) {
                    let quantiles: Vec<(f64, f64)> = p.quantile_values.iter().map(|q| (q.quantile, q.value)).collect();
                    labels_of(&p.attributes, self.labels);
                    let value = SampleValue::Summary {
                        quantiles: &quantiles,
                        count: p.count as f64,
                        sum: p.sum,
                    };
                    self.write(p.time_unix_nano, p.start_time_unix_nano, &value);
                }
            }
        }
    }

    fn number(&mut self, p: &NumberDataPoint, kind: MetricKind, delta: bool) {
        let v = match p.value {
            Some(NumberValue::AsDouble(d)) => d,
            Some(NumberValue::AsInt(i)) => i as f64,
            None => {
                self.written.rejected[Reject::NoValue as usize] += 1;
                return;
            }
        };
        labels_of(&p.attributes, self.labels);
        let v = if delta {
            self.series_key(kind);
            match self.deltas.add(self.key, Total::Number(v), self.now) {
                Some(Total::Number(total)) => total,
                _ => {
                    self.written.rejected[Reject::SeriesLimit as usize] += 1;
                    return;
                }
            }
        } else {
            v
        };
        let value = if kind == MetricKind::Counter {
            SampleValue::Counter(v)
        } else {
            SampleValue::Gauge(v)
        };
        self.write(p.time_unix_nano, p.start_time_unix_nano, &value);
    }

    fn histogram(&mut self, attributes: &[KeyValue], time: u64, start: u64, buckets: Result<Buckets64, Reject>, delta: bool) {
        let mut b = match buckets {
            Ok(b) => b,
            Err(r) => {
                self.written.rejected[r as usize] += 1;
                return;
            }
        };
        labels_of(attributes, self.labels);
        if delta {
            self.series_key(MetricKind::Histogram);
            match self.deltas.add(self.key, Total::Histogram(b), self.now) {
                Some(Total::Histogram(total)) => b = total,
                _ => {
                    self.written.rejected[Reject::SeriesLimit as usize] += 1;
                    return;
                }
            }
        }
        let cumulative = b.cumulative();
        let value = SampleValue::Histogram {
            bounds: &b.bounds,
            cumulative: &cumulative,
            count: b.count,
            sum: b.sum,
        };
        self.write(time, start, &value);
    }

    /// The key of the series the current labels name: metric, kind,
    /// labels, scope and resource.
    fn series_key(&mut self, kind: MetricKind) {
        let k = &mut *self.key;
        k.clear();
        k.extend_from_slice(self.name.as_bytes());
        k.push(0xff);
        k.extend_from_slice(kind.as_str().as_bytes());
        for (name, value) in self.labels.iter() {
            k.push(0xff);
            k.extend_from_slice(name.as_bytes());
            k.push(0xfe);
            k.extend_from_slice(value.as_bytes());
        }
        k.push(0xff);
        k.extend_from_slice(self.tail);
    }

    fn write(&mut self, time: u64, start: u64, value: &SampleValue<'_>) {
        let timestamp_ms = if time == 0 { self.now_ms } else { (time / 1_000_000) as i64 };
        let labels = self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        write_sample(self.out, self.name, labels, timestamp_ms, value, &Fragment::default());
        // The sample's closing brace: the point's own members follow.
        self.out.pop();
        if start != 0 {
            self.out.extend_from_slice(b",\"start_timestamp_ms\":");
            self.out.extend_from_slice(itoa::Buffer::new().format(start / 1_000_000).as_bytes());
        }
        self.out.extend_from_slice(self.tail);
        self.out.extend_from_slice(b"}\n");
        self.written.samples += 1;
    }
}

/// Data point attributes as labels: strings as they are, other values as
/// their JSON text; of a repeated name the last wins.
fn labels_of(attributes: &[KeyValue], labels: &mut Vec<(String, String)>) {
    labels.clear();
    for kv in attributes {
        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => match value_to_json(v) {
                Json::String(s) => s,
                other => other.to_string(),
            },
        };
        match labels.iter_mut().find(|(k, _)| *k == kv.key) {
            Some(slot) => slot.1 = value,
            None => labels.push((kv.key.clone(), value)),
        }
    }
}

/// An explicit-bounds histogram point as buckets: its bounds must be
/// finite and ascending, its counts one more than its bounds (or none)
/// and add up to its count. A missing sum is 0.
fn explicit_buckets(p: &HistogramDataPoint) -> Result<Buckets64, Reject> {
    let sum = p.sum.unwrap_or(0.0);
    if p.bucket_counts.is_empty() {
        return Ok(Buckets64 {
            count: p.count as f64,
            sum,
            ..Buckets64::default()
        });
    }
    let ascending = p.explicit_bounds.windows(2).all(|w| w[0] < w[1]);
    let total = p.bucket_counts.iter().try_fold(0u64, |a, c| a.checked_add(*c));
    if p.bucket_counts.len() != p.explicit_bounds.len() + 1
        || !ascending
        || p.explicit_bounds.iter().any(|b| !b.is_finite())
        || total != Some(p.count)
    {
        return Err(Reject::Buckets);
    }
    Ok(Buckets64 {
        bounds: p.explicit_bounds.clone(),
        counts: p.bucket_counts[..p.explicit_bounds.len()].iter().map(|c| *c as f64).collect(),
        count: p.count as f64,
        sum,
    })
}

/// An exponential histogram point as explicit buckets. With
/// `base = 2^(2^-scale)`, positive bucket `index` holds values in
/// `(base^index, base^(index+1)]`, so its upper bound is `base^(index+1)`;
/// negative bucket `index` holds `[-base^(index+1), -base^index)`, upper
/// bound `-base^index`; the zero bucket's upper bound is `zero_threshold`.
/// Bounds come out ascending: negative buckets from the highest index
/// down, the zero bucket (when it counted anything), positive buckets up.
/// A bound that does not fit a finite f64, or that is not above the one
/// before, gives its count to the next bucket.
fn exponential_buckets(p: &ExponentialHistogramDataPoint) -> Result<Buckets64, Reject> {
    if !SCALES.contains(&p.scale) {
        return Err(Reject::Scale);
    }
    let empty = Buckets::default();
    let positive = p.positive.as_ref().unwrap_or(&empty);
    let negative = p.negative.as_ref().unwrap_or(&empty);
    if positive.bucket_counts.len() + negative.bucket_counts.len() > MAX_EXPONENTIAL_BUCKETS {
        return Err(Reject::Buckets);
    }
    let total = positive
        .bucket_counts
        .iter()
        .chain(&negative.bucket_counts)
        .try_fold(p.zero_count, |a, c| a.checked_add(*c));
    if total != Some(p.count) {
        return Err(Reject::Buckets);
    }
    // base^i = 2^(i · 2^-scale); i · 2^-scale is exact in f64.
    let step = (-f64::from(p.scale)).exp2();
    let power = |index: i64| (index as f64 * step).exp2();
    let mut raw: Vec<(f64, u64)> = Vec::with_capacity(positive.bucket_counts.len() + negative.bucket_counts.len() + 1);
    for (k, c) in negative.bucket_counts.iter().enumerate().rev() {
        raw.push((-power(i64::from(negative.offset) + k as i64), *c));
    }
    if p.zero_count > 0 {
        raw.push((p.zero_threshold.abs(), p.zero_count));
    }
    for (k, c) in positive.bucket_counts.iter().enumerate() {
        raw.push((power(i64::from(positive.offset) + k as i64 + 1), *c));
    }
    let mut out = Buckets64 {
        count: p.count as f64,
        sum: p.sum.unwrap_or(0.0),
        ..Buckets64::default()
    };
    let mut carry = 0.0;
    for (bound, count) in raw {
        let fits = bound.is_finite() && out.bounds.last().is_none_or(|last| bound > *last);
        if !fits {
            carry += count as f64;
            continue;
        }
        out.bounds.push(bound);
        out.counts.push(count as f64 + carry);
        carry = 0.0;
    }
    Ok(out)
}

/// Data points in a request.
pub(crate) fn point_count(request: &ExportMetricsServiceRequest) -> usize {
    request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(points_of)
        .sum()
}

/// Data points in a metric.
fn points_of(metric: &Metric) -> usize {
    match &metric.data {
        None => 0,
        Some(MetricData::Gauge(g)) => g.data_points.len(),
        Some(MetricData::Sum(s)) => s.data_points.len(),
        Some(MetricData::Histogram(h)) => h.data_points.len(),
        Some(MetricData::ExponentialHistogram(h)) => h.data_points.len(),
        Some(MetricData::Summary(s)) => s.data_points.len(),
    }
}

// --- samples back into a request (the sink) ----------------------------------

/// Groups metric samples into one export request: one `ResourceMetrics`
/// per distinct resource, one `ScopeMetrics` per scope, one `Metric` per
/// name, kind, unit and description. Counters become monotonic
/// cumulative Sums, gauges and sets Gauges, histograms cumulative
/// Histograms, summaries Summaries.
#[derive(Default)]
pub(crate) struct MetricsBuilder {
    resources: Vec<ResourceMetrics>,
    /// Resource (as its JSON text) to its index in `resources`.
    by_resource: HashMap<String, usize>,
    points: usize,
}

impl MetricsBuilder {
    /// Adds one event of a metric batch; `false` (and nothing added) when
    /// it is not a sample.
    pub(crate) fn push(&mut self, event: &[u8]) -> bool {
        let Ok(sample) = Sample::parse(event) else { return false };
        let Ok(Json::Object(o)) = serde_json::from_slice::<Json>(event) else {
            return false;
        };
        let text = |k: &str| o.get(k).and_then(Json::as_str).unwrap_or_default().to_owned();
        let (unit, description) = (text("unit"), text("description"));
        let attributes: Vec<KeyValue> = sample
            .labels
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: Some(AnyValue {
                    value: Some(Value::String(v.to_string())),
                }),
            })
            .collect();
        let time_unix_nano = millis_to_nanos(sample.timestamp_ms);
        let start_time_unix_nano = o.get("start_timestamp_ms").and_then(Json::as_i64).map_or(0, millis_to_nanos);
        let number = |v: f64| NumberDataPoint {
            attributes: attributes.clone(),
            start_time_unix_nano,
            time_unix_nano,
            value: Some(number_value(v)),
            flags: 0,
        };
        let count = sample.count.unwrap_or(0.0);
        let sum = sample.sum.unwrap_or(0.0);
        let data = match sample.kind {
            MetricKind::Counter => MetricData::Sum(Sum {
                data_points: vec![number(sample.value.unwrap_or(0.0))],
                aggregation_temporality: TEMPORALITY_CUMULATIVE,
                is_monotonic: true,
            }),
            MetricKind::Gauge | MetricKind::Set => MetricData::Gauge(Gauge {
                data_points: vec![number(sample.value.unwrap_or(0.0))],
            }),
            MetricKind::Histogram => {
                let mut bucket_counts = Vec::with_capacity(sample.buckets.len() + 1);
                let mut below = 0.0;
                for b in &sample.buckets {
                    bucket_counts.push(to_count(b.count - below));
                    below = b.count;
                }
                bucket_counts.push(to_count(count - below));
                MetricData::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        attributes: attributes.clone(),
                        start_time_unix_nano,
                        time_unix_nano,
                        count: to_count(count),
                        sum: Some(sum),
                        bucket_counts,
                        explicit_bounds: sample.buckets.iter().map(|b| b.le).collect(),
                        flags: 0,
                        min: None,
                        max: None,
                    }],
                    aggregation_temporality: TEMPORALITY_CUMULATIVE,
                })
            }
            MetricKind::Summary => MetricData::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: attributes.clone(),
                    start_time_unix_nano,
                    time_unix_nano,
                    count: to_count(count),
                    sum,
                    quantile_values: sample
                        .quantiles
                        .iter()
                        .map(|q| ValueAtQuantile {
                            quantile: q.quantile,
                            value: q.value,
                        })
                        .collect(),
                    flags: 0,
                }],
            }),
        };
        self.add(&o, &sample.name, unit, description, data);
        self.points += 1;
        true
    }

    fn add(&mut self, o: &Map<String, Json>, name: &str, unit: String, description: String, data: MetricData) {
        let key = resource_key(o);
        let r = match self.by_resource.get(&key) {
            Some(r) => *r,
            None => {
                self.resources.push(ResourceMetrics {
                    resource: Some(event_resource(o)),
                    scope_metrics: Vec::new(),
                    schema_url: String::new(),
                });
                self.by_resource.insert(key, self.resources.len() - 1);
                self.resources.len() - 1
            }
        };
        let scope = event_scope(o);
        let scopes = &mut self.resources[r].scope_metrics;
        let s = match scopes.iter().position(|s| s.scope.as_ref() == Some(&scope)) {
            Some(s) => s,
            None => {
                scopes.push(ScopeMetrics {
                    scope: Some(scope),
                    metrics: Vec::new(),
                    schema_url: String::new(),
                });
                scopes.len() - 1
            }
        };
        let metrics = &mut scopes[s].metrics;
        let same = |m: &&mut Metric| {
            m.name == name
                && m.unit == unit
                && m.description == description
                && m.data.as_ref().map(std::mem::discriminant) == Some(std::mem::discriminant(&data))
        };
        match metrics.iter_mut().find(same) {
            Some(m) => match (m.data.as_mut(), data) {
                (Some(MetricData::Sum(a)), MetricData::Sum(b)) => a.data_points.extend(b.data_points),
                (Some(MetricData::Gauge(a)), MetricData::Gauge(b)) => a.data_points.extend(b.data_points),
                (Some(MetricData::Histogram(a)), MetricData::Histogram(b)) => a.data_points.extend(b.data_points),
                (Some(MetricData::Summary(a)), MetricData::Summary(b)) => a.data_points.extend(b.data_points),
                _ => {}
            },
            None => metrics.push(Metric {
                name: name.to_owned(),
                description,
                unit,
                data: Some(data),
                metadata: Vec::new(),
            }),
        }
    }

    /// Data points added so far.
    pub(crate) fn len(&self) -> usize {
        self.points
    }

    /// The request, leaving the builder empty.
    pub(crate) fn take(&mut self) -> ExportMetricsServiceRequest {
        self.by_resource.clear();
        self.points = 0;
        ExportMetricsServiceRequest {
            resource_metrics: std::mem::take(&mut self.resources),
        }
    }
}

fn millis_to_nanos(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

/// A whole number within f64's exact integers goes as an integer, any
/// other as a double.
fn number_value(v: f64) -> NumberValue {
    if v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
        NumberValue::AsInt(v as i64)
    } else {
        NumberValue::AsDouble(v)
    }
}

fn to_count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::{InstrumentationScope, Resource};

    fn kv(key: &str, v: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::String(v.into())),
            }),
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "checkout"), kv("service.version", "1.4.2")],
                    dropped_attributes_count: 0,
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "app".into(),
                        ..Default::default()
                    }),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn sum(name: &str, monotonic: bool, temporality: i32, values: &[(&str, i64)]) -> Metric {
        Metric {
            name: name.into(),
            data: Some(MetricData::Sum(Sum {
                data_points: values
                    .iter()
                    .map(|(route, v)| NumberDataPoint {
                        attributes: vec![kv("route", route)],
                        time_unix_nano: 1_780_000_000_123_000_000,
                        start_time_unix_nano: 1_780_000_000_000_000_000,
                        value: Some(NumberValue::AsInt(*v)),
                        flags: 0,
                    })
                    .collect(),
                aggregation_temporality: temporality,
                is_monotonic: monotonic,
            })),
            ..Default::default()
        }
    }

    fn samples(req: &ExportMetricsServiceRequest, deltas: &mut DeltaSeries) -> (Vec<Json>, Written) {
        let mut out = Vec::new();
        let w = write_samples(req, &Fragment::default(), deltas, 5, &mut out);
        let v = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                assert!(Sample::parse(l).is_ok(), "{}", String::from_utf8_lossy(l));
                serde_json::from_slice(l).unwrap()
            })
            .collect();
        (v, w)
    }

    fn deltas() -> DeltaSeries {
        DeltaSeries::new(100, Duration::from_secs(300))
    }

    #[test]
    fn sums_become_counters_or_gauges_and_deltas_add_up_per_series() {
        let mut d = deltas();
        let req = request(vec![
            sum("hits", true, TEMPORALITY_CUMULATIVE, &[("/a", 7)]),
            sum("queue", false, TEMPORALITY_CUMULATIVE, &[("/a", -3)]),
            sum("bytes", true, TEMPORALITY_DELTA, &[("/a", 10), ("/b", 1)]),
        ]);
        let (got, w) = samples(&req, &mut d);
        assert_eq!(w.samples, 4);
        assert_eq!(got[0]["kind"], "counter");
        assert_eq!(got[0]["value"], 7);
        assert_eq!(got[0]["labels"], serde_json::json!({"route": "/a"}));
        assert_eq!(got[0]["timestamp_ms"], 1_780_000_000_123i64);
        assert_eq!(got[0]["start_timestamp_ms"], 1_780_000_000_000i64);
        assert_eq!(got[0]["release"]["version"], "1.4.2");
        assert_eq!(got[0]["process"]["service"], "checkout");
        assert_eq!(got[0]["scope"]["name"], "app");
        assert_eq!(got[1]["kind"], "gauge");
        assert_eq!(got[1]["value"], -3);
        // The second export of the delta counter adds to the first.
        let (again, _) = samples(&request(vec![sum("bytes", true, TEMPORALITY_DELTA, &[("/a", 5)])]), &mut d);
        assert_eq!(again[0]["value"], 15);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn delta_series_past_the_limit_are_rejected_and_reported() {
        let mut d = DeltaSeries::new(1, Duration::from_secs(300));
        let req = request(vec![sum("bytes", true, TEMPORALITY_DELTA, &[("/a", 1), ("/b", 2), ("/a", 3)])]);
        let (got, w) = samples(&req, &mut d);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["value"], 4);
        assert_eq!(w.rejected_total(), 1);
        assert!(w.message().contains("max_delta_series"), "{}", w.message());
    }

    #[test]
    fn exponential_buckets_become_explicit_bounds_at_powers_of_the_base() {
        // scale 1: base √2. Positive indexes 0, 1, 2 → bounds √2, 2, 2√2;
        // negative index 0 → bound -1; zero bucket at its threshold.
        let p = ExponentialHistogramDataPoint {
            count: 10,
            sum: Some(7.5),
            scale: 1,
            zero_count: 1,
            zero_threshold: 0.0,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![2, 0, 4],
            }),
            negative: Some(Buckets {
                offset: 0,
                bucket_counts: vec![3],
            }),
            ..Default::default()
        };
        let b = exponential_buckets(&p).unwrap();
        let r2 = std::f64::consts::SQRT_2;
        assert_eq!(b.bounds, vec![-1.0, 0.0, r2, 2.0, 2.0 * r2]);
        assert_eq!(b.cumulative(), vec![3.0, 4.0, 6.0, 6.0, 10.0]);
        assert_eq!((b.count, b.sum), (10.0, 7.5));
        // Counts that do not add up, or a scale out of range, are refused.
        assert_eq!(
            exponential_buckets(&ExponentialHistogramDataPoint { count: 9, ..p.clone() }),
            Err(Reject::Buckets)
        );
        assert_eq!(
            exponential_buckets(&ExponentialHistogramDataPoint { scale: 21, ..p }),
            Err(Reject::Scale)
        );
    }

    #[test]
    fn histograms_keep_their_buckets_and_bad_ones_are_rejected() {
        let good = HistogramDataPoint {
            count: 6,
            sum: Some(41.5),
            bucket_counts: vec![1, 2, 3],
            explicit_bounds: vec![1.0, 10.0],
            ..Default::default()
        };
        let bad = HistogramDataPoint {
            bucket_counts: vec![1, 2],
            ..good.clone()
        };
        let req = request(vec![Metric {
            name: "lat".into(),
            unit: "ms".into(),
            data: Some(MetricData::Histogram(Histogram {
                data_points: vec![good, bad],
                aggregation_temporality: TEMPORALITY_CUMULATIVE,
            })),
            ..Default::default()
        }]);
        let (got, w) = samples(&req, &mut deltas());
        assert_eq!(got.len(), 1);
        assert_eq!(w.rejected[Reject::Buckets as usize], 1);
        assert_eq!(
            got[0]["buckets"],
            serde_json::json!([{"le": 1, "count": 1}, {"le": 10, "count": 3}])
        );
        assert_eq!((got[0]["count"].clone(), got[0]["sum"].clone()), (6.into(), 41.5.into()));
        assert_eq!(got[0]["unit"], "ms");
        // Timestamp 0: the time it arrived.
        assert_eq!(got[0]["timestamp_ms"], 5);
    }

    #[test]
    fn samples_go_back_to_the_same_metrics() {
        let req = request(vec![
            sum("hits", true, TEMPORALITY_CUMULATIVE, &[("/a", 7), ("/b", 9)]),
            Metric {
                name: "lat".into(),
                unit: "ms".into(),
                description: "latency".into(),
                data: Some(MetricData::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        attributes: vec![kv("route", "/a")],
                        time_unix_nano: 1_780_000_000_123_000_000,
                        count: 6,
                        sum: Some(41.5),
                        bucket_counts: vec![1, 2, 3],
                        explicit_bounds: vec![1.0, 10.0],
                        ..Default::default()
                    }],
                    aggregation_temporality: TEMPORALITY_CUMULATIVE,
                })),
                ..Default::default()
            },
            Metric {
                name: "temp".into(),
                data: Some(MetricData::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        time_unix_nano: 1_780_000_000_123_000_000,
                        value: Some(NumberValue::AsDouble(21.5)),
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            },
        ]);
        let mut out = Vec::new();
        write_samples(&req, &Fragment::default(), &mut deltas(), 5, &mut out);
        let mut b = MetricsBuilder::default();
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            assert!(b.push(line));
        }
        assert!(!b.push(b"{\"message\":\"not a sample\"}"));
        assert_eq!(b.len(), 4);
        let back = b.take();
        let norm = |r: &ExportMetricsServiceRequest| {
            let mut r = r.clone();
            for rm in &mut r.resource_metrics {
                if let Some(res) = &mut rm.resource {
                    res.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            r
        };
        assert_eq!(norm(&back), norm(&req));
    }
}
