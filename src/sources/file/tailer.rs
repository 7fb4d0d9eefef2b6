//! Reader threads. Each owns a share of the tracked files and goes round
//! them: one turn per file per round, at most `read_budget` bytes a turn,
//! so a busy file cannot starve a thousand quiet ones. Reads are `pread`s
//! on dedicated threads, never on the async workers; decoding runs on the
//! pipeline's decode pool.
//!
//! Every batch carries an [`Acknowledger`](crate::event::Acknowledger) from
//! the file's own [`AckGroup`]; the file offset at the end of the batch is
//! recorded under its sequence number, and the acknowledged offset moves
//! over the contiguous prefix of completed batches only.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::{FileConfig, FileFormat};
use super::fingerprint::{is_compressed, read_at, FileStat, TAIL_BYTES};
use super::metrics::FileMetrics;
use super::shared::{Disposal, Registry, Shared};
use super::ContextFactory;
use crate::decode::cri::{self, CriReader};
use crate::decode::docker::{self, DockerReader};
use crate::decode::partial::ContainerStats;
use crate::decode::Decoder;
use crate::enrich::{Fragment, SourceContext};
use crate::event::{AckGroup, AckOutcome, AckReceiver, AckWindow, Acknowledger, BatchBuilder};
use crate::framing::{split_lines, LineSpan, Lines, OverflowPolicy};
use crate::multiline::{self, Multiline};
use crate::pipeline::{Deferral, PipelineClosed, ShutdownSignal, SourceOutput};
use crate::telemetry::metrics;

/// How long a file must sit idle at its end before it is closed to make
/// room for a waiting one.
const PARK_IDLE: Duration = Duration::from_secs(1);

/// Bytes before the read offset that each read takes again to see that
/// the file under it is still the one read (with the carry, if longer).
const CONTINUITY_BYTES: usize = 16;

/// How often an idle file's size and link count are checked (truncation,
/// deletion) at most.
const STAT_EVERY: Duration = Duration::from_millis(200);

/// What every reader thread shares.
pub(crate) struct ReaderCx {
    pub(crate) source: Arc<str>,
    pub(crate) cfg: Arc<FileConfig>,
    /// Where batches go; `None` once the reader has stopped reading, so the
    /// fan-out can end and the sinks flush what they hold (an S3 object is
    /// only uploaded, and its batches acknowledged, when its queue closes).
    pub(crate) output: Option<SourceOutput>,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) shutdown: ShutdownSignal,
    /// Set by the scanner in `stop_at_eof` mode once every file is done.
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) registry: Arc<Mutex<Registry>>,
    pub(crate) contexts: Arc<ContextFactory>,
    pub(crate) started: Instant,
}

impl ReaderCx {
    /// The output, while the reader still sends.
    fn out(&self) -> Result<&SourceOutput, PipelineClosed> {
        self.output.as_ref().ok_or(PipelineClosed)
    }

    /// Hands a container batch to the decode pool from this reader thread;
    /// it leaves in order with the file's other batches.
    fn send_decoded<F>(&self, ctx: Arc<SourceContext>, ack: Acknowledger, size_hint: usize, decode: F) -> Result<(), PipelineClosed>
    where
        F: FnOnce(&mut Decoder, &mut BatchBuilder) + Send + 'static,
    {
        let out = self.out()?;
        self.handle.block_on(out.send_decoded(ctx, Some(ack), size_hint, decode))
    }
}

/// A file handed to a reader.
pub(crate) struct NewFile {
    pub(crate) shared: Arc<Shared>,
    /// Found by fingerprint elsewhere than its live path (a rotated file
    /// finished after a restart): read to its end and release.
    pub(crate) finishing: bool,
}

enum Unwrap {
    Undetected,
    Lines,
    Cri(CriReader),
    Docker(DockerReader),
}

/// A container batch's decode, boxed so that either format's expired
/// partial lines take one path (flushes are rare: not the hot path).
type ContainerDecode = Box<dyn FnOnce(&mut Decoder, &Fragment, &mut BatchBuilder) + Send>;

struct Acks {
    group: AckGroup,
    rx: AckReceiver,
    window: AckWindow,
    /// (sequence number, file offset at the end of that batch), in order.
    pending: VecDeque<(u64, u64)>,
    /// Highest offset recorded so far (offsets never go back).
    recorded: u64,
    acked: u64,
    /// A batch was abandoned: the offset stays before it until a restart
    /// reads it again.
    stuck: bool,
}

impl Acks {
    fn new(offset: u64) -> Acks {
        let (group, rx) = AckGroup::new();
        Acks {
            group,
            rx,
            window: AckWindow::default(),
            pending: VecDeque::new(),
            recorded: offset,
            acked: offset,
            stuck: false,
        }
    }

    /// Records that batch `seq` ends at file offset `ckpt`; recorded
    /// offsets never go back.
    fn note_sent(&mut self, seq: u64, ckpt: u64) {
        let ckpt = ckpt.max(self.recorded);
        self.recorded = ckpt;
        self.pending.push_back((seq, ckpt));
    }

    fn poll(&mut self, path: &Shared) {
        while let Ok(c) = self.rx.try_recv() {
            for (seq, outcome) in self.window.complete(c) {
                let Some(&(front, offset)) = self.pending.front() else { break };
                if front != seq {
                    break;
                }
                self.pending.pop_front();
                if outcome == AckOutcome::Abandoned && !self.stuck {
                    self.stuck = true;
                    tracing::warn!(path = %path.path().display(), offset = self.acked, "a batch was abandoned; this file's checkpoint stays before it until restart");
                }
                if !self.stuck {
                    self.acked = offset;
                }
            }
        }
        path.acked.store(self.acked, Ordering::Release);
    }
}

struct Tracked {
    shared: Arc<Shared>,
    ctx: Arc<SourceContext>,
    ctx_gen: u64,
    unwrap: Unwrap,
    /// Next offset to read. `carry` holds the bytes of an unfinished line
    /// just before it.
    read: u64,
    carry: Vec<u8>,
    /// Skipping the rest of a line longer than `max_line_bytes`.
    discarding: bool,
    /// Up to `TAIL_BYTES` bytes just before `read`, to recognise a copy.
    last: Vec<u8>,
    acks: Acks,
    eof_since: Option<Instant>,
    last_stat: Option<Instant>,
    finishing: bool,
    closed: Option<Disposal>,
    path_bytes: Option<prometheus::IntCounter>,
    /// The multiline stage of this file's streams, and which choice made
    /// it (a pod annotation's preset, or `None` for the source's setting).
    multiline: Option<Multiline>,
    multiline_choice: Option<String>,
    /// A throttle deferred the rest of the file: read on from here.
    paused_until: Option<Instant>,
}

impl Tracked {
    fn new(nf: NewFile, cx: &ReaderCx) -> Tracked {
        let s = nf.shared;
        let path = s.path();
        let read = s.read.load(Ordering::Acquire);
        let unwrap = match cx.cfg.format {
            FileFormat::Auto => Unwrap::Undetected,
            FileFormat::Lines => Unwrap::Lines,
            FileFormat::Cri => Unwrap::Cri(CriReader::new(cx.cfg.partial_max_bytes.0 as usize)),
            FileFormat::Docker => Unwrap::Docker(DockerReader::new(cx.cfg.partial_max_bytes.0 as usize)),
        };
        let last = if read > 0 {
            let start = read.saturating_sub(TAIL_BYTES);
            read_at(&s.file, start, (read - start) as usize).unwrap_or_default()
        } else {
            Vec::new()
        };
        let (ml, multiline_choice) = cx.contexts.multiline(&path);
        Tracked {
            multiline: ml.map(Multiline::new),
            multiline_choice,
            ctx: cx.contexts.context(&path),
            ctx_gen: cx.contexts.generation(),
            unwrap,
            read,
            carry: Vec::new(),
            discarding: false,
            last,
            acks: Acks::new(read),
            eof_since: None,
            last_stat: None,
            finishing: nf.finishing,
            paused_until: None,
            closed: None,
            path_bytes: cx.cfg.metrics_per_file.then(|| {
                FileMetrics::get()
                    .path_bytes_read
                    .with_label_values(&[&*cx.source, &*path.to_string_lossy()])
            }),
            shared: s,
        }
    }

    /// Pending lines (unfinished line, partial pieces) that a checkpoint
    /// must stay before.
    fn pending_start(&self) -> Option<u64> {
        match &self.unwrap {
            Unwrap::Cri(r) => r.pending_start(),
            Unwrap::Docker(r) => r.pending_start(),
            _ => None,
        }
    }

    fn has_partials(&self) -> bool {
        self.pending_start().is_some()
    }

    /// Whether a multiline group is open.
    fn multiline_open(&self) -> bool {
        self.multiline.as_ref().is_some_and(Multiline::is_open)
    }

    /// The checkpoint `ckpt` held back before any open multiline group.
    fn before_open_group(&self, ckpt: u64) -> u64 {
        self.multiline
            .as_ref()
            .and_then(Multiline::pending_start)
            .map_or(ckpt, |p| p.min(ckpt))
    }

    /// After the pod cache changed: a pod annotation may pick other rules.
    /// They take over once no group is open.
    fn refresh_multiline(&mut self, cx: &ReaderCx) {
        if self.multiline_open() {
            return;
        }
        let (ml, choice) = cx.contexts.multiline(&self.shared.path());
        if choice != self.multiline_choice || ml.is_some() != self.multiline.is_some() {
            self.multiline = ml.map(Multiline::new);
            self.multiline_choice = choice;
        }
    }
}

/// One reader thread.
pub(crate) struct Reader {
    cx: ReaderCx,
    files: Vec<Tracked>,
    /// Files a turn created (the old generation of a truncated file).
    spawned: Vec<Tracked>,
    scratch: BytesMut,
    stats: ContainerStats,
    /// The throttles asked before a file's lines are read (`mode =
    /// "defer"`), and the transforms generation they came from.
    deferrals: Vec<Arc<dyn Deferral>>,
    deferrals_gen: Option<u64>,
}

impl Reader {
    pub(crate) fn new(cx: ReaderCx) -> Reader {
        Reader {
            cx,
            files: Vec::new(),
            spawned: Vec::new(),
            scratch: BytesMut::new(),
            stats: ContainerStats::default(),
            deferrals: Vec::new(),
            deferrals_gen: None,
        }
    }

    /// Picks up the throttles of the transforms now wired.
    fn refresh_deferrals(&mut self) {
        let Some(out) = &self.cx.output else { return };
        let gen = out.generation();
        if self.deferrals_gen != Some(gen) {
            let (gen, deferrals) = out.deferrals();
            self.deferrals = deferrals;
            self.deferrals_gen = Some(gen);
        }
    }

    /// How many of `lines` just read the file's throttles let through, when
    /// fewer than all; then the file pauses until they allow more.
    fn grant(&self, t: &mut Tracked, lines: usize) -> Option<usize> {
        let mut granted = lines;
        let mut until: Option<Instant> = None;
        for d in &self.deferrals {
            if let Some((g, next)) = d.take(&t.ctx, granted) {
                if g < granted {
                    granted = g;
                    until = Some(until.map_or(next, |u| u.max(next)));
                }
            }
        }
        t.paused_until = until;
        until.map(|_| granted)
    }

    /// Reads until shutdown (or, with `stop_at_eof`, until the scanner says
    /// every file is done), then waits for outstanding acknowledgements so
    /// the final checkpoint holds them.
    pub(crate) fn run(mut self, inbox: mpsc::Receiver<NewFile>) {
        let _guard = self.cx.handle.enter();
        let poll = self.cx.cfg.poll_interval;
        'outer: loop {
            while let Ok(nf) = inbox.try_recv() {
                self.files.push(Tracked::new(nf, &self.cx));
            }
            if self.cx.shutdown.is_set() || self.cx.stop.load(Ordering::Acquire) {
                break;
            }
            let mut read = 0usize;
            self.refresh_deferrals();
            let mut files = std::mem::take(&mut self.files);
            for t in files.iter_mut() {
                match self.turn(t) {
                    Ok(n) => read += n,
                    Err(PipelineClosed) => {
                        self.files = files;
                        break 'outer;
                    }
                }
            }
            files.append(&mut self.spawned);
            files.retain_mut(|t| !finished(t));
            self.files = files;
            self.flush_stats();
            if read == 0 {
                match inbox.recv_timeout(poll) {
                    Ok(nf) => self.files.push(Tracked::new(nf, &self.cx)),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if self.files.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        // Whatever was read is in the pipeline: wait for its fate, so the
        // final checkpoint is as far as it can be. Let go of the output
        // first: sinks that acknowledge only when their input ends (S3
        // uploads its open objects then) would otherwise wait for us while
        // we wait for them, until shutdown_timeout.
        self.cx.output = None;
        self.files.append(&mut self.spawned);
        loop {
            for t in self.files.iter_mut() {
                t.acks.poll(&t.shared);
            }
            if self.files.iter().all(|t| t.acks.pending.is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in &self.files {
            let disposal = if t.closed == Some(Disposal::Forget) && !t.acks.stuck {
                Disposal::Forget
            } else {
                Disposal::Keep
            };
            *Shared::lock(&t.shared.done) = Some(t.closed.map(|_| disposal).unwrap_or(Disposal::Keep));
        }
    }

    fn flush_stats(&mut self) {
        let s = std::mem::take(&mut self.stats);
        let m = FileMetrics::get();
        let src = &*self.cx.source;
        if s.merged > 0 {
            m.partial_merges.with_label_values(&[src]).inc_by(s.merged);
        }
        if s.overflowed > 0 {
            m.partial_overflows.with_label_values(&[src, "cap"]).inc_by(s.overflowed);
        }
        if s.timed_out > 0 {
            m.partial_overflows.with_label_values(&[src, "timeout"]).inc_by(s.timed_out);
        }
    }

    /// One file's turn: at most one read of `read_budget` bytes.
    fn turn(&mut self, t: &mut Tracked) -> Result<usize, PipelineClosed> {
        t.acks.poll(&t.shared);
        if t.closed.is_some() {
            return Ok(0);
        }
        if let Some(until) = t.paused_until {
            if Instant::now() < until {
                return Ok(0);
            }
            t.paused_until = None;
        }
        if t.shared.rewritten.swap(false, Ordering::AcqRel) {
            let size = FileStat::of_file(&t.shared.file).map(|s| s.size).unwrap_or(0);
            self.truncated(t, size);
            return Ok(0);
        }
        let gen = self.cx.contexts.generation();
        if gen != t.ctx_gen {
            t.ctx = self.cx.contexts.context(&t.shared.path());
            t.ctx_gen = gen;
            t.refresh_multiline(&self.cx);
        }
        let budget = self.cx.cfg.read_budget.0 as usize;
        // The bytes just before the offset are read again with the new
        // ones (the carry among them, instead of copying it): a file
        // truncated and written past the offset before anything here
        // looked (copytruncate while this reader stalled) no longer has
        // them, and is read again from its start instead of from the
        // middle of a line.
        let carry_len = t.carry.len();
        let check = carry_len.max(CONTINUITY_BYTES.min(t.last.len()));
        self.scratch.clear();
        let got = match pread_into(&t.shared.file, &mut self.scratch, budget + check, t.read - check as u64) {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(source = %self.cx.source, path = %t.shared.path().display(), error = %e, "read failed; closing the file, it is retried at the next scan");
                self.scratch.clear();
                t.closed = Some(Disposal::Keep);
                return Ok(0);
            }
        };
        let before: &[u8] = if check == carry_len {
            &t.carry
        } else {
            &t.last[t.last.len() - check..]
        };
        if got < check || self.scratch[..check] != *before {
            self.scratch.clear();
            let size = FileStat::of_file(&t.shared.file).map(|s| s.size).unwrap_or(0);
            self.truncated(t, size);
            return Ok(0);
        }
        let n = got - check;
        if n == 0 {
            self.scratch.clear();
            return self.on_eof(t).map(|_| 0);
        }
        self.scratch.advance(check - carry_len);
        t.carry.clear();
        let base = t.read - carry_len as u64;
        t.read += n as u64;
        remember_last(&mut t.last, &self.scratch);
        self.extend_head(t);
        FileMetrics::get().bytes_read.with_label_values(&[&self.cx.source]).inc_by(n as u64);
        if let Some(c) = &t.path_bytes {
            c.inc_by(n as u64);
        }
        t.eof_since = None;
        t.shared.idle_since_ms.store(0, Ordering::Release);

        let mut start = 0usize;
        if t.discarding {
            match memchr::memchr(b'\n', &self.scratch) {
                Some(i) => {
                    start = i + 1;
                    t.discarding = false;
                }
                None => {
                    self.scratch.clear();
                    t.shared.read.store(t.read, Ordering::Release);
                    return Ok(n);
                }
            }
        }
        let max = self.cx.cfg.max_line_bytes.0 as usize;
        if let Some(rel) = memchr::memrchr(b'\n', &self.scratch[start..]) {
            let end = start + rel + 1;
            let mut chunk = self.scratch.split_to(end).freeze();
            if start > 0 {
                chunk = chunk.slice(start..);
            }
            t.carry.extend_from_slice(&self.scratch);
            self.scratch.clear();
            let mut spans = Vec::with_capacity(chunk.len() / 128 + 1);
            split_lines(&chunk, &mut spans);
            let dropped = enforce_limit(&mut spans, max, self.cx.cfg.oversize);
            let mut ckpt = t.read - t.carry.len() as u64;
            if !self.deferrals.is_empty() {
                if let Some(granted) = self.grant(t, spans.len()) {
                    // Throttled: the lines past the grant stay on disk, read
                    // again once the window ends.
                    let kept = granted.checked_sub(1).map_or(0, |i| line_end(&chunk, spans[i]));
                    spans.truncate(granted);
                    t.read = base + (start + kept) as u64;
                    t.carry.clear();
                    let from = t.read.saturating_sub(TAIL_BYTES);
                    t.last = read_at(&t.shared.file, from, (t.read - from) as usize).unwrap_or_default();
                    ckpt = t.read;
                    if spans.is_empty() {
                        t.shared.read.store(t.read, Ordering::Release);
                        return Ok(0);
                    }
                }
            }
            self.emit(
                t,
                Lines {
                    chunk,
                    spans,
                    dropped,
                    may_hold_breaks: false,
                },
                base + start as u64,
                ckpt,
            )?;
        } else {
            t.carry.extend_from_slice(&self.scratch[start..]);
            self.scratch.clear();
        }
        if t.carry.len() >= max {
            // A line longer than the limit without its newline yet: send
            // its head now, skip the rest up to the newline.
            let offset = t.read - t.carry.len() as u64;
            let lines = overlong(&t.carry[..max], self.cx.cfg.oversize);
            t.carry.clear();
            t.discarding = true;
            let ckpt = t.read;
            self.emit(t, lines, offset, ckpt)?;
        }
        t.shared.read.store(t.read, Ordering::Release);
        Ok(n)
    }

    /// Keeps the file's first bytes (its fingerprint) up to date while the
    /// file is shorter than the fingerprint length.
    fn extend_head(&self, t: &Tracked) {
        let want = self.cx.cfg.fingerprint_bytes.0 as usize;
        let mut head = Shared::lock(&t.shared.head);
        if head.len() < want && t.read > head.len() as u64 {
            if let Ok(h) = read_at(&t.shared.file, 0, want) {
                *head = h;
            }
        }
    }

    /// Sends one chunk's lines in the file's format. `ckpt` is the offset
    /// every byte before which is accounted for once this batch is
    /// delivered.
    fn emit(&mut self, t: &mut Tracked, lines: Lines, chunk_offset: u64, ckpt: u64) -> Result<(), PipelineClosed> {
        if matches!(t.unwrap, Unwrap::Undetected) {
            t.unwrap = detect(&lines, self.cx.cfg.partial_max_bytes.0 as usize);
        }
        let now = Instant::now();
        let ack = t.acks.group.next();
        let seq = ack.seq();
        let ctx = t.ctx.clone();
        let mut ckpt = ckpt;
        let dropped = lines.dropped;
        let res = match (&mut t.unwrap, &mut t.multiline) {
            (Unwrap::Undetected | Unwrap::Lines, None) => self.cx.out().and_then(|o| o.blocking_send_lines(lines, ctx, Some(ack))),
            (Unwrap::Undetected | Unwrap::Lines, Some(ml)) => {
                let batch = ml.regroup(Multiline::records_of(&lines, chunk_offset), now);
                drop(lines);
                ckpt = ml.pending_start().map_or(ckpt, |p| p.min(ckpt));
                multiline::metrics::record(&self.cx.source, ml.take_stats());
                let (hint, decode) = multiline::decode_of(batch, &ctx);
                self.cx.send_decoded(ctx, ack, hint, decode)
            }
            (Unwrap::Cri(r), ml) => {
                let mut batch = r.unwrap(&lines, chunk_offset, now);
                ckpt = r.pending_start().map_or(ckpt, |p| p.min(ckpt));
                if let Some(ml) = ml {
                    batch = ml.regroup(batch, now);
                    ckpt = ml.pending_start().map_or(ckpt, |p| p.min(ckpt));
                    multiline::metrics::record(&self.cx.source, ml.take_stats());
                }
                self.stats.add(r.take_stats());
                let hint = batch.payload_bytes() + batch.records.len() * (ctx.fragment.spliced_len() + 64);
                self.cx
                    .send_decoded(ctx.clone(), ack, hint, move |d, o| batch.decode(d, &ctx.fragment, o))
            }
            (Unwrap::Docker(r), Some(ml)) => {
                let batch = multiline::docker_records(r.unwrap(&lines, chunk_offset, now), chunk_offset);
                ckpt = r.pending_start().map_or(ckpt, |p| p.min(ckpt));
                let batch = ml.regroup(batch, now);
                ckpt = ml.pending_start().map_or(ckpt, |p| p.min(ckpt));
                multiline::metrics::record(&self.cx.source, ml.take_stats());
                self.stats.add(r.take_stats());
                let (hint, decode) = multiline::decode_of(batch, &ctx);
                self.cx.send_decoded(ctx, ack, hint, decode)
            }
            (Unwrap::Docker(r), None) => {
                let batch = r.unwrap(&lines, chunk_offset, now);
                ckpt = r.pending_start().map_or(ckpt, |p| p.min(ckpt));
                self.stats.add(r.take_stats());
                let hint = batch.wrapper_bytes() + batch.records.len() * (ctx.fragment.spliced_len() + 16);
                self.cx
                    .send_decoded(ctx.clone(), ack, hint, move |d, o| batch.decode(d, &ctx.fragment, o))
            }
        };
        if dropped > 0 && (t.multiline.is_some() || !matches!(t.unwrap, Unwrap::Lines | Unwrap::Undetected)) {
            metrics()
                .events_dropped
                .with_label_values(&[&self.cx.source, "line_too_long"])
                .inc_by(dropped);
        }
        t.acks.note_sent(seq, ckpt);
        res
    }

    /// Sends partial lines that waited longer than `timeout` (all of them
    /// when zero).
    fn flush_partials(&mut self, t: &mut Tracked, timeout: Duration) -> Result<(), PipelineClosed> {
        let now = Instant::now();
        // Either format's expired lines: where the unread part of the file
        // starts, a size hint, and how to decode them.
        let expired: Option<(Option<u64>, usize, ContainerDecode)> = match &mut t.unwrap {
            Unwrap::Cri(r) => r.take_expired(now, timeout).map(|batch| {
                self.stats.add(r.take_stats());
                // Expired pieces are lines too: multiline sees them in order.
                let batch = match &mut t.multiline {
                    Some(ml) => ml.regroup(batch, now),
                    None => batch,
                };
                let hint = batch.payload_bytes() + 256;
                (
                    r.pending_start(),
                    hint,
                    Box::new(move |d: &mut Decoder, f: &Fragment, o: &mut BatchBuilder| batch.decode(d, f, o)) as ContainerDecode,
                )
            }),
            Unwrap::Docker(r) => r.take_expired(now, timeout).map(|batch| {
                self.stats.add(r.take_stats());
                let hint = batch.wrapper_bytes() + 256;
                let decode = match &mut t.multiline {
                    // Expired pieces are lines too: multiline sees them in order.
                    Some(ml) => {
                        let batch = ml.regroup(multiline::docker_records(batch, 0), now);
                        Box::new(move |d: &mut Decoder, f: &Fragment, o: &mut BatchBuilder| batch.decode(d, f, o)) as ContainerDecode
                    }
                    None => Box::new(move |d: &mut Decoder, f: &Fragment, o: &mut BatchBuilder| batch.decode(d, f, o)) as ContainerDecode,
                };
                (r.pending_start(), hint, decode)
            }),
            _ => None,
        };
        let Some((pending_start, hint, decode)) = expired else {
            return Ok(());
        };
        let ckpt = t.before_open_group((t.read - t.carry.len() as u64).min(pending_start.unwrap_or(u64::MAX)));
        let ack = t.acks.group.next();
        let seq = ack.seq();
        let ctx = t.ctx.clone();
        let fragment = ctx.clone();
        let res = self.cx.send_decoded(ctx, ack, hint, move |d, o| decode(d, &fragment.fragment, o));
        t.acks.note_sent(seq, ckpt);
        res
    }

    /// Sends multiline groups that waited past their timeout (all of them
    /// with `end`: the file is finished).
    fn flush_multiline(&mut self, t: &mut Tracked, end: bool) -> Result<(), PipelineClosed> {
        let Some(ml) = &mut t.multiline else { return Ok(()) };
        let batch = ml.take_expired(Instant::now(), end);
        multiline::metrics::record(&self.cx.source, ml.take_stats());
        let Some(batch) = batch else { return Ok(()) };
        let pending = t.pending_start().unwrap_or(u64::MAX);
        let ckpt = t.before_open_group((t.read - t.carry.len() as u64).min(pending));
        let ack = t.acks.group.next();
        let seq = ack.seq();
        let (hint, decode) = multiline::decode_of(batch, &t.ctx);
        let res = self.cx.send_decoded(t.ctx.clone(), ack, hint, decode);
        t.acks.note_sent(seq, ckpt);
        res
    }

    fn on_eof(&mut self, t: &mut Tracked) -> Result<(), PipelineClosed> {
        let now = Instant::now();
        let since = *t.eof_since.get_or_insert(now);
        if t.shared.idle_since_ms.load(Ordering::Acquire) == 0 {
            let ms = now.duration_since(self.cx.started).as_millis() as u64;
            t.shared.idle_since_ms.store(ms.max(1), Ordering::Release);
        }
        if t.has_partials() {
            self.flush_partials(t, self.cx.cfg.partial_timeout)?;
        }
        if t.multiline_open() {
            self.flush_multiline(t, false)?;
        }
        if t.last_stat.is_some_and(|s| now.duration_since(s) < STAT_EVERY) && !self.cx.cfg.stop_at_eof {
            return Ok(());
        }
        t.last_stat = Some(now);
        let stat = match FileStat::of_file(&t.shared.file) {
            Ok(s) => s,
            Err(_) => return Ok(()),
        };
        if stat.size < t.read {
            self.truncated(t, stat.size);
            return Ok(());
        }
        if stat.size > t.read {
            // Grew between the read and the stat: next turn reads it.
            return Ok(());
        }
        let deleted = stat.nlink == 0;
        let rotated = t.shared.rotated.load(Ordering::Acquire);
        let waited = now.duration_since(since);
        if self.cx.cfg.stop_at_eof {
            self.finish(t, Disposal::Keep, true)?;
        } else if t.finishing || ((deleted || rotated) && waited >= self.cx.cfg.rotate_wait) {
            let kind = rotation_kind(&t.shared, deleted);
            FileMetrics::get().rotations.with_label_values(&[&self.cx.source, kind]).inc();
            tracing::debug!(source = %self.cx.source, path = %t.shared.path().display(), offset = t.read, kind, "finished a rotated file");
            self.finish(t, Disposal::Forget, true)?;
        } else if t.shared.park.load(Ordering::Acquire)
            && waited >= PARK_IDLE
            && t.carry.is_empty()
            && !t.has_partials()
            && !t.multiline_open()
        {
            self.finish(t, Disposal::Keep, false)?;
        }
        Ok(())
    }

    /// Stops reading a file: with `flush`, its last line (even without a
    /// newline) and pending pieces go out first.
    fn finish(&mut self, t: &mut Tracked, disposal: Disposal, flush: bool) -> Result<(), PipelineClosed> {
        if flush {
            if !t.carry.is_empty() && !t.discarding {
                let carry = std::mem::take(&mut t.carry);
                let max = self.cx.cfg.max_line_bytes.0 as usize;
                let lines = if carry.len() > max {
                    overlong(&carry[..max], self.cx.cfg.oversize)
                } else {
                    let len = carry.len() as u32;
                    Lines {
                        chunk: Bytes::from(carry),
                        spans: vec![LineSpan {
                            start: 0,
                            len,
                            truncated: false,
                        }],
                        dropped: 0,
                        may_hold_breaks: false,
                    }
                };
                let offset = t.read - lines.chunk.len() as u64;
                let ckpt = t.read;
                self.emit(t, lines, offset, ckpt)?;
            }
            self.flush_partials(t, Duration::ZERO)?;
            self.flush_multiline(t, true)?;
        }
        t.closed = Some(disposal);
        Ok(())
    }

    /// The file shrank below what was read: logrotate `copytruncate` (or a
    /// writer that truncated it). What was read but not yet delivered, and
    /// what was written but not yet read, live on in the copy: find it by
    /// fingerprint next to the file and finish it there. The file itself is
    /// read again from its start.
    fn truncated(&mut self, t: &mut Tracked, size: u64) {
        let m = FileMetrics::get();
        m.truncations.with_label_values(&[&self.cx.source]).inc();
        m.rotations.with_label_values(&[&self.cx.source, "truncate"]).inc();
        let path = t.shared.path();
        let old_head = Shared::lock(&t.shared.head).clone();
        let copy = path.parent().and_then(|dir| {
            find_copy(
                dir,
                &old_head,
                t.read,
                &t.last,
                &self.cx.registry.lock().unwrap_or_else(|e| e.into_inner()),
            )
        });
        tracing::info!(source = %self.cx.source, path = %path.display(), read = t.read, size, copy = copy.as_ref().map(|c| tracing::field::display(c.3.display())), "file truncated; reading it again from the start");
        let dup = match t.shared.file.try_clone() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot duplicate the file handle; closing it");
                t.closed = Some(Disposal::Forget);
                return;
            }
        };
        let mut reg = self.cx.registry.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = reg.add(dup, t.shared.key, t.shared.btime, path.clone(), Vec::new(), 0, 0);
        let fresh = Tracked::new(
            NewFile {
                shared: fresh,
                finishing: false,
            },
            &self.cx,
        );
        let mut old = std::mem::replace(t, fresh);
        old.shared.checkpointable.store(false, Ordering::Release);
        reg.retired.push(super::shared::Retired {
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            head: old_head.clone(),
            read: old.read,
            at: Instant::now(),
        });
        match copy {
            Some((file, stat, _, copy_path)) => {
                let b = reg.add(file, stat.key, stat.btime, copy_path, old_head, old.read, old.acks.acked);
                *Shared::lock(&old.shared.done) = Some(Disposal::Forget);
                reg.remove(old.shared.id);
                old.shared = b;
                old.finishing = true;
                old.eof_since = None;
                old.last_stat = None;
                m.resumed.with_label_values(&[&self.cx.source]).inc();
            }
            None => {
                old.closed = Some(Disposal::Forget);
            }
        }
        drop(reg);
        self.spawned.push(old);
    }
}

/// Marks a closed file whose batches are all acknowledged as done; the
/// scanner then writes or forgets its entry and drops it.
fn finished(t: &mut Tracked) -> bool {
    let Some(disposal) = t.closed else { return false };
    t.acks.poll(&t.shared);
    if !t.acks.pending.is_empty() {
        return false;
    }
    let disposal = if t.acks.stuck { Disposal::Keep } else { disposal };
    *Shared::lock(&t.shared.done) = Some(disposal);
    true
}

/// A copy of a truncated file in `dir`: same first bytes, at least `read`
/// bytes long, and the bytes before `read` are the ones that were read.
fn find_copy(dir: &Path, head: &[u8], read: u64, last: &[u8], reg: &Registry) -> Option<(File, FileStat, u64, PathBuf)> {
    if head.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(stat) = FileStat::of_path(&path) else { continue };
        if !stat.regular || stat.size < read || reg.tracks(&stat.key) {
            continue;
        }
        let Ok(file) = File::open(&path) else { continue };
        let Ok(h) = read_at(&file, 0, head.len()) else { continue };
        if h != head || is_compressed(&path, &h) {
            continue;
        }
        let Ok(tail) = read_at(&file, read - last.len() as u64, last.len()) else {
            continue;
        };
        if tail == last {
            return Some((file, stat, read, path));
        }
    }
    None
}

/// How a file that is finished at its end left its path. A rotated file
/// that was compressed (deleted) before it was closed was still rotated:
/// it was seen under another name, or another file now holds its path.
/// Only a deleted file with nothing in its place was deleted.
fn rotation_kind(shared: &Shared, deleted: bool) -> &'static str {
    let taken = || FileStat::of_path(&shared.path()).is_ok_and(|st| st.key != shared.key);
    if !deleted || shared.renamed.load(Ordering::Acquire) || taken() {
        "rename"
    } else {
        "delete"
    }
}

/// Format detection from the first line of a file.
fn detect(lines: &Lines, partial_max: usize) -> Unwrap {
    let first = (0..lines.len()).map(|i| lines.line(i)).find(|l| !l.is_empty());
    match first {
        Some(l) if cri::parse(l).is_some() => Unwrap::Cri(CriReader::new(partial_max)),
        Some(l) if docker::split(l).is_some() => Unwrap::Docker(DockerReader::new(partial_max)),
        Some(_) => Unwrap::Lines,
        None => Unwrap::Undetected,
    }
}

/// Where the line at `span` ends in `chunk`, after its newline (a line
/// cut short by the length limit ends at its newline all the same).
fn line_end(chunk: &[u8], span: LineSpan) -> usize {
    let from = span.start as usize;
    memchr::memchr(b'\n', &chunk[from..]).map_or(chunk.len(), |i| from + i + 1)
}

/// Keeps the last `TAIL_BYTES` bytes read.
fn remember_last(last: &mut Vec<u8>, data: &[u8]) {
    let keep = TAIL_BYTES as usize;
    if data.len() >= keep {
        last.clear();
        last.extend_from_slice(&data[data.len() - keep..]);
    } else {
        last.extend_from_slice(data);
        if last.len() > keep {
            last.drain(..last.len() - keep);
        }
    }
}

/// The head of an overlong line as one flagged line (or a dropped count).
fn overlong(head: &[u8], policy: OverflowPolicy) -> Lines {
    match policy {
        OverflowPolicy::Truncate => Lines {
            chunk: Bytes::copy_from_slice(head),
            spans: vec![LineSpan {
                start: 0,
                len: head.len() as u32,
                truncated: true,
            }],
            dropped: 0,
            may_hold_breaks: false,
        },
        OverflowPolicy::Drop => Lines {
            chunk: Bytes::new(),
            spans: Vec::new(),
            dropped: 1,
            may_hold_breaks: false,
        },
    }
}

/// Applies the line limit to complete lines; returns how many it dropped.
fn enforce_limit(spans: &mut Vec<LineSpan>, max: usize, policy: OverflowPolicy) -> u64 {
    let max = max as u32;
    if spans.iter().all(|s| s.len <= max) {
        return 0;
    }
    match policy {
        OverflowPolicy::Truncate => {
            for s in spans.iter_mut().filter(|s| s.len > max) {
                s.len = max;
                s.truncated = true;
            }
            0
        }
        OverflowPolicy::Drop => {
            let before = spans.len();
            spans.retain(|s| s.len <= max);
            (before - spans.len()) as u64
        }
    }
}

/// `pread` of up to `max` bytes at `offset`, appended to `buf` without
/// zero-filling it first.
fn pread_into(file: &File, buf: &mut BytesMut, max: usize, offset: u64) -> std::io::Result<usize> {
    buf.reserve(max);
    loop {
        let spare = buf.spare_capacity_mut();
        let len = spare.len().min(max);
        // SAFETY: `spare` is valid for writes of `len` bytes; pread writes
        // at most that many and returns how many it wrote.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), len, offset as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        // SAFETY: the first `n` bytes of the spare capacity were just
        // initialised by pread.
        unsafe { buf.set_len(buf.len() + n) };
        return Ok(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_bytes_window_keeps_the_most_recent() {
        let mut last = Vec::new();
        remember_last(&mut last, b"abc");
        remember_last(&mut last, &[b'x'; 70]);
        assert_eq!(last.len(), 64);
        remember_last(&mut last, b"yz");
        assert_eq!(&last[62..], b"yz");
    }

    #[test]
    fn pread_appends_after_existing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = File::open(&p).unwrap();
        let mut buf = BytesMut::from(&b"ab"[..]);
        assert_eq!(pread_into(&f, &mut buf, 4, 3).unwrap(), 4);
        assert_eq!(&buf[..], b"ab3456");
        assert_eq!(pread_into(&f, &mut buf, 4, 10).unwrap(), 0);
    }
}
