//! Multiline: lines that belong together (a stack trace) become one event,
//! per stream, before decode wraps each line. See docs/multiline.md.

pub(crate) mod config;
mod docker;
pub(crate) mod metrics;
mod presets;
mod rules;
pub(crate) mod stage;

#[cfg(any(test, feature = "fuzzing"))]
use config::Mode;
pub(crate) use config::MultilineConfig;
pub(crate) use docker::docker_records;
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

/// Fuzzing entry (feature `fuzzing`): rules chosen by the first byte, the
/// rest framed into lines and handed over in pieces, with timeouts now and
/// then and the end of the stream last. Checks that lines leave in order,
/// none lost, none duplicated (joined by `\n`), within the bounds, and
/// that nothing stays open; returns the regrouped batches for decoding.
#[cfg(feature = "fuzzing")]
pub fn fuzz_multiline(data: &[u8]) -> Vec<CriBatch> {
    regroup_checked(data)
}

/// The body of [`fuzz_multiline`], also run by the unit tests on random
/// input.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn regroup_checked(data: &[u8]) -> Vec<CriBatch> {
    use crate::framing::{LineFramer, OverflowPolicy};
    let (&choice, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&piece, rest) = rest.split_first().unwrap_or((&1, &[]));
    let max_lines = 2 + usize::from(choice >> 4);
    let custom = |start: &str, condition: Option<&str>, mode: Mode| config::MultilineTable {
        start: Some(start.to_owned()),
        condition: condition.map(str::to_owned),
        mode: Some(mode),
        ..config::MultilineTable::default()
    };
    let mut table = match choice % 10 {
        0 => MultilineConfig::preset("auto").0,
        1 => MultilineConfig::preset("java").0,
        2 => MultilineConfig::preset("python").0,
        3 => MultilineConfig::preset("go").0,
        4 => MultilineConfig::preset("node").0,
        5 => custom(r"^\S", Some(r"^\s"), Mode::ContinueThrough),
        6 => custom(r"\\$", Some(r"\\$"), Mode::ContinuePast),
        7 => custom("^B", Some("^B"), Mode::HaltBefore),
        8 => custom("^B", Some("^E"), Mode::HaltWith),
        _ => custom(r"^\d", None, Mode::ContinueUntilStart),
    };
    table.max_lines = max_lines;
    table.max_bytes = crate::config::ByteSize(64 + u64::from(piece) * 4);
    let compiled = match MultilineConfig(table).compile() {
        Ok(c) => c,
        Err(p) => panic!("fuzz rules do not compile: {p:?}"),
    };
    let max_bytes = compiled.max_bytes;
    let mut stage = Multiline::new(compiled);
    let mut framer = LineFramer::with_read_chunk(1 << 16, OverflowPolicy::Truncate, usize::from(piece).max(1));
    let mut input: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut tick = 0u64;
    let mut take = |stage: &mut Multiline, lines: crate::framing::Lines, input: &mut Vec<Vec<u8>>, out: &mut Vec<CriBatch>| {
        for i in 0..lines.len() {
            input.push(lines.line(i).to_vec());
        }
        tick += 1;
        let now = start + Duration::from_millis(tick * 300);
        out.push(stage.regroup(Multiline::records_of(&lines, 0), now));
        if tick % 3 == 0 {
            out.extend(stage.take_expired(now + Duration::from_secs(2), false));
        }
    };
    for p in rest.chunks(usize::from(piece).max(1)) {
        framer.extend(p);
        while let Some(lines) = framer.take_lines() {
            take(&mut stage, lines, &mut input, &mut out);
        }
    }
    while let Some(lines) = framer.finish() {
        take(&mut stage, lines, &mut input, &mut out);
    }
    out.extend(stage.take_expired(Instant::now(), true));
    assert!(
        !stage.is_open() && stage.pending_start().is_none(),
        "a group stayed open at the end"
    );
    let mut got: Vec<u8> = Vec::new();
    for b in &out {
        for r in &b.records {
            let payload = r.payload.get(&b.chunk, &b.merged);
            let lines = payload.iter().filter(|&&c| c == b'\n').count() + 1;
            assert!(lines <= max_lines, "a group of {lines} lines past max_lines {max_lines}");
            assert!(
                lines == 1 || payload.len() <= max_bytes,
                "a group of {} bytes past max_bytes {max_bytes}",
                payload.len()
            );
            got.extend_from_slice(payload);
            got.push(b'\n');
        }
    }
    let want: Vec<u8> = input.iter().flat_map(|l| l.iter().copied().chain(std::iter::once(b'\n'))).collect();
    assert!(got == want, "lines lost, duplicated or reordered");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Lines made of the prefixes the rules look at, so that random input
    /// opens, continues and cuts groups often.
    fn line() -> impl Strategy<Value = String> {
        let head = prop::sample::select(vec![
            "",
            "\tat ",
            "    at ",
            "Caused by: ",
            "\tSuppressed: ",
            "\t... 3 more",
            "Traceback (most recent call last):",
            "  File ",
            "ValueError: ",
            "During handling of the above exception",
            "panic: ",
            "goroutine 1 [running]:",
            "main.main()",
            "created by ",
            "}",
            "  [cause]: ",
            "\tfrom ",
            " ---> ",
            "B",
            "E",
            "2024",
            "{\"message\":\"x\"}",
            "x \\",
        ]);
        (head, "[a-z \t{}():]{0,12}").prop_map(|(h, t)| format!("{h}{t}"))
    }

    proptest! {
        #[test]
        fn every_line_leaves_once_in_order_within_the_bounds(
            rules in any::<u8>(),
            piece in 1u8..=255,
            lines in prop::collection::vec(line(), 0..60),
        ) {
            let mut data = vec![rules, piece];
            for l in &lines {
                data.extend_from_slice(l.as_bytes());
                data.push(b'\n');
            }
            // The checks are the fuzz target's: order, no loss, no
            // duplicate, bounds, nothing left open.
            let batches = regroup_checked(&data);
            let events: usize = batches.iter().map(|b| b.records.len()).sum();
            prop_assert!(events <= lines.len().max(1));
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = regroup_checked(&data);
        }
    }
}
