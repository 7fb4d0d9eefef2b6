//! `type = "stdin"`: the development pipe, `app | sluice`.

use serde::Deserialize;
use std::sync::Arc;

use super::{SourceComponent, SourceCx, SourceError, SourceErrorKind};
use crate::config::{ByteSize, ConfigError, Validate};
use crate::enrich::{ProcessInfo, SourceContext};
use crate::framing::{LineFramer, Lines, OverflowPolicy, DEFAULT_MAX_LINE_BYTES};
use crate::multiline::{LineStage, MultilineConfig};
use crate::pipeline::Task;

/// How often the reader looks at the shutdown flag while stdin is idle.
const IDLE_POLL_MS: i32 = 100;

/// Settings of the stdin source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StdinConfig {
    /// Longest line kept whole.
    pub(crate) max_line_bytes: ByteSize,
    /// What happens to a longer line: `truncate` or `drop`.
    pub(crate) oversize: OverflowPolicy,
    /// Look up the process writing into the pipe (through `/proc`) and add
    /// its pid and command line as process metadata.
    pub(crate) detect_writer: bool,
    /// Lines that belong together (stack traces) become one event (see
    /// docs/multiline.md).
    pub(crate) multiline: Option<MultilineConfig>,
}

impl Default for StdinConfig {
    fn default() -> Self {
        StdinConfig {
            max_line_bytes: ByteSize(DEFAULT_MAX_LINE_BYTES as u64),
            oversize: OverflowPolicy::Truncate,
            detect_writer: true,
            multiline: None,
        }
    }
}

/// Serde checks everything stdin has.
impl Validate for StdinConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        self.multiline.validate(path, errors);
    }
}

impl SourceComponent for StdinConfig {
    /// Starts a reader thread on fd 0. It stops at end of input or when
    /// shutdown is asked (checked at least every 100 ms).
    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let cfg = self.clone();
        let name = cx.name.clone();
        let handle = tokio::runtime::Handle::current();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sluice-stdin".into())
            .spawn(move || {
                let _guard = handle.enter();
                let _ = done_tx.send(read_loop(&cfg, &cx));
            })
            .map_err(|error| {
                SourceError::new(
                    &name,
                    SourceErrorKind::Io {
                        action: "start the stdin reader thread",
                        error,
                    },
                )
            })?;
        Ok(Box::pin(async move {
            done_rx
                .await
                .unwrap_or_else(|_| Err(SourceError::new(&name, SourceErrorKind::ThreadDied("stdin reader"))))
        }))
    }
}

fn read_loop(cfg: &StdinConfig, cx: &SourceCx) -> Result<(), SourceError> {
    let fatal = |error| {
        SourceError::new(
            &cx.name,
            SourceErrorKind::Io {
                action: "read stdin",
                error,
            },
        )
    };
    crate::framing::widen_pipe(0);
    let writer = if cfg.detect_writer { pipe_writer(0) } else { None };
    let meta = cx.enrich.metadata(writer.as_ref());
    let ctx = Arc::new(SourceContext::new(cx.name.clone(), "stdin", String::new(), meta));
    let mut framer = LineFramer::new(cfg.max_line_bytes.0 as usize, cfg.oversize);
    let mut stage = match &cfg.multiline {
        Some(m) => Some(LineStage::new(&super::compile_multiline(m, &cx.name)?, cx.name.clone())),
        None => None,
    };
    let send = |stage: &mut Option<LineStage>, lines: Lines| match stage {
        Some(s) => s.blocking_send(&cx.output, lines, &ctx),
        None => cx.output.blocking_send_lines(lines, ctx.clone(), None),
    };
    loop {
        if cx.shutdown.is_set() {
            break;
        }
        // An open multiline group leaves once no line joined it for its
        // timeout, even when no more input comes.
        if let Some(s) = stage.as_mut().filter(|s| s.next_timeout().is_some_and(|d| d.is_zero())) {
            if s.blocking_flush(&cx.output, &ctx, false).is_err() {
                return Ok(());
            }
        }
        match wait_readable(0, IDLE_POLL_MS) {
            Readiness::Idle => continue,
            Readiness::Ready => {}
        }
        let n = match framer.fill_from_fd(0) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fatal(e)),
        };
        if n == 0 {
            break;
        }
        // Take what else is already waiting, up to one chunk, so batches
        // are large when input is fast and immediate when it trickles.
        while framer.pending_bytes() < framer.read_chunk() && matches!(wait_readable(0, 0), Readiness::Ready) {
            match framer.fill_from_fd(0) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fatal(e)),
            }
        }
        while let Some(lines) = framer.take_lines() {
            if send(&mut stage, lines).is_err() {
                return Ok(());
            }
        }
    }
    // What was read is accepted: the last line goes out even without its
    // newline, at EOF and at shutdown alike.
    if let Some(lines) = framer.finish() {
        let _ = send(&mut stage, lines);
    }
    if let Some(s) = stage.as_mut() {
        let _ = s.blocking_flush(&cx.output, &ctx, true);
    }
    Ok(())
}

enum Readiness {
    Ready,
    Idle,
}

fn wait_readable(fd: i32, timeout_ms: i32) -> Readiness {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc == 0 {
        Readiness::Idle
    } else {
        // Ready, hung up, or an error: let read() tell which.
        Readiness::Ready
    }
}

/// The process whose stdout is the pipe on `fd` (the writer in
/// `app | sluice`), found by matching the pipe's inode under `/proc`.
pub(crate) fn pipe_writer(fd: i32) -> Option<ProcessInfo> {
    // SAFETY: fstat fills the struct we pass; the fd is only inspected.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFIFO {
        return None;
    }
    let target = format!("pipe:[{}]", st.st_ino);
    let me = std::process::id();
    // The writer may still be starting; look a few times, briefly.
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let Ok(entries) = std::fs::read_dir("/proc") else { return None };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(link) = std::fs::read_link(entry.path().join("fd/1")) else {
                continue;
            };
            if link.as_os_str() == target.as_str() {
                return Some(ProcessInfo {
                    pid: Some(pid),
                    command: command_line(pid),
                });
            }
        }
    }
    None
}

/// `/proc/<pid>/cmdline` with arguments joined by spaces.
pub(crate) fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let parts: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}
