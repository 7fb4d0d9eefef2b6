//! `type = "stdout"`: enriched NDJSON on standard output, one write per
//! batch.

use serde::Deserialize;
use std::io::Write;

use super::{SinkComponent, SinkCx, SinkError, SinkErrorKind};
use crate::buffer::QueueReceiver;
use crate::config::{ConfigError, Validate};
use crate::event::AckOutcome;
use crate::pipeline::Task;
use crate::telemetry::metrics;

/// Settings of the stdout sink (none yet; unknown keys are errors).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

/// Serde checks everything stdout has.
impl Validate for StdoutConfig {
    fn validate(&self, _path: &str, _errors: &mut Vec<ConfigError>) {}
}

impl SinkComponent for StdoutConfig {
    /// Writes on a blocking thread: a reader that stops reading blocks the
    /// write, the queue fills, and backpressure reaches the source.
    async fn build(&self, cx: SinkCx, mut input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        Ok(Box::pin(async move {
            let name = cx.name.clone();
            tokio::task::spawn_blocking(move || {
                let events = metrics().sink_events.with_label_values(&[&cx.name]);
                let bytes = metrics().sink_bytes.with_label_values(&[&cx.name]);
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                while let Some(item) = input.blocking_recv() {
                    let batch = &item.batch;
                    if let Err(e) = out.write_all(batch.ndjson()).and_then(|_| out.flush()) {
                        batch.acknowledge(AckOutcome::Abandoned);
                        let kind = if e.kind() == std::io::ErrorKind::BrokenPipe {
                            SinkErrorKind::OutputClosed
                        } else {
                            SinkErrorKind::Io {
                                action: "write to standard output",
                                error: e,
                            }
                        };
                        return Err(SinkError::new(&cx.name, kind));
                    }
                    events.inc_by(batch.len() as u64);
                    bytes.inc_by(batch.byte_len() as u64);
                    batch.acknowledge(AckOutcome::Delivered);
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(SinkError::new(&name, SinkErrorKind::Died(format!("writer thread failed: {e}")))))
        }))
    }
}
