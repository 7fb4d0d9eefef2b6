//! `type = "internal_metrics"`: sluice's own `/metrics` registry (its
//! self-metrics and the SLI series: request and error counters, latency
//! histograms, burn rates) as metric events, every `interval`, so they can
//! leave through a metric sink (remote write, the exporter) and a fleet
//! needs no scrape of every agent.

use prometheus::proto::{MetricFamily, MetricType};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{SourceComponent, SourceCx, SourceError};
use crate::config::{duration, ConfigError, Validate};
use crate::enrich::{Fragment, SourceContext};
use crate::event::{BatchBuilder, EventKind, FieldSet};
use crate::metrics::sample::{write_sample, SampleValue};
use crate::pipeline::Task;
use crate::telemetry::metrics;

/// Settings of the internal metrics source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InternalMetricsConfig {
    /// How often the registry is read.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub(crate) interval: Duration,
    /// Only families whose name starts with one of these (all when empty),
    /// e.g. `["sluice_sli_"]` for the SLI series alone.
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
}

fn default_interval() -> Duration {
    Duration::from_secs(15)
}

impl Validate for InternalMetricsConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.interval < Duration::from_millis(100) {
            errors.push(ConfigError::at(path, "interval", "must be at least 100ms"));
        }
    }
}

impl SourceComponent for InternalMetricsConfig {
    /// Metric samples.
    fn produces(&self) -> EventKind {
        EventKind::Metric
    }

    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let cfg = self.clone();
        Ok(every_interval(cx, "internal_metrics", self.interval, move |context| {
            let families = metrics().registry.gather();
            let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 64 * 1024, 256);
            for f in families
                .iter()
                .filter(|f| cfg.prefixes.is_empty() || cfg.prefixes.iter().any(|p| f.name().starts_with(p.as_str())))
            {
                write_family(f, timestamp_ms, &context.fragment, &mut out);
            }
            std::future::ready(Some(out))
        }))
    }
}

/// A metric source's task: every `interval` until shutdown, `collect`
/// builds a batch of samples (`None` when it could not), and a batch that
/// holds any is sent on. `kind` names the source type in its context.
pub(crate) fn every_interval<F, Fut>(cx: SourceCx, kind: &'static str, interval: Duration, mut collect: F) -> Task<SourceError>
where
    F: FnMut(Arc<SourceContext>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<BatchBuilder>> + Send,
{
    let context = Arc::new(SourceContext::new(cx.name.clone(), kind, String::new(), cx.enrich.metadata(None)));
    let mut shutdown = cx.shutdown.clone();
    Box::pin(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(()),
                _ = ticks.tick() => {}
            }
            let Some(out) = collect(context.clone()).await else { continue };
            if out.is_empty() {
                continue;
            }
            let batch = out.build(context.clone(), SystemTime::now()).with_kind(EventKind::Metric);
            if cx.output.send_batch(batch).await.is_err() {
                return Ok(());
            }
        }
    })
}

/// Writes one sample per series of `f` into `out`.
fn write_family(f: &MetricFamily, timestamp_ms: i64, metadata: &Fragment, out: &mut BatchBuilder) {
    let mut bounds = Vec::new();
    let mut cumulative = Vec::new();
    let mut quantiles = Vec::new();
    for m in f.get_metric() {
        let labels = m.get_label().iter().map(|l| (l.name(), l.value()));
        let value = match f.get_field_type() {
            MetricType::COUNTER => SampleValue::Counter(m.get_counter().get_value()),
            MetricType::GAUGE => SampleValue::Gauge(m.get_gauge().get_value()),
            // Nothing sluice registers is untyped.
            MetricType::UNTYPED => continue,
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                bounds.clear();
                cumulative.clear();
                for b in h.get_bucket().iter().filter(|b| b.upper_bound().is_finite()) {
                    bounds.push(b.upper_bound());
                    cumulative.push(b.cumulative_count() as f64);
                }
                SampleValue::Histogram {
                    bounds: &bounds,
                    cumulative: &cumulative,
                    count: h.get_sample_count() as f64,
                    sum: h.get_sample_sum(),
                }
            }
            MetricType::SUMMARY => {
                let s = m.get_summary();
                quantiles.clear();
                quantiles.extend(s.get_quantile().iter().map(|q| (q.quantile(), q.value())));
                SampleValue::Summary {
                    quantiles: &quantiles,
                    count: s.sample_count() as f64,
                    sum: s.sample_sum(),
                }
            }
        };
        write_sample(out.buffer(), f.name(), labels, timestamp_ms, &value, metadata);
        out.finish_event();
    }
}
