//! `type = "prometheus_exporter"`: serves the newest sample of every series
//! it received for pull, in the Prometheus text format 0.0.4, on its own
//! address (`GET /metrics`).
//!
//! A batch is acknowledged as delivered once its samples are in the
//! exposition. Families are named as remote write names them (valid
//! Prometheus names), with `_total` added to counters that lack it, as the
//! exposition format's conventions ask; a set is exposed as a gauge. The
//! exposition is bounded: past `max_series` new series are dropped and
//! counted, and a series not updated for `expire_after` leaves it.
//! `external_labels` and `metadata_labels` add labels as remote write's
//! do (a label the sample has wins).

use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::metadata_labels::{validate_label_table, AddedLabels};
use super::prometheus_remote_write::encode::{float_label, label_name, metric_name};
use super::{SinkComponent, SinkCx, SinkError, SinkErrorKind};
use crate::buffer::QueueReceiver;
use crate::config::{duration, ConfigError, Validate};
use crate::event::{AckOutcome, EventKind};
use crate::metrics::{MetricKind, Sample};
use crate::pipeline::Task;
use crate::telemetry::{metrics, serve_http};

/// Settings of the exporter sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// Where `/metrics` is served (`0.0.0.0:9102`).
    pub(crate) address: SocketAddr,
    /// Series exposed at most; new ones past it are dropped and counted.
    #[serde(default = "default_max_series")]
    pub(crate) max_series: usize,
    /// A series not updated for this long leaves the exposition.
    #[serde(default = "default_expire_after", deserialize_with = "duration")]
    pub(crate) expire_after: Duration,
    /// Labels added to every series (a series' own label of the same name
    /// wins).
    #[serde(default)]
    pub(crate) external_labels: BTreeMap<String, String>,
    /// Labels from metadata: label name → dotted path, read in the
    /// sample's own metadata members (an OTLP resource's), else in the
    /// source's (`release = "release.version"`).
    #[serde(default)]
    pub(crate) metadata_labels: BTreeMap<String, String>,
}

fn default_max_series() -> usize {
    100_000
}

fn default_expire_after() -> Duration {
    Duration::from_secs(300)
}

impl Validate for ExporterConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.max_series == 0 {
            errors.push(ConfigError::at(path, "max_series", "must be at least 1"));
        }
        if self.expire_after.is_zero() {
            errors.push(ConfigError::at(path, "expire_after", "must be above 0"));
        }
        validate_label_table(path, "external_labels", &self.external_labels, errors);
        validate_label_table(path, "metadata_labels", &self.metadata_labels, errors);
    }
}

impl SinkComponent for ExporterConfig {
    /// Metric samples only.
    fn accepts(&self, kind: EventKind) -> bool {
        kind == EventKind::Metric
    }

    /// Binds the address (a bad one fails at start-up) and starts the sink.
    async fn build(&self, cx: SinkCx, mut input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        let exposition = Arc::new(Exposition::new(self.max_series, self.expire_after));
        let served = exposition.clone();
        let server = serve_http(self.address, move |_req| {
            let served = served.clone();
            async move {
                let mut r = hyper::Response::new(Full::new(Bytes::from(served.render(Instant::now()))));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
        })
        .await
        .map_err(|e| {
            SinkError::new(
                &cx.name,
                SinkErrorKind::Setup(format!("address: cannot listen on {}: {e}", self.address)),
            )
        })?;
        tracing::info!(sink = %cx.name, address = %server.local_addr, "serving metrics for pull");
        let m = metrics();
        let delivered = m.sink_events.with_label_values(&[&cx.name]);
        let dropped = m.events_dropped.with_label_values(&[&cx.name, "series_limit"]);
        let invalid = m.events_dropped.with_label_values(&[&cx.name, "not_a_metric"]);
        let added = AddedLabels::new(&self.external_labels, &self.metadata_labels);
        Ok(Box::pin(async move {
            let _server = server;
            while let Some(item) = input.recv().await {
                let batch = &item.batch;
                if batch.kind() != EventKind::Metric {
                    invalid.inc_by(batch.len() as u64);
                    batch.acknowledge(AckOutcome::Dropped);
                    continue;
                }
                let extra = added.of_batch(&batch.source);
                let labels = Labels {
                    extra: &extra,
                    added: &added,
                };
                let (kept, refused, bad) = exposition.update(batch.events(), &labels, Instant::now());
                delivered.inc_by(kept);
                dropped.inc_by(refused);
                invalid.inc_by(bad);
                batch.acknowledge(if refused + bad > 0 {
                    AckOutcome::Dropped
                } else {
                    AckOutcome::Delivered
                });
            }
            Ok(())
        }))
    }
}

/// What a batch adds to its samples' labels.
struct Labels<'a> {
    /// External labels and the source's metadata labels, by sanitised name.
    extra: &'a BTreeMap<String, String>,
    /// For the labels a sample's own metadata members give.
    added: &'a AddedLabels,
}

/// The newest value of one series.
#[derive(Debug, Clone)]
struct Entry {
    value: f64,
    count: f64,
    sum: f64,
    /// Histogram buckets or summary quantiles: (bound or quantile, value).
    points: Vec<(f64, f64)>,
    updated: Instant,
}

/// One family: a kind and its series by label set.
#[derive(Debug)]
struct Family {
    kind: MetricKind,
    series: BTreeMap<Vec<(String, String)>, Entry>,
}

/// The series served, bounded.
#[derive(Debug)]
pub(crate) struct Exposition {
    families: Mutex<BTreeMap<String, Family>>,
    max_series: usize,
    expire_after: Duration,
}

impl Exposition {
    fn new(max_series: usize, expire_after: Duration) -> Exposition {
        Exposition {
            families: Mutex::new(BTreeMap::new()),
            max_series,
            expire_after,
        }
    }

    /// Takes the samples of a batch; returns (kept, refused by the series
    /// limit, not samples).
    fn update<'a>(&self, events: impl Iterator<Item = &'a [u8]>, with: &Labels<'_>, now: Instant) -> (u64, u64, u64) {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total: usize = families.values().map(|f| f.series.len()).sum();
        let (mut kept, mut refused, mut bad) = (0, 0, 0);
        for event in events {
            let Ok(s) = Sample::parse(event) else {
                bad += 1;
                continue;
            };
            let mut name = metric_name(&s.name);
            if s.kind == MetricKind::Counter && !name.ends_with("_total") {
                name.push_str("_total");
            }
            let own = with.added.of_event(event, with.extra);
            let mut labels: BTreeMap<String, String> = own.unwrap_or_else(|| with.extra.clone());
            // The sample's own labels win over added ones.
            labels.extend(
                s.labels
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (label_name(k), v.to_string())),
            );
            let labels: Vec<(String, String)> = labels.into_iter().collect();
            let family = families.entry(name).or_insert_with(|| Family {
                kind: s.kind,
                series: BTreeMap::new(),
            });
            if family.kind != s.kind {
                // The newest kind of a name wins: its old series go.
                total -= family.series.len();
                family.series.clear();
                family.kind = s.kind;
            }
            if !family.series.contains_key(&labels) {
                if total >= self.max_series {
                    refused += 1;
                    continue;
                }
                total += 1;
            }
            let points = match s.kind {
                MetricKind::Histogram => s.buckets.iter().map(|b| (b.le, b.count)).collect(),
                MetricKind::Summary => s.quantiles.iter().map(|q| (q.quantile, q.value)).collect(),
                _ => Vec::new(),
            };
            family.series.insert(
                labels,
                Entry {
                    value: s.value.unwrap_or(0.0),
                    count: s.count.unwrap_or(0.0),
                    sum: s.sum.unwrap_or(0.0),
                    points,
                    updated: now,
                },
            );
            kept += 1;
        }
        families.retain(|_, f| !f.series.is_empty());
        (kept, refused, bad)
    }

    /// The text exposition, after removing expired series.
    fn render(&self, now: Instant) -> String {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        for f in families.values_mut() {
            f.series.retain(|_, e| now.saturating_duration_since(e.updated) < self.expire_after);
        }
        families.retain(|_, f| !f.series.is_empty());
        let mut out = String::new();
        for (name, f) in families.iter() {
            let kind = match f.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge | MetricKind::Set => "gauge",
                MetricKind::Histogram => "histogram",
                MetricKind::Summary => "summary",
            };
            let _ = writeln!(out, "# HELP {name} Metric events received by sluice.\n# TYPE {name} {kind}");
            for (labels, e) in &f.series {
                match f.kind {
                    MetricKind::Counter | MetricKind::Gauge | MetricKind::Set => line(&mut out, name, "", labels, None, e.value),
                    MetricKind::Histogram | MetricKind::Summary => {
                        let (suffix, key) = if f.kind == MetricKind::Histogram {
                            ("_bucket", "le")
                        } else {
                            ("", "quantile")
                        };
                        for (p, v) in &e.points {
                            line(&mut out, name, suffix, labels, Some((key, &float_label(*p))), *v);
                        }
                        if f.kind == MetricKind::Histogram {
                            line(&mut out, name, suffix, labels, Some(("le", "+Inf")), e.count);
                        }
                        line(&mut out, name, "_sum", labels, None, e.sum);
                        line(&mut out, name, "_count", labels, None, e.count);
                    }
                }
            }
        }
        out
    }
}

/// One sample line: `name{labels,extra} value`.
fn line(out: &mut String, name: &str, suffix: &str, labels: &[(String, String)], extra: Option<(&str, &str)>, value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    let all = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra);
    for (i, (k, v)) in all.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !labels.is_empty() || extra.is_some() {
        out.push('}');
    }
    out.push(' ');
    out.push_str(&float_label(value));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Fragment;
    use crate::metrics::sample::{write_sample, SampleValue};

    /// No added labels.
    fn none() -> Labels<'static> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        static NONE: std::sync::LazyLock<AddedLabels> = std::sync::LazyLock::new(AddedLabels::default);
        Labels {
            extra: &EMPTY,
            added: &NONE,
        }
    }

    fn sample(name: &str, labels: &[(&str, &str)], v: SampleValue<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        write_sample(&mut out, name, labels.iter().copied(), 1, &v, &Fragment::default());
        out
    }

    #[test]
    fn the_exposition_names_families_and_renders_every_kind() {
        let e = Exposition::new(100, Duration::from_secs(60));
        let bounds = [1.0, 10.0];
        let cum = [1.0, 2.0];
        let events = [
            sample("app.hits", &[("route", "/a\"b")], SampleValue::Counter(3.0)),
            sample(
                "app.lat",
                &[],
                SampleValue::Histogram {
                    bounds: &bounds,
                    cumulative: &cum,
                    count: 3.0,
                    sum: 12.5,
                },
            ),
            sample("users", &[], SampleValue::Set(2)),
            b"{\"message\":\"not a sample\"}".to_vec(),
        ];
        let now = Instant::now();
        assert_eq!(e.update(events.iter().map(|v| v.as_slice()), &none(), now), (3, 0, 1));
        let text = e.render(now);
        for want in [
            "# TYPE app_hits_total counter\napp_hits_total{route=\"/a\\\"b\"} 3\n",
            "# TYPE app_lat histogram\n",
            "app_lat_bucket{le=\"1\"} 1\napp_lat_bucket{le=\"10\"} 2\napp_lat_bucket{le=\"+Inf\"} 3\napp_lat_sum 12.5\napp_lat_count 3\n",
            "# TYPE users gauge\nusers 2\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(e.render(now + Duration::from_secs(61)), "", "expired series leave");
    }

    #[test]
    fn past_max_series_new_series_are_refused() {
        let e = Exposition::new(2, Duration::from_secs(60));
        let events: Vec<Vec<u8>> = (0..5)
            .map(|i| sample("x", &[("i", &i.to_string())], SampleValue::Gauge(1.0)))
            .collect();
        assert_eq!(e.update(events.iter().map(|v| v.as_slice()), &none(), Instant::now()), (2, 3, 0));
        assert_eq!(
            e.update(events[..1].iter().map(|v| v.as_slice()), &none(), Instant::now()),
            (1, 0, 0),
            "known series still update"
        );
    }

    #[test]
    fn metadata_labels_come_from_the_samples_own_members_else_the_source_and_its_own_labels_win() {
        let config: BTreeMap<String, String> = [("release", "release.version"), ("service", "process.service")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let external: BTreeMap<String, String> = [("cluster".to_string(), "eu1".to_string())].into();
        let added = AddedLabels::new(&external, &config);
        let source_meta = serde_json::json!({"release": {"version": "1.0"}, "process": {"service": "api"}});
        let source = crate::enrich::SourceContext::new(
            "otel".into(),
            "otlp",
            String::new(),
            source_meta.as_object().cloned().unwrap_or_default(),
        );
        let extra = added.of_batch(&source);
        let labels = Labels {
            extra: &extra,
            added: &added,
        };
        // An OTLP sample carries its resource's members beside its labels.
        let mut own = sample("orders", &[("route", "/a")], SampleValue::Counter(5.0));
        let close = own.iter().rposition(|b| *b == b'}').unwrap_or(own.len());
        own.splice(close..close, br#","release":{"version":"2.0"}"#.iter().copied());
        let plain = sample("orders", &[("route", "/b"), ("cluster", "mine")], SampleValue::Counter(1.0));
        let e = Exposition::new(100, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(e.update([own.as_slice(), plain.as_slice()].into_iter(), &labels, now), (2, 0, 0));
        let text = e.render(now);
        for want in [
            "orders_total{cluster=\"eu1\",release=\"2.0\",route=\"/a\",service=\"api\"} 5\n",
            "orders_total{cluster=\"mine\",release=\"1.0\",route=\"/b\",service=\"api\"} 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn a_reserved_label_name_is_refused_with_its_key_path() {
        let cfg: ExporterConfig =
            toml::from_str("address = \"127.0.0.1:0\"\nmetadata_labels = { __name__ = \"release.version\" }").unwrap();
        let mut errors = Vec::new();
        cfg.validate("sinks.pull", &mut errors);
        assert!(
            errors.iter().any(|e| e.to_string().contains("sinks.pull.metadata_labels.__name__")),
            "{errors:?}"
        );
    }
}
