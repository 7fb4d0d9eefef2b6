//! `sluice replay`: a one-off backfill of existing files (plain or gzip,
//! told apart by their magic bytes) through the sinks of a config. The
//! config's sources are ignored; the files are the only source. Every batch
//! carries an [`Acknowledger`](crate::event::Acknowledger), so the report
//! says exactly how many lines every sink delivered.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::enrich::SourceContext;
use crate::event::{AckGroup, AckOutcome};
use crate::framing::{LineFramer, OverflowPolicy, DEFAULT_MAX_LINE_BYTES};
use crate::pipeline::{ShutdownSignal, SourceOutput, Task};
use crate::sources::{SourceCx, SourceError, SourceErrorKind};
use crate::topology::{self, Config, RunError, RunOptions};

/// The two bytes every gzip member starts with (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The source name replayed events carry (`sluice_source_events_total`).
const SOURCE_NAME: &str = "replay";

/// How often plain progress lines are written when stderr is not a terminal.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(2);

/// How often the progress bar is redrawn on a terminal.
const PROGRESS_BAR_EVERY: Duration = Duration::from_millis(100);

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    /// A progress bar (stderr is a terminal).
    Bar,
    /// A plain line every few seconds and after each file (logs, CI).
    Lines,
    /// Nothing but the final summary.
    Quiet,
}

/// What to replay and where.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The files, in the order they are read.
    pub paths: Vec<PathBuf>,
    /// The sinks to send to, by name; every sink of the config when empty.
    pub sinks: Vec<String>,
    /// How progress is shown.
    pub progress: ProgressStyle,
}

/// Why a replay could not start or was cut short.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A file cannot be opened (checked for every file before anything is
    /// sent).
    #[error("cannot open {path}: {error}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A path is a directory or a device, not a file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// No path was given.
    #[error("no file to replay")]
    NoFiles,
    /// `--sink` named a sink the config does not have.
    #[error("no sink named {name:?} in the config (it has: {known})")]
    UnknownSink {
        /// The name given.
        name: String,
        /// The config's sinks, comma-separated.
        known: String,
    },
    /// A sink or the reader could not start.
    #[error(transparent)]
    Start(Box<RunError>),
}

/// What a replay did. Lines are counted as framed (one event per line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Files read to the end.
    pub files_done: usize,
    /// Bytes read from disk (compressed bytes for gzip files).
    pub bytes_read: u64,
    /// Lines read and sent.
    pub lines: u64,
    /// Lines every sink delivered (or wrote to its disk buffer).
    pub delivered: u64,
    /// Lines a sink dropped by its own policy (`drop_newest`, rejected).
    pub dropped: u64,
    /// Lines not delivered: a sink failed, or shutdown cut the drain short.
    pub abandoned: u64,
    /// Lines cut at the line limit (delivered, truncated).
    pub truncated: u64,
    /// Files that could not be read to the end, with the reason.
    pub read_errors: Vec<String>,
    /// Sinks that failed, or a drain cut short, with the reason.
    pub sink_errors: Vec<String>,
    /// A signal stopped the replay (reading, or waiting for the sinks).
    pub interrupted: bool,
}

impl ReplayReport {
    /// Lines read but not delivered by every sink.
    pub fn undelivered(&self) -> u64 {
        self.dropped + self.abandoned
    }

    /// True when every line of every file was read and delivered.
    pub fn all_delivered(&self) -> bool {
        self.undelivered() == 0 && self.read_errors.is_empty() && self.sink_errors.is_empty() && !self.interrupted
    }
}

/// Counters the reader updates and the progress display reads.
#[derive(Debug, Default)]
struct ProgressState {
    bytes: AtomicU64,
    lines: AtomicU64,
    /// Index of the file being read; `paths.len()` once all are read.
    file: AtomicUsize,
}

/// Sends every line of `opts.paths` through the sinks of `config` and
/// reports what was delivered. The files are a source of the topology's
/// one lifecycle: it stops reading at SIGINT, SIGTERM or a failed sink,
/// then drains for at most `shutdown_timeout`.
pub async fn replay(mut config: Config, opts: ReplayOptions) -> Result<ReplayReport, ReplayError> {
    if opts.paths.is_empty() {
        return Err(ReplayError::NoFiles);
    }
    // Every file is checked before anything is sent: a typo in the last
    // path must not leave a half-done backfill.
    let mut total_bytes = 0u64;
    for path in &opts.paths {
        let meta = std::fs::metadata(path).map_err(|error| ReplayError::Open { path: path.clone(), error })?;
        if !meta.is_file() {
            return Err(ReplayError::NotAFile { path: path.clone() });
        }
        File::open(path).map_err(|error| ReplayError::Open { path: path.clone(), error })?;
        total_bytes += meta.len();
    }
    let chosen = choose_sinks(&config, &opts.sinks)?;
    // The files are the only input and feed every chosen sink. A one-off
    // backfill serves no API (a running sluice may hold its address) and
    // keeps no SLI or [[metrics]] series.
    config.sources.clear();
    config.sinks.retain(|name, _| chosen.contains(name));
    for spec in config.sinks.values_mut() {
        spec.inputs = None;
    }
    config.api.enabled = false;
    config.sli.clear();
    config.metrics.clear();

    let (group, mut completions) = AckGroup::new();
    let state = Arc::new(ProgressState::default());
    let tally = Arc::new(Mutex::new(ReadOutcome::default()));
    let files = Files {
        paths: opts.paths.clone(),
        group,
        state: state.clone(),
        tally: tally.clone(),
    };
    let options = RunOptions {
        reloader: None,
        source: Some((SOURCE_NAME.to_owned(), Box::new(move |cx| files.start(cx)))),
    };
    let display = ProgressDisplay::start(opts.progress, opts.paths.clone(), total_bytes, state.clone());
    let end = topology::run_to_end(config, options)
        .await
        .map_err(|e| ReplayError::Start(Box::new(e)))?;
    display.finish();

    let outcome = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    let mut report = ReplayReport {
        files_done: outcome.files_done,
        bytes_read: state.bytes.load(Ordering::Relaxed),
        truncated: outcome.truncated,
        read_errors: outcome.read_errors,
        sink_errors: end.failures.iter().map(ToString::to_string).collect(),
        interrupted: end.signalled,
        ..ReplayReport::default()
    };
    // Count outcomes per line. A batch with no completion (a sink still
    // holding it after the timeout) is not delivered.
    let mut outcomes: Vec<Option<AckOutcome>> = vec![None; outcome.line_counts.len()];
    while let Ok(c) = completions.try_recv() {
        if let Some(slot) = outcomes.get_mut(c.seq as usize) {
            *slot = Some(c.outcome);
        }
    }
    for (lines, outcome) in outcome.line_counts.iter().zip(outcomes) {
        report.lines += lines;
        match outcome {
            Some(AckOutcome::Delivered) => report.delivered += lines,
            Some(AckOutcome::Dropped) => report.dropped += lines,
            Some(AckOutcome::Abandoned) | None => report.abandoned += lines,
        }
    }
    Ok(report)
}

fn choose_sinks(config: &Config, wanted: &[String]) -> Result<Vec<String>, ReplayError> {
    if wanted.is_empty() {
        return Ok(config.sinks.keys().cloned().collect());
    }
    let mut chosen = Vec::new();
    for name in wanted {
        if !config.sinks.contains_key(name) {
            return Err(ReplayError::UnknownSink {
                name: name.clone(),
                known: config.sinks.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        if !chosen.contains(name) {
            chosen.push(name.clone());
        }
    }
    Ok(chosen)
}

/// What the reader thread did, shared so that it can be counted even if
/// the thread is still stuck behind a sink at the end.
#[derive(Debug, Default)]
struct ReadOutcome {
    /// Lines per batch, indexed by the batch's acknowledgement sequence.
    line_counts: Vec<u64>,
    truncated: u64,
    files_done: usize,
    read_errors: Vec<String>,
}

/// The files as a source: a thread reads them in order (reads and
/// decompression block), and the source ends when it has.
struct Files {
    paths: Vec<PathBuf>,
    group: AckGroup,
    state: Arc<ProgressState>,
    tally: Arc<Mutex<ReadOutcome>>,
}

impl Files {
    fn start(self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let reader = Reader {
            output: cx.output,
            shutdown: cx.shutdown,
            group: self.group,
            state: self.state,
            meta: cx.enrich.metadata(None),
            tally: self.tally,
        };
        let paths = self.paths;
        let handle = tokio::runtime::Handle::current();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("sluice-replay".into())
            .spawn(move || {
                let _guard = handle.enter();
                reader.read_all(&paths);
                let _ = done_tx.send(());
            })
            .map_err(|error| {
                SourceError::new(
                    &cx.name,
                    SourceErrorKind::Io {
                        action: "start the reader thread",
                        error,
                    },
                )
            })?;
        let name = cx.name;
        Ok(Box::pin(async move {
            done_rx
                .await
                .map_err(|_| SourceError::new(&name, SourceErrorKind::ThreadDied("reader")))
        }))
    }
}

struct Reader {
    output: SourceOutput,
    shutdown: ShutdownSignal,
    group: AckGroup,
    state: Arc<ProgressState>,
    meta: serde_json::Map<String, serde_json::Value>,
    tally: Arc<Mutex<ReadOutcome>>,
}

impl Reader {
    /// Reads the files one after the other. Runs on its own thread: reads
    /// and decompression block.
    fn read_all(self, paths: &[PathBuf]) {
        for (i, path) in paths.iter().enumerate() {
            self.state.file.store(i, Ordering::Relaxed);
            let result = self.read_file(path);
            let mut tally = self.tally();
            match result {
                Ok(true) => tally.files_done += 1,
                Ok(false) => break,
                Err(e) => tally.read_errors.push(format!("{}: {e}", path.display())),
            }
        }
        self.state.file.store(paths.len(), Ordering::Relaxed);
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, ReadOutcome> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends every line of one file. `Ok(false)` when shutdown stopped it.
    fn read_file(&self, path: &Path) -> std::io::Result<bool> {
        let file = CountingReader {
            inner: File::open(path)?,
            state: self.state.clone(),
        };
        let mut buffered = BufReader::with_capacity(64 * 1024, file);
        let gzip = buffered.fill_buf()?.starts_with(&GZIP_MAGIC);
        let mut input: Box<dyn Read> = if gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        let ctx = Arc::new(SourceContext::new(
            SOURCE_NAME.into(),
            "replay",
            path.display().to_string(),
            self.meta.clone(),
        ));
        let mut framer = LineFramer::new(DEFAULT_MAX_LINE_BYTES, OverflowPolicy::Truncate);
        loop {
            if self.shutdown.is_set() {
                return Ok(false);
            }
            let n = match framer.fill_from(&mut input) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // What was framed before the damage is still sent.
                    while let Some(lines) = framer.take_lines() {
                        self.send(lines, &ctx);
                    }
                    return Err(e);
                }
            };
            if n == 0 {
                break;
            }
            while let Some(lines) = framer.take_lines() {
                if !self.send(lines, &ctx) {
                    return Ok(false);
                }
            }
        }
        if let Some(lines) = framer.finish() {
            if !self.send(lines, &ctx) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends one framed chunk with an acknowledger. False when the
    /// pipeline is gone.
    fn send(&self, lines: crate::framing::Lines, ctx: &Arc<SourceContext>) -> bool {
        if lines.is_empty() {
            return true;
        }
        let n = lines.len() as u64;
        let ack = self.group.next();
        {
            let mut tally = self.tally();
            tally.truncated += lines.spans.iter().filter(|s| s.truncated).count() as u64;
            // Sequence numbers start at 0 and grow by one: they index this.
            debug_assert_eq!(ack.seq() as usize, tally.line_counts.len());
            tally.line_counts.push(n);
        }
        self.state.lines.fetch_add(n, Ordering::Relaxed);
        // On failure the acknowledger is dropped unarmed: abandoned.
        self.output.blocking_send_lines(lines, ctx.clone(), Some(ack)).is_ok()
    }
}

/// Counts the bytes read from disk, for progress on compressed files too.
struct CountingReader {
    inner: File,
    state: Arc<ProgressState>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The progress display: a task that redraws from [`ProgressState`].
struct ProgressDisplay {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<indicatif::ProgressBar>,
    style: ProgressStyle,
    total: u64,
    paths: Vec<PathBuf>,
    state: Arc<ProgressState>,
    started: Instant,
}

impl ProgressDisplay {
    fn start(style: ProgressStyle, paths: Vec<PathBuf>, total: u64, state: Arc<ProgressState>) -> ProgressDisplay {
        let bar = (style == ProgressStyle::Bar).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
            if let Ok(s) = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta}) {msg}",
            ) {
                bar.set_style(s);
            }
            bar
        });
        let task = match style {
            ProgressStyle::Quiet => None,
            ProgressStyle::Bar => {
                let (bar, state, paths) = (bar.clone(), state.clone(), paths.clone());
                Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(PROGRESS_BAR_EVERY);
                    loop {
                        tick.tick().await;
                        if let Some(bar) = &bar {
                            bar.set_position(state.bytes.load(Ordering::Relaxed));
                            bar.set_message(bar_message(&state, &paths));
                        }
                    }
                }))
            }
            ProgressStyle::Lines => {
                let (state, paths) = (state.clone(), paths.clone());
                Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(PROGRESS_LINE_EVERY);
                    tick.tick().await;
                    let mut last_file = 0;
                    loop {
                        // A line every interval, and one as each file ends.
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                if state.file.load(Ordering::Relaxed) == last_file {
                                    continue;
                                }
                            }
                        }
                        last_file = state.file.load(Ordering::Relaxed);
                        // The last line is the one `finish` writes.
                        if last_file < paths.len() {
                            eprintln!("{}", progress_line(&state, &paths, total));
                        }
                    }
                }))
            }
        };
        ProgressDisplay {
            task,
            bar,
            style,
            total,
            paths,
            state,
            started: Instant::now(),
        }
    }

    fn finish(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        match (&self.bar, self.style) {
            (Some(bar), _) => {
                bar.set_position(self.state.bytes.load(Ordering::Relaxed));
                bar.finish_with_message(format!("read in {:.1?}", self.started.elapsed()));
                // The bar's line has no newline of its own.
                eprintln!();
            }
            (None, ProgressStyle::Lines) => eprintln!("{}", progress_line(&self.state, &self.paths, self.total)),
            _ => {}
        }
    }
}

impl Drop for ProgressDisplay {
    /// A replay that could not start leaves no redraw behind.
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn bar_message(state: &ProgressState, paths: &[PathBuf]) -> String {
    let file = state.file.load(Ordering::Relaxed);
    let lines = state.lines.load(Ordering::Relaxed);
    match paths.get(file) {
        Some(p) => format!("{lines} lines, {}/{} {}", file + 1, paths.len(), p.display()),
        None => format!("{lines} lines, draining"),
    }
}

fn progress_line(state: &ProgressState, paths: &[PathBuf], total: u64) -> String {
    let bytes = state.bytes.load(Ordering::Relaxed);
    let file = state.file.load(Ordering::Relaxed);
    let pct = if total == 0 { 100.0 } else { bytes as f64 * 100.0 / total as f64 };
    let at = match paths.get(file) {
        Some(p) => format!("reading {}", p.display()),
        None => "all files read".to_owned(),
    };
    format!(
        "replay: {}/{} files, {} of {} ({pct:.0}%), {} lines; {at}",
        file.min(paths.len()),
        paths.len(),
        human_bytes(bytes),
        human_bytes(total),
        state.lines.load(Ordering::Relaxed)
    )
}

fn human_bytes(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

impl std::fmt::Display for ReplayReport {
    /// The summary printed at the end: what was read, what was delivered,
    /// and what was not, with the reasons.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replay: {} file(s), {} read, {} line(s); {} delivered",
            self.files_done,
            human_bytes(self.bytes_read),
            self.lines,
            self.delivered
        )?;
        if self.undelivered() > 0 {
            write!(
                f,
                ", {} NOT delivered ({} dropped by a sink's policy, {} abandoned)",
                self.undelivered(),
                self.dropped,
                self.abandoned
            )?;
        }
        if self.truncated > 0 {
            write!(f, ", {} truncated at the line limit", self.truncated)?;
        }
        if self.interrupted {
            write!(f, "\nreplay: interrupted by a signal")?;
        }
        for e in &self.read_errors {
            write!(f, "\nreplay: read error: {e}")?;
        }
        for e in &self.sink_errors {
            write!(f, "\nreplay: sink error: {e}")?;
        }
        Ok(())
    }
}
