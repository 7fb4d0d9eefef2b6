//! SLI metrics derived from the events themselves: access logs already say
//! which requests failed and how long they took, so sluice counts them
//! where the logs are collected, per SLI, service and release.
//!
//! - [`config`]: the `[[sli]]` rules, validated at config time.
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

pub mod config;
mod exposition;
mod labels;
mod route;
mod rule;
mod series;
mod tap;
mod window;

pub use config::{Condition, LabelSource, LabelsConfig, LatencyConfig, LatencyUnit, Pattern, RoutePattern, Scalar, SliRule};
pub use exposition::{BURN_RATE, INCOMPLETE, LATENCY, MEMORY, OBJECTIVE, OVERFLOW, REQUESTS, SERIES, THRESHOLD};
pub use tap::SliTap;

use std::sync::Arc;

use crate::app::Extensions;

/// Adds a tap for `rules` (if there are any) to `ext`.
pub fn extend(ext: &mut Extensions, rules: &[SliRule]) {
    if rules.is_empty() {
        return;
    }
    ext.taps.push(Arc::new(SliTap::new(rules)));
}
