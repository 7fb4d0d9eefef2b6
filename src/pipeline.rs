//! From a source to the sink queues: chunks are decoded in parallel on the
//! blocking pool (every core busy), but leave in the order they were read,
//! then one fan-out task per source hands each batch to every sink queue.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::buffer::QueueSender;
use crate::decode::Decoder;
use crate::decode::EventObserver;
use crate::enrich::SourceContext;
use crate::event::{AckOutcome, Acknowledger, Batch, BatchBuilder, FieldSet};
use crate::framing::Lines;
use crate::telemetry::metrics;

/// A boxed task: sources and sinks run as one of these.
pub(crate) type Task<E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'static>>;

/// Decoded chunks a source may have waiting for its fan-out, beside the one
/// the fan-out holds and the one being read. Two keeps both cores busy with
/// a chunk decoding while the next is read; four used 1.4 MiB more memory
/// in the pipe for no more events per second (BENCHMARKS.md, "Decode in
/// flight").
const DECODE_IN_FLIGHT: usize = 2;

/// The pipeline has shut down; the source should stop.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline has shut down")]
pub struct PipelineClosed;

/// A batch decoding on the blocking pool.
type Pending = JoinHandle<Decoded>;

/// A decoded batch, with what each tap made of it and, when transforms
/// take the source's events, their outputs.
struct Decoded {
    batch: Batch,
    prepared: Vec<Prepared>,
    outputs: Option<Outputs>,
    /// The [`Wiring`]'s transforms generation the batch was judged by;
    /// `None` for a batch no transform takes (metric samples).
    generation: Option<u64>,
}

/// What the transforms made of one batch: per output that a sink may take
/// (`filter`, `split.errors`), its events.
pub type Outputs = Vec<(Arc<str>, Output)>;

/// The events of one transform output.
#[derive(Debug)]
pub enum Output {
    /// Every event of the batch, unchanged: the batch itself goes on.
    Whole,
    /// A new batch of the events that reached the output (empty when none
    /// did). It carries the decoded batch's acknowledger.
    Part(Batch),
}

/// The transforms a source's events go through before the sinks, judged
/// in two steps like a [`BatchTap`]: per event while the batch decodes,
/// then once per batch, still on the decode pool.
pub trait Processing: Send + Sync {
    /// The fields the per-event step reads.
    fn fields(&self) -> Arc<FieldSet>;

    /// The observer that sees a batch's events as they decode.
    fn begin(&self, source: &SourceContext) -> Box<dyn EventObserver>;

    /// Runs the transforms over a decoded batch, with what the observer
    /// made of it: the events of each output.
    fn process(&self, batch: &Batch, prepared: Prepared) -> Outputs;

    /// The throttles a file reader of the source asks before it reads.
    fn deferrals(&self) -> Vec<Arc<dyn Deferral>> {
        Vec::new()
    }
}

/// A throttle that a file source asks before it reads.
pub trait Deferral: Send + Sync {
    /// Of `wanted` lines of the file whose context is `ctx`, how many may
    /// be read now, and when to ask again if that is fewer; `None` when this
    /// throttle cannot defer the file (its key is not in the file's
    /// metadata), and it drops instead.
    fn take(&self, ctx: &SourceContext, wanted: usize) -> Option<(usize, std::time::Instant)>;
}

/// What a [`BatchTap`]'s observer made of one batch on the decode pool.
pub type Prepared = Box<dyn std::any::Any + Send>;

/// Looks at every event before it is fanned out (the SLI metrics), in two
/// steps: per event while the batch decodes, in parallel with other
/// batches, then once per batch, in order.
pub trait BatchTap: Send + Sync {
    /// The fields the per-event step reads. They are read from each parsed
    /// event for the tap alone, not stored in the batch.
    fn fields(&self) -> Arc<FieldSet>;

    /// Called on the decode pool before a batch from `source` decodes: the
    /// observer that sees its events. What it finishes with is handed to
    /// [`BatchTap::observe`].
    fn begin(&self, source: &SourceContext) -> Box<dyn EventObserver>;

    /// Called once per batch, in order, on the fan-out task.
    fn observe(&self, batch: &Batch, prepared: Prepared);
}

/// A source's way into the pipeline. Cloneable; the fan-out ends when every
/// clone is dropped.
#[derive(Clone)]
pub struct SourceOutput {
    tx: mpsc::Sender<Pending>,
    wiring: Arc<Wiring>,
    source: Arc<str>,
    taps: Arc<[Arc<dyn BatchTap>]>,
}

impl std::fmt::Debug for SourceOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceOutput").field("source", &self.source).finish()
    }
}

thread_local! {
    static DECODER: RefCell<Decoder> = RefCell::new(Decoder::new());
}

impl SourceOutput {
    /// Decodes framed lines into one batch (in parallel with other chunks)
    /// and queues it, in order, for fan-out. Waits when the source is ahead
    /// of the pipeline: that is the source's backpressure.
    pub async fn send_lines(&self, lines: Lines, ctx: Arc<SourceContext>, ack: Option<Acknowledger>) -> Result<(), PipelineClosed> {
        let pending = self.spawn_lines(lines, ctx, ack);
        self.tx.send(pending).await.map_err(|_| PipelineClosed)
    }

    /// [`SourceOutput::send_lines`] for lines that are events the source
    /// rendered itself (one JSON object each, with `ctx`'s members already
    /// in: see [`Decoder::decode_rendered`]), waiting at most `wait` for
    /// room in the pipeline. `Ok(false)`: there was none, and nothing was
    /// taken.
    pub(crate) async fn send_rendered_within(
        &self,
        lines: Lines,
        ctx: Arc<SourceContext>,
        ack: Option<Acknowledger>,
        wait: std::time::Duration,
    ) -> Result<bool, PipelineClosed> {
        let Some(permit) = self.reserve_within(wait).await? else {
            return Ok(false);
        };
        let size = lines.chunk.len() + lines.len();
        permit.send(self.spawn_decode(ctx.clone(), ack, size, move |decoder, out| {
            decoder.decode_rendered(&lines, &ctx.fragment, out);
            crate::framing::recycle(lines.chunk);
        }));
        Ok(true)
    }

    /// A place in the pipeline, waited for at most `wait`; `None` when
    /// none came.
    async fn reserve_within(&self, wait: std::time::Duration) -> Result<Option<mpsc::Permit<'_, Pending>>, PipelineClosed> {
        match tokio::time::timeout(wait, self.tx.reserve()).await {
            Err(_) => Ok(None),
            Ok(Err(_)) => Err(PipelineClosed),
            Ok(Ok(permit)) => Ok(Some(permit)),
        }
    }

    /// [`SourceOutput::send_lines`] from a thread outside the runtime.
    pub(crate) fn blocking_send_lines(
        &self,
        lines: Lines,
        ctx: Arc<SourceContext>,
        ack: Option<Acknowledger>,
    ) -> Result<(), PipelineClosed> {
        let pending = self.spawn_lines(lines, ctx, ack);
        self.tx.blocking_send(pending).map_err(|_| PipelineClosed)
    }

    /// Runs a custom decode (container formats) on the decode pool and
    /// queues its batch in order. `decode` gets this thread's [`Decoder`]
    /// and an empty builder for the pipeline's fields.
    pub(crate) async fn send_decoded<F>(
        &self,
        ctx: Arc<SourceContext>,
        ack: Option<Acknowledger>,
        size_hint: usize,
        decode: F,
    ) -> Result<(), PipelineClosed>
    where
        F: FnOnce(&mut Decoder, &mut BatchBuilder) + Send + 'static,
    {
        let pending = self.spawn_decode(ctx, ack, size_hint, decode);
        self.tx.send(pending).await.map_err(|_| PipelineClosed)
    }

    /// Queues a batch the source built itself (metric samples from an
    /// aggregation) for fan-out, in order with its other batches. It skips
    /// decode and the taps: there is nothing to parse.
    pub(crate) async fn send_batch(&self, batch: Batch) -> Result<(), PipelineClosed> {
        let pending = self.built(batch);
        self.tx.send(pending).await.map_err(|_| PipelineClosed)
    }

    /// [`SourceOutput::send_batch`] that waits at most `wait` for room in
    /// the pipeline. `Ok(false)`: there was none, and nothing was taken.
    pub(crate) async fn send_batch_within(&self, batch: Batch, wait: std::time::Duration) -> Result<bool, PipelineClosed> {
        let Some(permit) = self.reserve_within(wait).await? else {
            return Ok(false);
        };
        permit.send(self.built(batch));
        Ok(true)
    }

    /// A batch the source built, counted and ready to queue.
    fn built(&self, batch: Batch) -> Pending {
        metrics()
            .source_events
            .with_label_values(&[&self.source])
            .inc_by(batch.len() as u64);
        // Transforms act on log events; a metric batch goes as it is.
        tokio::spawn(async move {
            Decoded {
                batch,
                prepared: Vec::new(),
                outputs: None,
                generation: None,
            }
        })
    }

    /// The throttles a file reader asks before it reads, and the
    /// generation they belong to (ask again when [`SourceOutput::generation`]
    /// differs).
    pub(crate) fn deferrals(&self) -> (u64, Vec<Arc<dyn Deferral>>) {
        self.wiring.deferrals(&self.source)
    }

    /// The generation of the transforms now wired.
    pub(crate) fn generation(&self) -> u64 {
        self.wiring.generation()
    }

    fn spawn_lines(&self, lines: Lines, ctx: Arc<SourceContext>, ack: Option<Acknowledger>) -> Pending {
        if lines.dropped > 0 {
            metrics()
                .events_dropped
                .with_label_values(&[&self.source, "line_too_long"])
                .inc_by(lines.dropped);
        }
        let size = lines.chunk.len() + lines.len() * (ctx.fragment.spliced_len() + 1);
        self.spawn_decode(ctx.clone(), ack, size, move |decoder, out| {
            decoder.decode_lines(&lines, &ctx.fragment, out);
            crate::framing::recycle(lines.chunk);
        })
    }

    fn spawn_decode<F>(&self, ctx: Arc<SourceContext>, ack: Option<Acknowledger>, size_hint: usize, decode: F) -> Pending
    where
        F: FnOnce(&mut Decoder, &mut BatchBuilder) + Send + 'static,
    {
        let fields = self.wiring.fields();
        let source = self.source.clone();
        let taps = self.taps.clone();
        let (generation, processing) = self.wiring.processing(&self.source);
        let received_at = SystemTime::now();
        tokio::task::spawn_blocking(move || {
            let mut out = BatchBuilder::with_capacity(fields, size_hint, size_hint / 200 + 1);
            let (stats, mut prepared) = DECODER.with(|d| {
                let mut d = d.borrow_mut();
                for tap in taps.iter() {
                    d.observe(tap.fields(), tap.begin(&ctx));
                }
                if let Some(p) = &processing {
                    d.observe(p.fields(), p.begin(&ctx));
                }
                decode(&mut d, &mut out);
                (d.take_stats(), d.finish_observers())
            });
            let m = metrics();
            m.source_events.with_label_values(&[&source]).inc_by(stats.events);
            m.source_bytes.with_label_values(&[&source]).inc_by(stats.bytes);
            if stats.wrapped > stats.invalid_utf8 {
                m.events_wrapped
                    .with_label_values(&[&source, "not_json"])
                    .inc_by(stats.wrapped - stats.invalid_utf8);
            }
            if stats.invalid_utf8 > 0 {
                m.events_wrapped
                    .with_label_values(&[&source, "invalid_utf8"])
                    .inc_by(stats.invalid_utf8);
            }
            if stats.truncated > 0 {
                m.lines_truncated.with_label_values(&[&source]).inc_by(stats.truncated);
            }
            let batch = out.build(ctx, received_at).with_ack(ack);
            let outputs = match (processing, prepared.len() > taps.len()) {
                (Some(p), true) => prepared.pop().map(|judged| p.process(&batch, judged)),
                _ => None,
            };
            Decoded {
                batch,
                prepared,
                outputs,
                generation: Some(generation),
            }
        })
    }
}

/// Which sink queues each source's batches go to. Fan-outs read it once
/// per batch; a reload takes it for writing to rewire the topology, which
/// pauses every fan-out between two batches (sources wait: backpressure, not
/// loss) until the new sinks are in place.
pub(crate) struct Wiring {
    routes: tokio::sync::RwLock<HashMap<Arc<str>, Arc<[QueueSender]>>>,
    /// The fields decode extracts for the sinks. A reload only appends to
    /// it, so the indexes a running sink looked up stay valid.
    fields: std::sync::RwLock<Arc<FieldSet>>,
    /// The transforms each source's events go through; a
    /// source without an entry feeds `routes[source]` directly. With
    /// transforms, `routes` is keyed by output name (`split.errors`).
    processing: std::sync::RwLock<Plans>,
}

/// The transforms of every source, and how many times they were set: a
/// batch judged by an older set is judged again when it leaves.
#[derive(Default)]
struct Plans {
    generation: u64,
    by_source: HashMap<Arc<str>, Arc<dyn Processing>>,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring").finish_non_exhaustive()
    }
}

/// The routes of a [`Wiring`], held for writing: fan-outs wait until it is
/// dropped.
pub(crate) type Rewiring<'a> = tokio::sync::RwLockWriteGuard<'a, HashMap<Arc<str>, Arc<[QueueSender]>>>;

impl Wiring {
    /// A wiring that routes nothing yet and extracts `fields`.
    pub(crate) fn new(fields: Arc<FieldSet>) -> Wiring {
        Wiring {
            routes: tokio::sync::RwLock::new(HashMap::new()),
            fields: std::sync::RwLock::new(fields),
            processing: std::sync::RwLock::new(Plans::default()),
        }
    }

    /// A wiring that sends `source`'s batches to `sinks`.
    pub(crate) fn fixed(source: Arc<str>, fields: Arc<FieldSet>, sinks: Vec<QueueSender>) -> Arc<Wiring> {
        let mut wiring = Wiring::new(fields);
        wiring.routes.get_mut().insert(source, sinks.into());
        Arc::new(wiring)
    }

    /// The fields decode extracts now.
    pub(crate) fn fields(&self) -> Arc<FieldSet> {
        self.fields.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the fields decode extracts (a superset of the old ones).
    pub(crate) fn set_fields(&self, fields: Arc<FieldSet>) {
        *self.fields.write().unwrap_or_else(PoisonError::into_inner) = fields;
    }

    /// The transforms `source`'s events go through, if any, and the
    /// generation they belong to.
    pub(crate) fn processing(&self, source: &str) -> (u64, Option<Arc<dyn Processing>>) {
        let plans = self.processing.read().unwrap_or_else(PoisonError::into_inner);
        if plans.by_source.is_empty() {
            return (plans.generation, None);
        }
        (plans.generation, plans.by_source.get(source).cloned())
    }

    /// The throttles `source`'s file readers ask before they read, and the
    /// generation of the transforms they belong to.
    pub(crate) fn deferrals(&self, source: &str) -> (u64, Vec<Arc<dyn Deferral>>) {
        let (generation, processing) = self.processing(source);
        (generation, processing.map(|p| p.deferrals()).unwrap_or_default())
    }

    /// How many times the transforms were set.
    pub(crate) fn generation(&self) -> u64 {
        self.processing.read().unwrap_or_else(PoisonError::into_inner).generation
    }

    /// Replaces the transforms of every source (call it while holding
    /// [`Wiring::rewire`], with the routes of their outputs). Batches
    /// judged by the old ones are judged again as they leave: the outputs
    /// they reached may be gone.
    pub(crate) fn set_processing(&self, processing: HashMap<Arc<str>, Arc<dyn Processing>>) {
        let mut plans = self.processing.write().unwrap_or_else(PoisonError::into_inner);
        plans.generation += 1;
        plans.by_source = processing;
    }

    /// Holds every fan-out between two batches and hands over the routes.
    pub(crate) async fn rewire(&self) -> Rewiring<'_> {
        self.routes.write().await
    }
}

/// Creates a source's output and spawns its fan-out task, which feeds
/// `sinks` and finishes once every clone of the output is dropped and the
/// last batch is queued.
pub fn source_output(
    source: Arc<str>,
    fields: Arc<FieldSet>,
    sinks: Vec<QueueSender>,
    taps: Vec<Arc<dyn BatchTap>>,
) -> (SourceOutput, JoinHandle<()>) {
    let wiring = Wiring::fixed(source.clone(), fields, sinks);
    wired_output(source, wiring, taps)
}

/// [`source_output`] whose sinks are whatever `wiring` routes `source` to
/// when each batch leaves.
pub(crate) fn wired_output(source: Arc<str>, wiring: Arc<Wiring>, taps: Vec<Arc<dyn BatchTap>>) -> (SourceOutput, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(DECODE_IN_FLIGHT);
    let taps: Arc<[Arc<dyn BatchTap>]> = taps.into();
    let task = tokio::spawn(fan_out(rx, wiring.clone(), taps.clone(), source.clone()));
    (SourceOutput { tx, wiring, source, taps }, task)
}

async fn fan_out(mut rx: mpsc::Receiver<Pending>, wiring: Arc<Wiring>, taps: Arc<[Arc<dyn BatchTap>]>, source: Arc<str>) {
    let none: Arc<[QueueSender]> = Arc::new([]);
    while let Some(pending) = rx.recv().await {
        let Decoded {
            batch,
            prepared,
            mut outputs,
            generation,
        } = match pending.await {
            Ok(b) => b,
            Err(e) => {
                // Decode never panics on input (every path is tested with
                // hostile bytes); if it ever does, say so loudly. The batch's
                // acknowledger was dropped with it, so the source does not
                // move past these lines.
                tracing::error!(source = %source, error = %e, "decode task failed; batch abandoned");
                continue;
            }
        };
        metrics().batch_events.observe(batch.len() as f64);
        for (tap, p) in taps.iter().zip(prepared) {
            tap.observe(&batch, p);
        }
        // Held while the batch is queued: a rewiring waits for it, and no
        // batch goes to a sink the rewiring has already let go.
        let routes = wiring.routes.read().await;
        if generation.is_some_and(|judged_by| judged_by != wiring.generation()) {
            outputs = wiring.processing(&source).1.map(|p| judge_again(&batch, p.as_ref()));
        }
        if let Some(outputs) = outputs {
            send_outputs(batch, outputs, &routes).await;
            continue;
        }
        if crate::telemetry::tap::active() {
            crate::telemetry::tap::offer(&source, batch.events());
        }
        let sinks = routes.get(&source).unwrap_or(&none);
        let kind = batch.kind();
        if let Some(ack) = batch.acknowledger() {
            ack.expect(if batch.is_empty() {
                0
            } else {
                sinks.iter().filter(|s| s.takes(kind)).count()
            });
        }
        if batch.is_empty() {
            continue;
        }
        let batch = Arc::new(batch);
        for sink in sinks.iter().filter(|s| s.takes(kind)) {
            if let Err(e) = sink.send(batch.clone()).await {
                tracing::debug!(error = %e, "batch not queued");
                batch.acknowledge(AckOutcome::Abandoned);
            }
        }
    }
}

/// Runs `processing` over a batch decoded before a reload replaced the
/// transforms that judged it: each event is read again from the batch
/// (its metadata is in it already), for the new transforms' verdicts.
fn judge_again(batch: &Batch, processing: &dyn Processing) -> Outputs {
    let no_members = crate::enrich::Fragment::default();
    let mut scratch = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), batch.byte_len(), batch.len());
    let judged = DECODER.with(|d| {
        let mut d = d.borrow_mut();
        d.observe(processing.fields(), processing.begin(&batch.source));
        for event in batch.events() {
            d.decode_line(event, false, &[], &no_members, &mut scratch);
        }
        d.take_stats();
        d.finish_observers().pop()
    });
    match judged {
        Some(judged) => processing.process(batch, judged),
        None => Vec::new(),
    }
}

/// Queues each transform output's events to the sinks that take that
/// output. The batch is acknowledged back to its source once every one of
/// them is done; with none (every event dropped), at once.
async fn send_outputs(batch: Batch, outputs: Outputs, routes: &HashMap<Arc<str>, Arc<[QueueSender]>>) {
    let batch = Arc::new(batch);
    let tapped = crate::telemetry::tap::active();
    let mut sends: Vec<(Arc<Batch>, &[QueueSender])> = Vec::with_capacity(outputs.len());
    for (name, output) in outputs {
        if tapped {
            match &output {
                Output::Whole => crate::telemetry::tap::offer(&name, batch.events()),
                Output::Part(part) => crate::telemetry::tap::offer(&name, part.events()),
            }
        }
        let Some(sinks) = routes.get(&name).filter(|s| !s.is_empty()) else {
            continue;
        };
        let events = match output {
            Output::Whole => batch.clone(),
            Output::Part(part) if part.is_empty() => continue,
            Output::Part(part) => Arc::new(part),
        };
        sends.push((events, sinks));
    }
    if let Some(ack) = batch.acknowledger() {
        ack.expect(sends.iter().map(|(_, sinks)| sinks.len()).sum());
    }
    for (events, sinks) in sends {
        for sink in sinks.iter() {
            if let Err(e) = sink.send(events.clone()).await {
                tracing::debug!(error = %e, "batch not queued");
                events.acknowledge(AckOutcome::Abandoned);
            }
        }
    }
}

/// Tells sources to stop reading. Cloneable; cheap to poll.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

/// Triggers a [`ShutdownSignal`].
#[derive(Debug)]
pub(crate) struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A signal and its trigger.
pub(crate) fn shutdown_pair() -> (ShutdownTrigger, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, ShutdownSignal { rx })
}

impl ShutdownTrigger {
    /// Asks every source to stop.
    pub(crate) fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl ShutdownSignal {
    /// True once shutdown was asked for.
    pub(crate) fn is_set(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when shutdown is asked for.
    pub(crate) async fn wait(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
}
