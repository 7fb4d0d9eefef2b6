//! `events = "metrics"`: each Kafka message is one metric sample JSON
//! object, as an agent's Kafka sink wrote it for a metric batch; a
//! partition's batch of messages becomes one metric batch for the metric
//! sinks (remote write, the exporter).
//!
//! A sample is copied as it is ([`copy_sample`]), members and numbers
//! exact, with the agent's metadata members: they win over the
//! aggregator's, as on logs. A message that is not a sample (or was longer
//! than `max_event_bytes`) is skipped and counted in
//! `sluice_metric_lines_invalid_total{source,reason}` (`not_a_sample`,
//! `too_long`), and logged at most once per [`WARN_INTERVAL`]; its offset
//! is committed with the rest of its batch, so it is not read again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::enrich::SourceContext;
use crate::event::{Acknowledger, BatchBuilder, EventKind, FieldSet};
use crate::framing::LineSpan;
use crate::metrics::sample::{copy_sample, SampleError};
use crate::metrics::source_metrics;
use crate::pipeline::{PipelineClosed, SourceOutput};

/// Least time between two warnings about messages that are not samples: a
/// topic full of them must not flood the log (the counter has the total).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Reads partition batches of messages into metric batches.
pub(super) struct SampleReader {
    source: Arc<str>,
    /// `sluice_metric_lines_invalid_total{reason="not_a_sample"}`.
    not_a_sample: prometheus::IntCounter,
    /// `sluice_metric_lines_invalid_total{reason="too_long"}`.
    too_long: prometheus::IntCounter,
    /// When the last warning was logged; `None` before the first.
    last_warn: Option<Instant>,
    /// Messages skipped since the last warning.
    unreported: u64,
}

impl SampleReader {
    /// A reader for source `source`.
    pub(super) fn new(source: Arc<str>) -> SampleReader {
        let invalid = &source_metrics().invalid;
        SampleReader {
            not_a_sample: invalid.with_label_values(&[&*source, "not_a_sample"]),
            too_long: invalid.with_label_values(&[&*source, "too_long"]),
            source,
            last_warn: None,
            unreported: 0,
        }
    }

    /// Sends the samples among the messages (`spans` of `buf`) as one
    /// metric batch acknowledged through `ack`. With none among them, the
    /// batch is acknowledged at once, so its offsets move on.
    pub(super) async fn send(
        &mut self,
        buf: &[u8],
        spans: &[LineSpan],
        ctx: Arc<SourceContext>,
        ack: Acknowledger,
        output: &SourceOutput,
    ) -> Result<(), PipelineClosed> {
        let out = self.read(buf, spans);
        if out.is_empty() {
            ack.expect(0);
            return Ok(());
        }
        let batch = out.build(ctx, SystemTime::now()).with_kind(EventKind::Metric).with_ack(Some(ack));
        output.send_batch(batch).await
    }

    /// The samples among the messages, one event each; counts the rest.
    fn read(&mut self, buf: &[u8], spans: &[LineSpan]) -> BatchBuilder {
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), buf.len() + spans.len(), spans.len());
        let (mut long, mut bad) = (0u64, 0u64);
        let mut first: Option<SampleError> = None;
        for span in spans {
            if span.truncated {
                long += 1;
                continue;
            }
            let message = &buf[span.start as usize..][..span.len as usize];
            let mark = out.buffer().len();
            match copy_sample(message, out.buffer()) {
                Ok(()) => out.finish_event(),
                Err(e) => {
                    out.buffer().truncate(mark);
                    bad += 1;
                    first.get_or_insert(e);
                }
            }
        }
        if long > 0 {
            self.too_long.inc_by(long);
        }
        if bad > 0 {
            self.not_a_sample.inc_by(bad);
        }
        self.warn(long + bad, first);
        out
    }

    /// Logs skipped messages, at most once per [`WARN_INTERVAL`].
    fn warn(&mut self, skipped: u64, error: Option<SampleError>) {
        self.unreported += skipped;
        if self.unreported == 0 || self.last_warn.is_some_and(|t| t.elapsed() < WARN_INTERVAL) {
            return;
        }
        let reason = error.map_or_else(|| "longer than max_event_bytes".to_owned(), |e| e.to_string());
        tracing::warn!(source = %self.source, skipped = self.unreported, %reason,
            "Kafka messages that are not metric samples were skipped; sluice_metric_lines_invalid_total counts them");
        self.unreported = 0;
        self.last_warn = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(messages: &[&[u8]]) -> (Vec<u8>, Vec<LineSpan>) {
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for m in messages {
            spans.push(LineSpan {
                start: buf.len() as u32,
                len: m.len() as u32,
                truncated: false,
            });
            buf.extend_from_slice(m);
        }
        (buf, spans)
    }

    #[test]
    fn samples_become_events_and_other_messages_are_counted_by_reason() {
        let mut reader = SampleReader::new("kafka-samples-test".into());
        let good = br#"{"metric":"a","kind":"counter","labels":{},"timestamp_ms":1,"value":2}"#;
        let (buf, mut spans) = spans(&[good, b"{\"message\":\"a log\"}", b"\xff\xfe", good, good]);
        spans[4].truncated = true;
        let out = reader.read(&buf, &spans);
        assert_eq!(out.len(), 2);
        let invalid = &source_metrics().invalid;
        assert_eq!(invalid.with_label_values(&["kafka-samples-test", "not_a_sample"]).get(), 2);
        assert_eq!(invalid.with_label_values(&["kafka-samples-test", "too_long"]).get(), 1);
        let batch = out.build(
            Arc::new(SourceContext::new("k".into(), "kafka", String::new(), Default::default())),
            SystemTime::now(),
        );
        assert!(batch.events().all(|e| e == good), "copied byte for byte");
    }

    #[test]
    fn warnings_are_held_back_within_the_interval_but_counted() {
        let mut reader = SampleReader::new("kafka-warn-test".into());
        let (buf, spans) = spans(&[b"x"]);
        reader.read(&buf, &spans);
        assert_eq!(reader.unreported, 0, "the first one is logged at once");
        reader.read(&buf, &spans);
        reader.read(&buf, &spans);
        assert_eq!(reader.unreported, 2, "held back until the interval passes");
    }
}
