//! SLI metrics derived from the events themselves: access logs already say
//! which requests failed and how long they took, so sluice counts them
//! where the logs are collected, per SLI, service and release.
//!
//! - [`config`]: the `[[sli]]` rules, validated at config time.
//! - [`log_metrics`]: the `[[metrics]]` rules (log-to-metric counters,
//!   gauges and histograms from any condition), judged by the same tap
//!   into the same series tables.
//! - `rule`: rules compiled against the fields the decoder reads for them.
//! - `labels` and `route`: label values, with route normalisation.
//! - `series`: the per-SLI series table and its cardinality guard.
//! - `window`: fixed-memory sliding windows for burn rates.
//! - [`SliTap`]: the [`crate::pipeline::BatchTap`]: it judges each batch on
//!   the decode pool into per-series counts and merges them once per batch;
//!   `exposition` renders the result on `/metrics`.
//!
//! Counts are exact within a process: every batch is judged once and merged
//! once, in order, on its source's fan-out task, before it reaches any sink.

pub(crate) mod config;
mod exposition;
mod labels;
pub(crate) mod log_metrics;
mod route;
mod rule;
mod series;
mod tap;
mod window;

pub(crate) use config::SliRule;
pub(crate) use log_metrics::MetricRule;
pub use tap::SliTap;

use std::sync::Arc;

use crate::pipeline::BatchTap;

/// The tap that judges the SLI `rules` and the `[[metrics]]` rules, if
/// there are any: with neither, no tap, and no per-event work.
pub(crate) fn tap(rules: &[SliRule], metrics: &[MetricRule]) -> Option<Arc<dyn BatchTap>> {
    (!rules.is_empty() || !metrics.is_empty()).then(|| Arc::new(SliTap::with_metrics(rules, metrics)) as Arc<dyn BatchTap>)
}
