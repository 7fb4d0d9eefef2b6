//! `type = "blackhole"`: counts and acknowledges, delivers nowhere. For
//! benchmarks and for measuring the pipeline without a destination.

use serde::Deserialize;

use super::{SinkComponent, SinkCx, SinkError};
use crate::buffer::QueueReceiver;
use crate::config::{ConfigError, Validate};
use crate::event::AckOutcome;
use crate::pipeline::Task;
use crate::telemetry::metrics;

/// Settings of the blackhole sink.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlackholeConfig {
    /// Log a summary of what was received at exit.
    pub(crate) print_summary: bool,
}

/// Serde checks everything the blackhole has.
impl Validate for BlackholeConfig {
    fn validate(&self, _path: &str, _errors: &mut Vec<ConfigError>) {}
}

impl SinkComponent for BlackholeConfig {
    /// Consumes the queue.
    async fn build(&self, cx: SinkCx, mut input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        let print_summary = self.print_summary;
        Ok(Box::pin(async move {
            let events = metrics().sink_events.with_label_values(&[&cx.name]);
            let bytes = metrics().sink_bytes.with_label_values(&[&cx.name]);
            let (mut n, mut b) = (0u64, 0u64);
            while let Some(item) = input.recv().await {
                n += item.batch.len() as u64;
                b += item.batch.byte_len() as u64;
                events.inc_by(item.batch.len() as u64);
                bytes.inc_by(item.batch.byte_len() as u64);
                item.batch.acknowledge(AckOutcome::Delivered);
            }
            if print_summary {
                tracing::info!(sink = %cx.name, events = n, bytes = b, "blackhole summary");
            }
            Ok(())
        }))
    }
}
