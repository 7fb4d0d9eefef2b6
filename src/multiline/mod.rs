//! Multiline: lines that belong together (a stack trace) become one event,
//! per stream, before decode wraps each line. See docs/multiline.md.

pub(crate) mod config;
pub(crate) mod metrics;
mod presets;
mod rules;
pub(crate) mod stage;

pub(crate) use config::MultilineConfig;
pub(crate) use stage::Multiline;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decode::cri::CriBatch;
use crate::decode::Decoder;
use crate::enrich::SourceContext;
use crate::event::BatchBuilder;
use crate::framing::Lines;
use crate::pipeline::{PipelineClosed, SourceOutput};
use crate::telemetry::metrics as core_metrics;

/// The multiline stage of a line stream without offsets (stdin, a command's
/// stdout or stderr, a connection), in front of the pipeline.
#[derive(Debug)]
pub(crate) struct LineStage {
    stage: Multiline,
    source: Arc<str>,
}

/// A regrouped batch on its way to the decode pool: its size hint and its
/// decode.
type Decode = Box<dyn FnOnce(&mut Decoder, &mut BatchBuilder) + Send>;

impl LineStage {
    /// The stage for one stream of `source`.
    pub(crate) fn new(cfg: &Arc<config::Compiled>, source: Arc<str>) -> LineStage {
        LineStage {
            stage: Multiline::new(cfg.clone()),
            source,
        }
    }

    /// Regroups a chunk of lines; what is complete goes to the pipeline.
    pub(crate) async fn send(&mut self, out: &SourceOutput, lines: Lines, ctx: &Arc<SourceContext>) -> Result<(), PipelineClosed> {
        let batch = self.regroup(lines);
        self.queue(out, batch, ctx).await
    }

    /// [`LineStage::send`] from a thread outside the runtime.
    pub(crate) fn blocking_send(&mut self, out: &SourceOutput, lines: Lines, ctx: &Arc<SourceContext>) -> Result<(), PipelineClosed> {
        let batch = self.regroup(lines);
        tokio::runtime::Handle::current().block_on(self.queue(out, batch, ctx))
    }

    /// Sends groups that waited past the timeout (all of them at the end
    /// of the stream, with `end`).
    pub(crate) async fn flush(&mut self, out: &SourceOutput, ctx: &Arc<SourceContext>, end: bool) -> Result<(), PipelineClosed> {
        let batch = self.stage.take_expired(Instant::now(), end);
        match batch {
            Some(b) => self.queue(out, b, ctx).await,
            None => Ok(()),
        }
    }

    /// [`LineStage::flush`] from a thread outside the runtime.
    pub(crate) fn blocking_flush(&mut self, out: &SourceOutput, ctx: &Arc<SourceContext>, end: bool) -> Result<(), PipelineClosed> {
        tokio::runtime::Handle::current().block_on(self.flush(out, ctx, end))
    }

    /// How long until an open group times out; `None` when none is open.
    pub(crate) fn next_timeout(&self) -> Option<Duration> {
        self.stage.next_timeout(Instant::now())
    }

    fn regroup(&mut self, lines: Lines) -> CriBatch {
        if lines.dropped > 0 {
            core_metrics()
                .events_dropped
                .with_label_values(&[&self.source, "line_too_long"])
                .inc_by(lines.dropped);
        }
        let batch = Multiline::records_of(&lines, 0);
        drop(lines);
        self.stage.regroup(batch, Instant::now())
    }

    async fn queue(&mut self, out: &SourceOutput, batch: CriBatch, ctx: &Arc<SourceContext>) -> Result<(), PipelineClosed> {
        metrics::record(&self.source, self.stage.take_stats());
        if batch.records.is_empty() {
            crate::framing::recycle(batch.chunk);
            return Ok(());
        }
        let (hint, decode) = decode_of(batch, ctx);
        out.send_decoded(ctx.clone(), None, hint, decode).await
    }
}

/// The size hint and decode of a regrouped batch.
pub(crate) fn decode_of(batch: CriBatch, ctx: &Arc<SourceContext>) -> (usize, Decode) {
    let hint = batch.payload_bytes() + batch.records.len() * (ctx.fragment.spliced_len() + 64);
    let ctx = ctx.clone();
    let decode = Box::new(move |d: &mut Decoder, o: &mut BatchBuilder| {
        batch.decode(d, &ctx.fragment, o);
        crate::framing::recycle(batch.chunk);
    });
    (hint, decode)
}
