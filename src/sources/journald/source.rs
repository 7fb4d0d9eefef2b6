//! The running source: the journal read through libsystemd on a thread of
//! its own, or `journalctl` as a child process and its export output,
//! rendered into batches; and the acknowledged cursor checkpointed.
//!
//! At-least-once: every batch carries an acknowledger and the cursor of its
//! last entry; the checkpoint moves to a batch's cursor only when it and
//! every batch before it were delivered (or dropped by a sink's policy). An
//! abandoned batch freezes the checkpoint, so after a restart reading
//! starts after the last cursor that was fully delivered: entries may come
//! twice, never not at all.

use bytes::{Buf, BytesMut};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::config::JournaldConfig;
use super::cursor::CursorFile;
use super::entry::RenderOptions;
use super::library::{Change, Journal, JournalError};
use super::reader::{EntryReader, RawEntries, ReadStats};
use crate::enrich::SourceContext;
use crate::event::{AckGroup, AckOutcome, AckReceiver, AckWindow};
use crate::framing::{LineSpan, Lines, READ_CHUNK_BYTES};
use crate::sources::{SourceCx, SourceError, SourceErrorKind};
use crate::telemetry::counter_vec;

/// How long a read waits for more of journalctl's output before it renders
/// what it has. journalctl writes 4 KiB at a time; a batch per write cost
/// more than the entries in it (BENCHMARKS.md, "journald: reads gathered").
const GATHER_WINDOW: Duration = Duration::from_millis(5);

/// Output gathered before it is rendered without waiting out the window.
const GATHER_BYTES: usize = READ_CHUNK_BYTES / 2;

/// Pause before journalctl is started again after it exited on its own.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Most of journalctl's stderr kept for an error message.
const STDERR_TAIL_BYTES: usize = 2048;

/// Reads what journalctl has written into `buf` (0 at its end).
async fn read_more(stdout: &mut tokio::process::ChildStdout, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    stdout.read_buf(buf).await
}

/// Keeps reading for up to [`GATHER_WINDOW`], or until [`GATHER_BYTES`] are
/// in `buf`. True when journalctl's output ended (or failed: the next read
/// reports how).
async fn gather(stdout: &mut tokio::process::ChildStdout, buf: &mut BytesMut) -> bool {
    let deadline = tokio::time::Instant::now() + GATHER_WINDOW;
    while buf.len() < GATHER_BYTES {
        match tokio::time::timeout_at(deadline, read_more(stdout, buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) => return true,
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return false,
        }
    }
    false
}

/// journald source metrics, registered once.
struct JournaldMetrics {
    /// `sluice_journald_entries_total{source,outcome}`: `sent`,
    /// `excluded`, `unreadable`.
    entries: prometheus::IntCounterVec,
    /// `sluice_journald_truncated_total{source}`.
    truncated: prometheus::IntCounterVec,
    /// `sluice_journald_restarts_total{source}`.
    restarts: prometheus::IntCounterVec,
}

fn metrics() -> &'static JournaldMetrics {
    static M: OnceLock<JournaldMetrics> = OnceLock::new();
    M.get_or_init(|| JournaldMetrics {
        entries: counter_vec(
            "sluice_journald_entries_total",
            "Journal entries read, by outcome (sent, excluded, unreadable: fields libsystemd could not read, skipped).",
            &["source", "outcome"],
        ),
        truncated: counter_vec(
            "sluice_journald_truncated_total",
            "Journal entries larger than max_entry_bytes, sent with their fields up to it.",
            &["source"],
        ),
        restarts: counter_vec(
            "sluice_journald_restarts_total",
            "Times the journal reader (journalctl, or libsystemd) stopped on its own while following and was started again.",
            &["source"],
        ),
    })
}

/// Cursors of batches in flight, by acknowledgement sequence number.
pub(crate) type InFlight = Arc<Mutex<BTreeMap<u64, String>>>;

/// Runs the source until journalctl ends (without `follow`), shutdown,
/// or a failure.
pub(crate) async fn run(cfg: JournaldConfig, cx: SourceCx, file: CursorFile, start: Option<String>) -> Result<(), SourceError> {
    let (group, rx) = AckGroup::new();
    let in_flight: InFlight = Arc::default();
    let (stop_tx, stop_rx) = oneshot::channel();
    let tracker = tokio::spawn(track(
        rx,
        in_flight.clone(),
        file,
        cfg.checkpoint_interval,
        cx.name.clone(),
        stop_rx,
        None,
    ));
    let ctx = Arc::new(SourceContext::new(
        cx.name.clone(),
        "journald",
        cfg.journal_directory
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "journal".into()),
        cx.enrich.metadata(None),
    ));
    let batches = Batches {
        cx: &cx,
        group: &group,
        in_flight: &in_flight,
        ctx,
    };
    let result = if cfg.uses_library() {
        read_library(&cfg, &batches, start).await
    } else {
        read_journal(&cfg, &batches, start).await
    };
    // No new batch from here: the tracker ends when the last one in
    // flight completes, writing the final checkpoint.
    drop(group);
    let mut tracker = tracker;
    if tokio::time::timeout(cfg.drain_timeout, &mut tracker).await.is_err() {
        tracing::warn!(source = %cx.name, "sinks did not acknowledge everything within drain_timeout; unacknowledged entries will be read again");
        let _ = stop_tx.send(());
        let _ = tracker.await;
    }
    result
}

/// Where rendered entries go: the pipeline, each batch with an
/// acknowledger and the cursor of its last entry.
struct Batches<'a> {
    cx: &'a SourceCx,
    group: &'a AckGroup,
    in_flight: &'a InFlight,
    ctx: Arc<SourceContext>,
}

/// What [`Batches::deliver`] did.
enum Delivered {
    /// No entry was consumed.
    Nothing,
    /// A batch (maybe of excluded entries only) is on its way; its last
    /// entry's cursor.
    Batch(String),
    /// The pipeline is shutting down.
    Closed,
}

impl Batches<'_> {
    /// Counts what `st` says and sends the rendered entries with an
    /// acknowledger that moves the checkpoint to `cursor`.
    async fn deliver(&self, out: Vec<u8>, spans: Vec<LineSpan>, st: &ReadStats, cursor: Option<String>) -> Delivered {
        let m = metrics();
        let name = &*self.cx.name;
        m.entries.with_label_values(&[name, "sent"]).inc_by(st.rendered);
        if st.excluded > 0 {
            m.entries.with_label_values(&[name, "excluded"]).inc_by(st.excluded);
        }
        if st.truncated > 0 {
            m.truncated.with_label_values(&[name]).inc_by(st.truncated);
        }
        if st.unreadable > 0 {
            m.entries.with_label_values(&[name, "unreadable"]).inc_by(st.unreadable);
        }
        let Some(cursor) = cursor else { return Delivered::Nothing };
        let ack = self.group.next();
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ack.seq(), cursor.clone());
        if spans.is_empty() {
            // Every entry was excluded: nothing to deliver, but the
            // checkpoint may move past them once earlier batches are done.
            ack.expect(0);
            return Delivered::Batch(cursor);
        }
        let lines = Lines {
            chunk: out.into(),
            spans,
            dropped: 0,
            may_hold_breaks: false,
        };
        match self.cx.output.send_lines(lines, self.ctx.clone(), Some(ack)).await {
            Ok(_) => Delivered::Batch(cursor),
            Err(_) => Delivered::Closed,
        }
    }

    fn reader(&self, cfg: &JournaldConfig) -> EntryReader {
        let opts = RenderOptions {
            host: !self.cx.enrich.disable_host,
        };
        EntryReader::new(cfg.max_entry_bytes.0 as usize, cfg.excluded_units(), opts)
    }

    fn fatal(&self, kind: SourceErrorKind) -> SourceError {
        SourceError::new(&self.cx.name, kind)
    }

    /// Counts a restart of the reader and waits [`RESTART_PAUSE`] before
    /// it; false when the source is shutting down instead.
    async fn pause_before_restart(&self, shutdown: &mut crate::pipeline::ShutdownSignal) -> bool {
        metrics().restarts.with_label_values(&[&self.cx.name]).inc();
        tokio::select! {
            _ = shutdown.wait() => false,
            _ = tokio::time::sleep(RESTART_PAUSE) => true,
        }
    }
}

/// What the library reader's thread sends.
enum Read {
    /// Entries read, not yet rendered.
    Batch(RawEntries),
    /// Reading failed; the thread has ended.
    Failed(JournalError),
    /// The end of the journal, without `follow`.
    End,
}

/// How long one wait for new entries lasts before the thread checks that
/// the source still wants them.
const WAIT_SLICE: Duration = Duration::from_millis(250);

/// Reads the journal through libsystemd on a thread of its own; opens it
/// again after the last cursor read if reading fails while following.
async fn read_library(cfg: &JournaldConfig, batches: &Batches<'_>, start: Option<String>) -> Result<(), SourceError> {
    let cx = batches.cx;
    let mut last_read = start;
    let mut entries_seen = false;
    let mut shutdown = cx.shutdown.clone();
    let mut reader = batches.reader(cfg);
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let (c, after) = (cfg.clone(), last_read.clone());
        std::thread::Builder::new()
            .name(format!("journald-{}", cx.name))
            .spawn({
                let source = cx.name.clone();
                move || read_entries(&c, &source, after, &tx)
            })
            .map_err(|error| {
                batches.fatal(SourceErrorKind::Io {
                    action: "start the journal reader thread",
                    error,
                })
            })?;
        tracing::info!(source = %cx.name, after_cursor = last_read.as_deref().unwrap_or(""), "reading the journal through libsystemd");
        let failed = loop {
            let read = tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(()),
                r = rx.recv() => r,
            };
            match read {
                Some(Read::Batch(raw)) => {
                    // A recycled buffer: the pipeline hands it back once decoded.
                    let mut out = crate::framing::spare_buffer(raw.buf.len() + raw.buf.len() / 2);
                    let mut spans = Vec::with_capacity(raw.entries.len());
                    let st = reader.render_raw(&raw, &mut out, &mut spans);
                    crate::framing::recycle(raw.buf.into());
                    match batches.deliver(out, spans, &st, raw.cursor).await {
                        Delivered::Nothing => {}
                        Delivered::Batch(cursor) => {
                            entries_seen = true;
                            last_read = Some(cursor);
                        }
                        Delivered::Closed => return Ok(()),
                    }
                }
                Some(Read::End) => {
                    tracing::info!(source = %cx.name, "reached the end of the journal");
                    return Ok(());
                }
                Some(Read::Failed(e)) => break e,
                None => return Err(batches.fatal(SourceErrorKind::ThreadDied("journal reader"))),
            }
        };
        if !cfg.follow || !entries_seen {
            return Err(batches.fatal(SourceErrorKind::Io {
                action: failed.action,
                error: failed.error,
            }));
        }
        tracing::warn!(source = %cx.name, error = %failed, "reading the journal failed; opening it again after the last entry read");
        if !batches.pause_before_restart(&mut shutdown).await {
            return Ok(());
        }
    }
}

/// The reader thread: opens the journal with the settings' matches,
/// positions it after `after` (or where the settings say to start), and
/// sends batches of about [`GATHER_BYTES`] of entries, or what there is
/// once it caught up, until the receiver is gone. The source's task
/// renders them, so reading and rendering run on two cores.
fn read_entries(cfg: &JournaldConfig, source: &str, after: Option<String>, tx: &tokio::sync::mpsc::Sender<Read>) {
    let end = match read_entries_until_failure(cfg, source, after, tx) {
        Ok(()) => Read::End,
        Err(e) => Read::Failed(e),
    };
    let _ = tx.blocking_send(end);
}

fn read_entries_until_failure(
    cfg: &JournaldConfig,
    source: &str,
    after: Option<String>,
    tx: &tokio::sync::mpsc::Sender<Read>,
) -> Result<(), JournalError> {
    let mut journal = Journal::open(cfg.journal_directory.as_deref())?;
    if journal.usage() == 0 {
        tracing::warn!(
            source,
            "no journal file could be opened: is the journal there, and may this user read it (root, or the systemd-journal group)?"
        );
    }
    journal.set_data_threshold(cfg.max_entry_bytes.0 as usize)?;
    let groups = cfg.match_groups().map_err(|error| JournalError {
        action: "read the running boot's id",
        error,
    })?;
    for group in &groups {
        for m in group {
            journal.add_match(m.as_bytes())?;
        }
        journal.add_conjunction()?;
    }
    // Entries at and before the cursor were read; the cursor's own entry is
    // skipped only if it is still there (a vacuumed one is not).
    let mut skip = after;
    match &skip {
        Some(c) => journal.seek_cursor(c)?,
        None if cfg.since_now => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            journal.seek_realtime(now)?
        }
        None => journal.seek_head()?,
    }
    let max_entry = cfg.max_entry_bytes.0 as usize;
    loop {
        // A recycled buffer: the source's task hands it back once rendered.
        let mut raw = RawEntries {
            buf: crate::framing::spare_buffer(GATHER_BYTES + max_entry.min(GATHER_BYTES)),
            ..RawEntries::default()
        };
        let mut caught_up = false;
        while raw.buf.len() < GATHER_BYTES {
            if !journal.next()? {
                caught_up = true;
                break;
            }
            if let Some(c) = skip.take() {
                if journal.is_at(&c) {
                    continue;
                }
            }
            if let Some((cursor, error)) = raw.push(&mut journal, max_entry)? {
                tracing::warn!(source, %cursor, %error, "skipping a journal entry whose fields cannot be read");
            }
        }
        if raw.cursor.is_some() && tx.blocking_send(Read::Batch(raw)).is_err() {
            return Ok(());
        }
        if !caught_up {
            continue;
        }
        if !cfg.follow {
            return Ok(());
        }
        while journal.wait(WAIT_SLICE)? == Change::Nothing {
            if tx.is_closed() {
                return Ok(());
            }
        }
    }
}

/// Starts journalctl and reads it; starts it again after the last cursor
/// read if it exits while following.
async fn read_journal(cfg: &JournaldConfig, batches: &Batches<'_>, start: Option<String>) -> Result<(), SourceError> {
    let cx = batches.cx;
    let fatal = |kind: SourceErrorKind| batches.fatal(kind);
    let mut last_read = start;
    let mut entries_seen = false;
    let mut shutdown = cx.shutdown.clone();
    let mut reader = batches.reader(cfg);
    loop {
        let args = cfg.journalctl_args(last_read.as_deref());
        let mut child = Command::new(&cfg.journalctl_path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                fatal(SourceErrorKind::Command {
                    action: "start",
                    program: cfg.journalctl_path.display().to_string(),
                    error,
                })
            })?;
        tracing::info!(source = %cx.name, after_cursor = last_read.as_deref().unwrap_or(""), "reading the journal through journalctl");
        let stderr = collect_stderr(&mut child, cx.name.clone());
        let Some(mut stdout) = child.stdout.take() else {
            return Err(fatal(SourceErrorKind::ThreadDied("journalctl stdout")));
        };
        crate::framing::widen_pipe(std::os::fd::AsRawFd::as_raw_fd(&stdout));
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let mut stopped = false;
        let mut ended = false;
        while !ended {
            let n = tokio::select! {
                biased;
                _ = shutdown.wait() => { stopped = true; break }
                r = read_more(&mut stdout, &mut buf) => match r {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        tracing::warn!(source = %cx.name, %error, "reading journalctl's output failed");
                        0
                    }
                },
            };
            if n == 0 {
                break;
            }
            ended = gather(&mut stdout, &mut buf).await;
            // A recycled buffer: the pipeline hands it back once decoded.
            let mut out = crate::framing::spare_buffer(buf.len() + buf.len() / 2);
            let mut spans = Vec::new();
            let st = reader.read(&buf, &mut out, &mut spans);
            let cursor = st.last_cursor.clone().map(|c| String::from_utf8_lossy(&buf[c]).into_owned());
            buf.advance(st.consumed);
            match batches.deliver(out, spans, &st, cursor).await {
                Delivered::Nothing => {}
                Delivered::Batch(cursor) => {
                    entries_seen = true;
                    last_read = Some(cursor);
                }
                Delivered::Closed => {
                    stopped = true;
                    break;
                }
            }
        }
        drop(stdout);
        if stopped {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Ok(());
        }
        let status = child.wait().await.map_err(|error| {
            fatal(SourceErrorKind::Command {
                action: "wait for",
                program: cfg.journalctl_path.display().to_string(),
                error,
            })
        })?;
        let stderr = stderr.await.unwrap_or_default();
        if !cfg.follow && status.success() {
            tracing::info!(source = %cx.name, "journalctl reached the end of the journal");
            return Ok(());
        }
        if !cfg.follow || !entries_seen {
            // A setting journalctl rejects (a bad directory or cursor) fails
            // the same way every time: stop rather than loop.
            return Err(fatal(SourceErrorKind::Journalctl {
                status: status.to_string(),
                stderr,
            }));
        }
        tracing::warn!(source = %cx.name, %status, %stderr, "journalctl exited; starting it again after the last entry read");
        if !batches.pause_before_restart(&mut shutdown).await {
            return Ok(());
        }
    }
}

/// Logs journalctl's stderr line by line; the task's result is the tail.
fn collect_stderr(child: &mut Child, source: Arc<str>) -> JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut tail = String::new();
        let Some(stderr) = stderr else { return tail };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::warn!(source = %source, message = %line, "journalctl");
            if tail.len() + line.len() < STDERR_TAIL_BYTES {
                if !tail.is_empty() {
                    tail.push_str("; ");
                }
                tail.push_str(&line);
            }
        }
        tail
    })
}

/// Called with each cursor the checkpoint moves to.
pub(crate) type OnAcked = Box<dyn Fn(&str) + Send>;

/// Moves the checkpoint over the contiguous prefix of completed batches
/// and writes it every `interval` and when the last batch is done (or
/// `stop` says so); tells `on_acked` each time it moves.
pub(crate) async fn track(
    mut rx: AckReceiver,
    in_flight: InFlight,
    file: CursorFile,
    interval: Duration,
    source: Arc<str>,
    mut stop: oneshot::Receiver<()>,
    on_acked: Option<OnAcked>,
) {
    let mut window = AckWindow::default();
    let mut frozen = false;
    let mut acked: Option<String> = None;
    let mut saved: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            c = rx.recv() => {
                let Some(c) = c else { break };
                for (seq, outcome) in window.complete(c) {
                    let cursor = in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
                    if outcome == AckOutcome::Abandoned && !frozen {
                        frozen = true;
                        tracing::warn!(source = %source, "a batch was not delivered; the checkpoint stays before it until restart");
                    }
                    if let (false, Some(c)) = (frozen, cursor) {
                        if let Some(f) = &on_acked {
                            f(&c);
                        }
                        acked = Some(c);
                    }
                }
            }
            _ = tick.tick() => save(&file, &acked, &mut saved, &source).await,
            _ = &mut stop => break,
        }
    }
    save(&file, &acked, &mut saved, &source).await;
}

/// Writes `acked` if it moved since the last write.
async fn save(file: &CursorFile, acked: &Option<String>, saved: &mut Option<String>, source: &str) {
    let Some(cursor) = acked.clone().filter(|c| saved.as_ref() != Some(c)) else {
        return;
    };
    let f = file.clone();
    let c = cursor.clone();
    match tokio::task::spawn_blocking(move || f.save(&c)).await {
        Ok(Ok(())) => *saved = Some(cursor),
        Ok(Err(error)) => tracing::warn!(source = %source, %error, "cannot write the cursor checkpoint; retrying at the next interval"),
        Err(error) => tracing::warn!(source = %source, %error, "the cursor write task failed"),
    }
}
