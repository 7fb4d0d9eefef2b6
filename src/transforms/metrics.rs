//! Self-metrics of the transforms, with fixed names across types:
//! `sluice_transform_events_in_total{transform}`,
//! `sluice_transform_events_out_total{transform,output}` and
//! `sluice_transform_events_dropped_total{transform,reason}`. Counted once
//! per batch, never per event.

use prometheus::{IntCounter, IntCounterVec};
use std::sync::{Arc, OnceLock};

use crate::telemetry::counter_vec;

/// The metric families, registered on first use.
pub(crate) struct TransformMetrics {
    events_in: IntCounterVec,
    events_out: IntCounterVec,
    events_dropped: IntCounterVec,
    /// `sluice_transform_throttled_events_total{transform,key}`.
    pub(crate) throttled: IntCounterVec,
    /// `sluice_transform_deferred_events_total{transform,key}`.
    pub(crate) deferred: IntCounterVec,
}

impl TransformMetrics {
    /// The families.
    pub(crate) fn get() -> &'static TransformMetrics {
        static M: OnceLock<TransformMetrics> = OnceLock::new();
        M.get_or_init(|| TransformMetrics {
            events_in: counter_vec("sluice_transform_events_in_total", "Events a transform received.", &["transform"]),
            events_out: counter_vec(
                "sluice_transform_events_out_total",
                "Events a transform sent on, by output (the transform's name, or name.route).",
                &["transform", "output"],
            ),
            events_dropped: counter_vec(
                "sluice_transform_events_dropped_total",
                "Events a transform dropped, by reason (condition, sampled, throttled).",
                &["transform", "reason"],
            ),
            throttled: counter_vec(
                "sluice_transform_throttled_events_total",
                "Events a throttle dropped, by key (bounded by max_keys; the rest count as __overflow__).",
                &["transform", "key"],
            ),
            deferred: counter_vec(
                "sluice_transform_deferred_events_total",
                "Lines a throttle left on disk for a file reader to read after the window (a line may count more than once).",
                &["transform", "key"],
            ),
        })
    }
}

/// One transform's counters, looked up once when it is built.
pub(crate) struct NodeMetrics {
    name: Arc<str>,
    events_in: IntCounter,
    /// Per output, in output order.
    events_out: Vec<IntCounter>,
}

impl NodeMetrics {
    /// The counters of transform `name` with `outputs`.
    pub(crate) fn new(name: &str, outputs: &[Arc<str>]) -> NodeMetrics {
        let m = TransformMetrics::get();
        NodeMetrics {
            name: name.into(),
            events_in: m.events_in.with_label_values(&[name]),
            events_out: outputs.iter().map(|o| m.events_out.with_label_values(&[name, o])).collect(),
        }
    }

    /// One batch: `seen` events in, `out` per output; what went nowhere was
    /// dropped for `reason`.
    pub(crate) fn record<T>(&self, seen: usize, out: &[Vec<T>], reason: &str) {
        self.record_counts(seen, out.iter().map(Vec::len), reason);
    }

    /// [`TransformMetrics::record`] with the number of events per output.
    pub(crate) fn record_counts(&self, seen: usize, out: impl Iterator<Item = usize>, reason: &str) {
        self.events_in.inc_by(seen as u64);
        let mut sent = 0;
        for (counter, n) in self.events_out.iter().zip(out) {
            counter.inc_by(n as u64);
            sent += n;
        }
        if seen > sent {
            TransformMetrics::get()
                .events_dropped
                .with_label_values(&[&self.name, reason])
                .inc_by((seen - sent) as u64);
        }
    }
}
