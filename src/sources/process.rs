//! `type = "process"` and `sluice run -- CMD ARGS`: runs a command with its
//! log router attached, the Procfile way. Its stdout and stderr become two
//! event streams carrying process metadata (`process.pid`,
//! `process.command`, `process.type`, and `stream`); SIGTERM and SIGINT
//! sent to sluice are forwarded to the command's process group; when the
//! command exits and its output is drained, the pipeline drains and
//! `sluice run` exits with the command's exit code.

use serde::Deserialize;
use serde_json::Value;
use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::signal::unix::{signal, SignalKind};

use super::{SourceComponent, SourceCx, SourceError, SourceErrorKind};
use crate::config::{duration, ByteSize, ConfigError, Validate};
use crate::enrich::{ProcessInfo, SourceContext};
use crate::framing::{LineFramer, Lines, OverflowPolicy, DEFAULT_MAX_LINE_BYTES};
use crate::multiline::{LineStage, MultilineConfig};
use crate::pipeline::{PipelineClosed, ShutdownSignal, Task};

/// Default wait, after the command exited, for its output pipes to close.
/// A background child that inherited them may keep them open forever.
const DEFAULT_EXIT_DRAIN: Duration = Duration::from_secs(2);

/// When the pipeline shuts down without a signal having been forwarded
/// (a sink failed), the command gets SIGTERM after this pause. The pause
/// lets a SIGTERM sent to sluice reach the forwarder first, so the command
/// sees it once.
const SHUTDOWN_TERM_DELAY: Duration = Duration::from_millis(200);

/// After SIGTERM to the background processes still holding the output,
/// how long to wait for them to let go.
const BACKGROUND_EXIT_WAIT: Duration = Duration::from_millis(500);

/// The name `sluice run` gives its source.
pub(crate) const RUN_SOURCE_NAME: &str = "app";

/// How the command ended, as the source saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandExit {
    /// It ran and exited (or was killed by a signal).
    Exited(ExitStatus),
    /// It could not be started.
    NotStarted(std::io::ErrorKind),
}

impl CommandExit {
    /// The exit code a shell would give: the command's own code, 128 plus
    /// the signal that killed it, 127 when it was not found, 126 when it
    /// could not be executed.
    pub(crate) fn code(&self) -> u8 {
        match self {
            CommandExit::Exited(s) => match (s.code(), s.signal()) {
                (Some(c), _) => c as u8,
                (None, Some(sig)) => (128 + sig).min(255) as u8,
                (None, None) => 1,
            },
            CommandExit::NotStarted(std::io::ErrorKind::NotFound) => 127,
            CommandExit::NotStarted(std::io::ErrorKind::PermissionDenied) => 126,
            CommandExit::NotStarted(_) => 1,
        }
    }
}

/// Where a process source reports how its command ended. Not part of the
/// config's meaning: two configs that differ only here are equal.
#[derive(Clone, Default)]
pub(crate) struct ExitSlot(Arc<OnceLock<CommandExit>>);

impl ExitSlot {
    /// How the command ended, once it has.
    pub(crate) fn get(&self) -> Option<CommandExit> {
        self.0.get().copied()
    }

    fn set(&self, exit: CommandExit) {
        let _ = self.0.set(exit);
    }
}

impl PartialEq for ExitSlot {
    fn eq(&self, _: &ExitSlot) -> bool {
        true
    }
}

impl std::fmt::Debug for ExitSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ExitSlot").field(&self.get()).finish()
    }
}

/// Settings of the process source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The program and its arguments (no shell; use `["sh", "-c", "…"]`).
    pub(crate) command: Vec<String>,
    /// `process.type` of its events (web, worker, clock); defaults to
    /// `enrich.process_type`.
    #[serde(default)]
    pub(crate) process_type: Option<String>,
    /// Longest line kept whole.
    #[serde(default = "default_max_line_bytes")]
    pub(crate) max_line_bytes: ByteSize,
    /// What happens to a longer line: `truncate` or `drop`.
    #[serde(default)]
    pub(crate) oversize: OverflowPolicy,
    /// After the command exits, how long to wait for its output pipes to
    /// close; then processes it left in its process group (which hold them
    /// open) get SIGTERM.
    #[serde(default = "default_exit_drain", deserialize_with = "duration")]
    pub(crate) exit_drain: Duration,
    /// Lines that belong together (stack traces) become one event, per
    /// output stream (see docs/multiline.md).
    #[serde(default)]
    pub(crate) multiline: Option<MultilineConfig>,
    /// Filled in when the command has ended.
    #[serde(skip)]
    pub(crate) exit: ExitSlot,
}

fn default_max_line_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_LINE_BYTES as u64)
}

fn default_exit_drain() -> Duration {
    DEFAULT_EXIT_DRAIN
}

impl ProcessConfig {
    /// A config for `command`, with defaults.
    pub(crate) fn new(command: Vec<String>, process_type: Option<String>) -> ProcessConfig {
        ProcessConfig {
            command,
            process_type,
            max_line_bytes: default_max_line_bytes(),
            oversize: OverflowPolicy::Truncate,
            exit_drain: DEFAULT_EXIT_DRAIN,
            multiline: None,
            exit: ExitSlot::default(),
        }
    }
}

impl Validate for ProcessConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.command.first().is_none_or(|p| p.is_empty()) {
            errors.push(ConfigError::at(
                path,
                "command",
                "needs the program to run, like [\"bin/web\", \"--port\", \"8080\"]",
            ));
        }
        self.multiline.validate(path, errors);
    }
}

impl SourceComponent for ProcessConfig {
    /// Starts the command when the task first runs.
    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let cfg = self.clone();
        Ok(Box::pin(run_source(cfg, cx)))
    }
}

async fn run_source(cfg: ProcessConfig, cx: SourceCx) -> Result<(), SourceError> {
    // Listen before the command starts, so no signal is missed.
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(error), _) | (_, Err(error)) => {
            return Err(SourceError::new(
                &cx.name,
                SourceErrorKind::Io {
                    action: "install signal handlers",
                    error,
                },
            ))
        }
    };
    let program = cfg.command[0].clone();
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&cfg.command[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches sluice only,
        // which forwards it once (not twice).
        .process_group(0)
        .kill_on_drop(true);
    // In a background process group, reading a terminal would stop the
    // command (SIGTTIN); a pipe or file is fine.
    if std::io::stdin().is_terminal() {
        command.stdin(Stdio::null());
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            cfg.exit.set(CommandExit::NotStarted(e.kind()));
            return Err(SourceError::new(
                &cx.name,
                SourceErrorKind::Command {
                    action: "start",
                    program,
                    error: e,
                },
            ));
        }
    };
    let pid = child.id();
    let info = ProcessInfo {
        pid,
        command: Some(cfg.command.join(" ")),
    };
    tracing::info!(source = %cx.name, pid, command = %cfg.command.join(" "), "started the command");
    let context = |stream: &str| {
        let mut meta = cx.enrich.metadata(Some(&info));
        if let Some(t) = cfg.process_type.as_deref().filter(|t| !t.is_empty()) {
            if let Some(Value::Object(p)) = meta.get_mut("process") {
                p.insert("type".into(), Value::String(t.into()));
            }
        }
        meta.insert("stream".into(), Value::String(stream.into()));
        Arc::new(SourceContext::new(cx.name.clone(), "process", stream.into(), meta))
    };
    let (out_ctx, err_ctx) = (context("stdout"), context("stderr"));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let readers = async { tokio::join!(read_pipe(stdout, out_ctx, &cfg, &cx), read_pipe(stderr, err_ctx, &cfg, &cx)) };
    tokio::pin!(readers);
    let mut readers_done = false;
    let mut shutdown: ShutdownSignal = cx.shutdown.clone();
    let mut shutdown_seen = false;
    let mut forwarded = false;
    let term_delay = tokio::time::sleep(Duration::MAX);
    tokio::pin!(term_delay);
    let forward = |sig: libc::c_int| {
        if let Some(pid) = pid {
            // SAFETY: kill(2) with a negative pid signals the process group
            // the command leads; no memory is involved.
            unsafe { libc::kill(-(pid as libc::pid_t), sig) };
        }
    };
    let status = loop {
        tokio::select! {
            _ = &mut readers, if !readers_done => readers_done = true,
            status = child.wait() => break status,
            _ = term.recv() => {
                forwarded = true;
                tracing::info!(source = %cx.name, "forwarding SIGTERM to the command");
                forward(libc::SIGTERM);
            }
            _ = int.recv() => {
                forwarded = true;
                tracing::info!(source = %cx.name, "forwarding SIGINT to the command");
                forward(libc::SIGINT);
            }
            _ = shutdown.wait(), if !shutdown_seen => {
                shutdown_seen = true;
                term_delay.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_TERM_DELAY);
            }
            _ = &mut term_delay, if shutdown_seen => {
                term_delay.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
                if !forwarded {
                    forwarded = true;
                    tracing::info!(source = %cx.name, "pipeline stopping: sending SIGTERM to the command");
                    forward(libc::SIGTERM);
                }
            }
        }
    };
    let status = match status {
        Ok(s) => s,
        Err(error) => {
            return Err(SourceError::new(
                &cx.name,
                SourceErrorKind::Command {
                    action: "wait for",
                    program,
                    error,
                },
            ))
        }
    };
    let exit = CommandExit::Exited(status);
    tracing::info!(source = %cx.name, code = exit.code(), "the command exited");
    if !readers_done {
        let drained = tokio::time::timeout(cfg.exit_drain, &mut readers).await.is_ok();
        if !drained {
            // Background processes of the command hold its output open:
            // they go with it, as when a supervisor stops a process type.
            tracing::warn!(source = %cx.name, "the command exited but processes it started still hold its output; sending them SIGTERM");
            forward(libc::SIGTERM);
            if tokio::time::timeout(BACKGROUND_EXIT_WAIT, &mut readers).await.is_err() {
                tracing::warn!(source = %cx.name, "its output is still open; not waiting longer");
            }
        }
    }
    cfg.exit.set(exit);
    Ok(())
}

/// Reads one pipe to its end, line by line into the pipeline.
async fn read_pipe<R: AsyncRead + Unpin>(pipe: Option<R>, ctx: Arc<SourceContext>, cfg: &ProcessConfig, cx: &SourceCx) {
    let Some(mut pipe) = pipe else { return };
    let mut framer = LineFramer::new(cfg.max_line_bytes.0 as usize, cfg.oversize);
    let mut stage = match cfg.multiline.as_ref().map(|m| super::compile_multiline(m, &cx.name)) {
        Some(Ok(c)) => Some(LineStage::new(&c, cx.name.clone())),
        Some(Err(error)) => {
            tracing::error!(source = %cx.name, %error, "multiline rules do not compile; lines are sent as they are");
            None
        }
        None => None,
    };
    loop {
        let read = pipe.read_buf(framer.buf_mut());
        let wait = stage.as_ref().and_then(LineStage::next_timeout);
        let result = match wait {
            // An open multiline group leaves after its timeout even when
            // the command writes nothing more (read_buf is cancel safe).
            Some(wait) => tokio::select! {
                r = read => Some(r),
                _ = tokio::time::sleep(wait) => None,
            },
            None => Some(read.await),
        };
        let Some(result) = result else {
            if let Some(s) = stage.as_mut() {
                if s.flush(&cx.output, &ctx, false).await.is_err() {
                    return;
                }
            }
            continue;
        };
        match result {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(source = %cx.name, stream = %ctx.stream, %error, "reading the command's output failed");
                break;
            }
        }
        while let Some(lines) = framer.take_lines() {
            if send(&mut stage, lines, &ctx, cx).await.is_err() {
                return;
            }
        }
    }
    while let Some(lines) = framer.finish() {
        if send(&mut stage, lines, &ctx, cx).await.is_err() {
            return;
        }
    }
    if let Some(s) = stage.as_mut() {
        let _ = s.flush(&cx.output, &ctx, true).await;
    }
}

/// Sends lines through the multiline stage when there is one.
async fn send(stage: &mut Option<LineStage>, lines: Lines, ctx: &Arc<SourceContext>, cx: &SourceCx) -> Result<(), PipelineClosed> {
    match stage {
        Some(s) => s.send(&cx.output, lines, ctx).await,
        None => cx.output.send_lines(lines, ctx.clone(), None).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(CommandExit::Exited(ExitStatus::from_raw(3 << 8)).code(), 3);
        assert_eq!(CommandExit::Exited(ExitStatus::from_raw(libc::SIGTERM)).code(), 143);
        assert_eq!(CommandExit::NotStarted(std::io::ErrorKind::NotFound).code(), 127);
    }
}
