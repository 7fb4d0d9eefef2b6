//! Self-metrics of the multiline stage, registered on the global registry
//! the first time a source with `multiline` starts.

use prometheus::IntCounterVec;
use std::sync::OnceLock;

use super::stage::{Flush, MultilineStats};
use crate::telemetry::counter_vec;

/// The multiline metrics. Names are stable.
#[derive(Debug)]
pub(crate) struct MultilineMetrics {
    /// `sluice_multiline_groups_total{source}`: events made of more than
    /// one line.
    pub(crate) groups: IntCounterVec,
    /// `sluice_multiline_lines_joined_total{source}`: lines that joined a
    /// group after its first.
    pub(crate) joined: IntCounterVec,
    /// `sluice_multiline_flushes_total{source,reason}`: held events (groups
    /// and single lines) that left the stage, by reason: `start` (the next
    /// line did not continue it), `end_pattern`, `max_lines`, `max_bytes`,
    /// `timeout`, `end_of_stream`.
    pub(crate) flushes: IntCounterVec,
}

/// The multiline metrics, registered once.
pub(crate) fn multiline_metrics() -> &'static MultilineMetrics {
    static METRICS: OnceLock<MultilineMetrics> = OnceLock::new();
    METRICS.get_or_init(|| MultilineMetrics {
        groups: counter_vec(
            "sluice_multiline_groups_total",
            "Events the multiline stage made of more than one line.",
            &["source"],
        ),
        joined: counter_vec(
            "sluice_multiline_lines_joined_total",
            "Lines that joined a multiline group after its first.",
            &["source"],
        ),
        flushes: counter_vec(
            "sluice_multiline_flushes_total",
            "Held events that left the multiline stage, by reason (start, end_pattern, max_lines, max_bytes, timeout, end_of_stream).",
            &["source", "reason"],
        ),
    })
}

/// Adds a stage's counters to the metrics of `source` (once per batch).
pub(crate) fn record(source: &str, s: MultilineStats) {
    if s == MultilineStats::default() {
        return;
    }
    let m = multiline_metrics();
    if s.groups > 0 {
        m.groups.with_label_values(&[source]).inc_by(s.groups);
    }
    if s.joined > 0 {
        m.joined.with_label_values(&[source]).inc_by(s.joined);
    }
    for reason in Flush::ALL {
        let n = s.flushes[reason as usize];
        if n > 0 {
            m.flushes.with_label_values(&[source, reason.as_str()]).inc_by(n);
        }
    }
}
