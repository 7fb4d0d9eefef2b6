//! Metric events: the sample schema every metric batch carries
//! ([`sample`]), and the aggregation with a series limit that metric
//! sources feed ([`aggregate`]). Sources (statsd) and sinks (remote write)
//! build on these; this floor knows neither.

pub mod aggregate;
mod canonical;
pub mod sample;

pub use aggregate::{AggregateConfig, Aggregator, FlushStats, Outcome, Update};
pub use sample::{MetricKind, Sample, SampleError, SampleValue};

use prometheus::{IntCounterVec, IntGaugeVec};
use std::sync::OnceLock;

use crate::telemetry::{counter_vec, gauge_vec};

/// Self-metrics of metric sources, with fixed names across source types.
pub(crate) struct MetricSourceMetrics {
    /// `sluice_metric_lines_invalid_total{source,reason}`.
    pub(crate) invalid: IntCounterVec,
    /// `sluice_metric_updates_total{source}`.
    pub(crate) updates: IntCounterVec,
    /// `sluice_metric_series{source}`.
    pub(crate) series: IntGaugeVec,
    /// `sluice_metric_series_overflow_total{source}`.
    pub(crate) overflow: IntCounterVec,
    /// `sluice_metric_updates_dropped_total{source,reason}`.
    pub(crate) dropped: IntCounterVec,
    /// `sluice_metric_series_expired_total{source}`.
    pub(crate) expired: IntCounterVec,
}

/// The metric sources' self-metrics.
pub(crate) fn source_metrics() -> &'static MetricSourceMetrics {
    static M: OnceLock<MetricSourceMetrics> = OnceLock::new();
    M.get_or_init(|| MetricSourceMetrics {
        invalid: counter_vec(
            "sluice_metric_lines_invalid_total",
            "Metric lines that could not be read, by reason; they are skipped.",
            &["source", "reason"],
        ),
        updates: counter_vec(
            "sluice_metric_updates_total",
            "Metric updates (values of metric lines) applied to the aggregation.",
            &["source"],
        ),
        series: gauge_vec(
            "sluice_metric_series",
            "Series a metric source aggregates now, overflow series included.",
            &["source"],
        ),
        overflow: counter_vec(
            "sluice_metric_series_overflow_total",
            "Updates counted in an __overflow__ series because the source's series limit was reached.",
            &["source"],
        ),
        dropped: counter_vec(
            "sluice_metric_updates_dropped_total",
            "Updates dropped: overflow series budget spent (series_limit) or a set full (set_limit).",
            &["source", "reason"],
        ),
        expired: counter_vec(
            "sluice_metric_series_expired_total",
            "Series removed because they were not updated for expire_after.",
            &["source"],
        ),
    })
}
