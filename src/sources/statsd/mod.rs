//! `type = "statsd"`: statsd and DogStatsD metrics over UDP, TCP or a unix
//! datagram socket, aggregated per flush interval.
//!
//! The socket source's receive code reads the socket ([`FrameConsumer`]):
//! the same datagram bursts, kernel drop counting, TCP connection limits
//! and framing. Each line is parsed ([`parse`]) and applied at once to the
//! source's [`Aggregator`]; no per-line event exists. Every
//! `flush_interval` the live series leave as one metric batch (one JSON
//! sample per series, [`crate::metrics::sample`]) through the same queues,
//! buffers and acknowledgements as log batches.
//!
//! Counters are summed (divided by their sample rate), gauges keep their
//! last value (`+n`/`-n` move it), timers, histograms and distributions
//! fill histograms with the configured buckets, sets count distinct
//! members per interval. Bad lines are counted in
//! `sluice_metric_lines_invalid_total{reason}` and skipped.

mod config;
pub(crate) mod parse;

pub use config::StatsdConfig;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use self::config::StatsdMode;
use self::parse::{number, parse_line, Invalid, StatsdType};
use super::socket::{FrameConsumer, SocketConfig, SocketFormat, SocketMode, StreamFraming};
use super::{SourceComponent, SourceCx, SourceError};
use crate::enrich::SourceContext;
use crate::event::{BatchBuilder, EventKind, FieldSet};
use crate::framing::{Lines, OverflowPolicy};
use crate::metrics::{source_metrics, AggregateConfig, Aggregator, Outcome, Update};
use crate::pipeline::{SourceOutput, Task};

/// Why a statsd source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatsdError {
    /// The flush task died (a bug, not an input).
    #[error("its flush task failed: {0}")]
    FlushTask(String),
}

impl SourceComponent for StatsdConfig {
    /// Metric samples.
    fn produces(&self) -> EventKind {
        EventKind::Metric
    }

    /// Binds the socket and starts receiving and flushing.
    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let state = Arc::new(StatsdState::new(self, &cx.name));
        let socket = self
            .socket_config()
            .start(cx.clone(), Some(state.clone() as Arc<dyn FrameConsumer>))?;
        let flush_interval = self.flush_interval;
        let name = cx.name.clone();
        let context = Arc::new(SourceContext::new(
            cx.name.clone(),
            "statsd",
            String::new(),
            cx.enrich.metadata(None),
        ));
        Ok(Box::pin(async move {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let flusher = tokio::spawn(flush_loop(
                state.clone(),
                cx.output.clone(),
                context.clone(),
                flush_interval,
                cx.shutdown.clone(),
                stopped,
            ));
            let result = socket.await;
            // The socket is closed (shutdown, or it failed): the periodic
            // flush stops between two flushes, and what was aggregated
            // leaves in one last flush.
            drop(stop);
            let flushed = flusher.await;
            let _ = state.flush(&cx.output, &context).await;
            if let Err(e) = flushed {
                return Err(SourceError::new(&name, StatsdError::FlushTask(e.to_string())));
            }
            result
        }))
    }
}

impl StatsdConfig {
    /// The socket source settings that receive this source's lines: one
    /// metric per line, whole datagrams split on newlines, long lines
    /// dropped (a cut statsd line would be a wrong value).
    fn socket_config(&self) -> SocketConfig {
        SocketConfig {
            mode: match self.mode {
                StatsdMode::Udp => SocketMode::Udp,
                StatsdMode::Tcp => SocketMode::Tcp,
                StatsdMode::UnixDatagram => SocketMode::UnixDatagram,
            },
            address: self.address,
            path: self.path.clone(),
            format: SocketFormat::Json,
            framing: StreamFraming::Newline,
            max_frame_bytes: self.max_line_bytes,
            oversize: OverflowPolicy::Drop,
            max_connections: self.max_connections,
            idle_timeout: Duration::from_secs(300),
            tls: None,
            permissions: None,
            owner: None,
            group: None,
            peer_metadata: false,
            peer_environment: Vec::new(),
            receive_buffer_bytes: self.receive_buffer_bytes,
            multiline: None,
        }
    }
}

/// The aggregation of one statsd source, fed by its socket's reads and
/// drained by its flush task.
pub(crate) struct StatsdState {
    source: Arc<str>,
    max_tag_value: usize,
    inner: Mutex<Aggregator>,
}

/// Counts of one read, added to the metrics once per read.
#[derive(Default)]
struct ReadCounts {
    updates: u64,
    overflow: u64,
    dropped_series: u64,
    dropped_set: u64,
    invalid: [u64; 8],
}

impl StatsdState {
    fn new(cfg: &StatsdConfig, source: &str) -> StatsdState {
        StatsdState {
            source: source.into(),
            max_tag_value: cfg.max_tag_value_bytes,
            inner: Mutex::new(Aggregator::new(AggregateConfig {
                max_series: cfg.max_series,
                expire_after: cfg.expire_after,
                buckets: cfg.buckets.clone().into(),
            })),
        }
    }

    /// Writes every live series as one metric batch and queues it.
    async fn flush(&self, output: &SourceOutput, context: &Arc<SourceContext>) -> Result<(), crate::pipeline::PipelineClosed> {
        let now = Instant::now();
        let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let (batch, stats, series) = {
            let mut agg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), agg.len() * 160, agg.len());
            let stats = agg.flush(now, timestamp_ms, &context.fragment, |line| {
                out.buffer().extend_from_slice(line);
                out.finish_event();
            });
            (
                out.build(context.clone(), SystemTime::now()).with_kind(EventKind::Metric),
                stats,
                agg.len(),
            )
        };
        let m = source_metrics();
        m.series.with_label_values(&[&self.source]).set(series as i64);
        if stats.expired > 0 {
            m.expired.with_label_values(&[&self.source]).inc_by(stats.expired as u64);
        }
        if batch.is_empty() {
            return Ok(());
        }
        output.send_batch(batch).await
    }

    /// Parses the lines of one read into `agg`.
    fn apply(&self, agg: &mut Aggregator, lines: &Lines, counts: &mut ReadCounts) {
        let now = Instant::now();
        let mut tags = Vec::with_capacity(8);
        for i in 0..lines.len() {
            tags.clear();
            let line = match parse_line(lines.line(i), self.max_tag_value, &mut tags) {
                None => continue,
                Some(Ok(l)) => l,
                Some(Err(e)) => {
                    counts.invalid[e as usize] += 1;
                    continue;
                }
            };
            let weight = 1.0 / line.rate;
            for v in line.values.split(':') {
                let update = match line.kind {
                    StatsdType::Set => Update::SetMember(v.as_bytes()),
                    kind => {
                        let Ok((n, delta)) = number(v, kind) else {
                            counts.invalid[Invalid::Value as usize] += 1;
                            continue;
                        };
                        match kind {
                            StatsdType::Counter => Update::Count(n * weight),
                            StatsdType::Gauge if delta => Update::GaugeDelta(n),
                            StatsdType::Gauge => Update::Gauge(n),
                            _ => Update::Observe { value: n, weight },
                        }
                    }
                };
                counts.updates += 1;
                match agg.update(line.name, &tags, update, now) {
                    Outcome::Recorded => {}
                    Outcome::Overflow => counts.overflow += 1,
                    Outcome::Dropped if line.kind == StatsdType::Set => counts.dropped_set += 1,
                    Outcome::Dropped => counts.dropped_series += 1,
                }
            }
        }
    }
}

impl FrameConsumer for StatsdState {
    fn consume(&self, lines: &Lines, _ctx: &SourceContext) {
        let mut counts = ReadCounts::default();
        {
            let mut agg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            self.apply(&mut agg, lines, &mut counts);
        }
        let m = source_metrics();
        let source: &str = &self.source;
        m.updates.with_label_values(&[source]).inc_by(counts.updates);
        if counts.overflow > 0 {
            m.overflow.with_label_values(&[source]).inc_by(counts.overflow);
        }
        for (reason, n) in [("series_limit", counts.dropped_series), ("set_limit", counts.dropped_set)] {
            if n > 0 {
                m.dropped.with_label_values(&[source, reason]).inc_by(n);
            }
        }
        if lines.dropped > 0 {
            m.invalid.with_label_values(&[source, "too_long"]).inc_by(lines.dropped);
        }
        for reason in [
            Invalid::Format,
            Invalid::Name,
            Invalid::Value,
            Invalid::Type,
            Invalid::Rate,
            Invalid::Tag,
            Invalid::Unsupported,
        ] {
            let n = counts.invalid[reason as usize];
            if n > 0 {
                m.invalid.with_label_values(&[source, reason.as_str()]).inc_by(n);
            }
        }
    }
}

/// Flushes every `interval` until shutdown is asked or `stopped` fires
/// (the socket task ended).
async fn flush_loop(
    state: Arc<StatsdState>,
    output: SourceOutput,
    context: Arc<SourceContext>,
    interval: Duration,
    mut shutdown: crate::pipeline::ShutdownSignal,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => return,
            _ = &mut stopped => return,
            _ = ticks.tick() => {
                if state.flush(&output, &context).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Parses statsd lines into an aggregation and flushes it once (the fuzz
/// target's entry point): every input must come back as valid samples or
/// counted refusals, never a panic.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_statsd(data: &[u8]) -> usize {
    let mut spans = Vec::new();
    let tail = crate::framing::split_lines(data, &mut spans);
    if tail < data.len() {
        spans.push(crate::framing::LineSpan {
            start: tail as u32,
            len: (data.len() - tail) as u32,
            truncated: false,
        });
    }
    let lines = Lines {
        chunk: bytes::Bytes::copy_from_slice(data),
        spans,
        dropped: 0,
        may_hold_breaks: true,
    };
    let state = StatsdState {
        source: "fuzz".into(),
        max_tag_value: 64,
        inner: Mutex::new(Aggregator::new(AggregateConfig {
            max_series: 8,
            expire_after: Duration::from_secs(60),
            buckets: vec![1.0, 10.0].into(),
        })),
    };
    let mut counts = ReadCounts::default();
    let mut agg = state.inner.lock().unwrap_or_else(PoisonError::into_inner);
    state.apply(&mut agg, &lines, &mut counts);
    let mut samples = 0;
    agg.flush(Instant::now(), 0, &crate::enrich::Fragment::default(), |line| {
        if let Err(e) = crate::metrics::Sample::parse(line) {
            panic!("flush wrote an invalid sample {e}: {}", String::from_utf8_lossy(line));
        }
        samples += 1;
    });
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Lines {
        let mut spans = Vec::new();
        let tail = crate::framing::split_lines(text.as_bytes(), &mut spans);
        assert_eq!(tail, text.len(), "test input ends with a newline");
        Lines {
            chunk: bytes::Bytes::copy_from_slice(text.as_bytes()),
            spans,
            dropped: 0,
            may_hold_breaks: false,
        }
    }

    fn state() -> StatsdState {
        let cfg: StatsdConfig = serde_json::from_value(serde_json::json!({"address": "127.0.0.1:1", "buckets": [10.0, 100.0]})).unwrap();
        StatsdState::new(&cfg, "t")
    }

    fn flushed(s: &StatsdState) -> Vec<serde_json::Value> {
        let mut agg = s.inner.lock().unwrap();
        let mut out = Vec::new();
        agg.flush(Instant::now(), 0, &crate::enrich::Fragment::default(), |l| {
            out.push(serde_json::from_slice(l).unwrap())
        });
        out.sort_by_key(|v: &serde_json::Value| v["metric"].to_string());
        out
    }

    #[test]
    fn counters_with_sample_rates_gauge_deltas_timers_and_sets_aggregate() {
        let s = state();
        s.consume(
            &lines(
                "hits:1|c\nhits:2|c|@0.5\ntemp:10|g\ntemp:-3|g\ntemp:+1|g\nlat:5:50:500|ms\n\
                 users:a|s\nusers:b|s\nusers:a|s\nbad line\n",
            ),
            &SourceContext::new("t".into(), "statsd", String::new(), Default::default()),
        );
        let f = flushed(&s);
        let by = |name: &str| f.iter().find(|v| v["metric"] == name).cloned().unwrap();
        assert_eq!(by("hits")["value"], 5);
        assert_eq!(by("temp")["value"], 8);
        assert_eq!(by("lat")["count"], 3);
        assert_eq!(
            by("lat")["buckets"],
            serde_json::json!([{"le": 10, "count": 1}, {"le": 100, "count": 2}])
        );
        assert_eq!(by("users")["value"], 2);
        assert_eq!(by("users")["kind"], "set");
    }

    #[test]
    fn dogstatsd_tags_become_labels() {
        let s = state();
        s.consume(
            &lines("req:1|c|#env:prod,route:/a\nreq:1|c|#route:/a,env:prod\nreq:1|c|#env:dev\n"),
            &SourceContext::new("t".into(), "statsd", String::new(), Default::default()),
        );
        let f = flushed(&s);
        let mut got: Vec<(String, i64)> = f.iter().map(|v| (v["labels"].to_string(), v["value"].as_i64().unwrap())).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("{\"env\":\"dev\"}".to_owned(), 1),
                ("{\"env\":\"prod\",\"route\":\"/a\"}".to_owned(), 2)
            ]
        );
    }
}
