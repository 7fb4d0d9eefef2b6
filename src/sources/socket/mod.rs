//! `type = "socket"`: unix stream and datagram sockets, TCP (optionally
//! TLS) and UDP, carrying NDJSON or syslog.
//!
//! On unix sockets the peer's credentials from the kernel (SO_PEERCRED on
//! a connection, SCM_CREDENTIALS on each datagram) identify the writing
//! process; `/proc/<pid>` adds its command line and executable and, when
//! asked for, release variables from its environment. That metadata is
//! rendered once per connection (or per sending process) and spliced into
//! every event.
//!
//! Stream connections are read only as fast as the pipeline takes their
//! batches, so a full pipeline stops reading and the sender feels TCP (or
//! unix socket) flow control. Datagram sockets are read only while the
//! pipeline can take more too, so a burst waits in the kernel's receive
//! buffer; past it a unix datagram sender is held back by the kernel, and
//! UDP datagrams are dropped by the kernel and counted
//! (`sluice_events_dropped_total{reason="socket_overflow"}`).

mod datagram;
mod framing;
mod metrics;
mod net;
mod peer;
pub(crate) mod tls;
mod unix;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use framing::fuzz_octet_frames;
pub(crate) use tls::TlsConfig;

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use super::{SourceComponent, SourceCx, SourceError};
use crate::config::{duration, ByteSize, ConfigError, Validate};
use crate::decode::syslog::SyslogDecoder;
use crate::enrich::SourceContext;
use crate::framing::{Lines, OverflowPolicy, DEFAULT_MAX_LINE_BYTES};
use crate::multiline::config::Compiled;
use crate::multiline::{LineStage, MultilineConfig};
use crate::pipeline::{PipelineClosed, ShutdownSignal, SourceOutput, Task};
use crate::telemetry::metrics as core_metrics;
use framing::{ConnFramer, ConnFraming};
use metrics::socket_metrics;

/// Bytes asked for per read on a connection. Large reads keep batches big
/// under load; an idle connection holds no buffer at all (it is allocated
/// when data arrives and released when a read leaves nothing pending).
const CONN_READ_CHUNK: usize = 256 * 1024;

/// Default cap on open connections per source.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default idle timeout: long enough for a quiet app, short enough that
/// abandoned connections do not pile up.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Pause after a failed `accept` (out of file descriptors, say), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Which kind of socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SocketMode {
    /// TCP, newline or octet-counted, optionally TLS; needs `address`.
    Tcp,
    /// UDP, one or more lines per datagram; needs `address`.
    Udp,
    /// A unix stream socket; needs `path`.
    UnixStream,
    /// A unix datagram socket (like `/dev/log`); needs `path`.
    UnixDatagram,
}

/// What the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SocketFormat {
    /// One JSON object per line; anything else is kept as `{"message":…}`.
    #[default]
    Json,
    /// Syslog, RFC 5424 or RFC 3164, parsed into fields.
    Syslog,
}

/// How a stream connection is cut into messages.
///
/// The default, `auto`, is what every config without the key had before
/// `nul` existed (newlines, and octet counting for a syslog connection that
/// starts with a count), plus NUL detection for syslog, where a NUL never
/// occurs in a newline-framed record: existing configs keep working, and
/// glibc's and Python's NUL-terminated unix stream records stay apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StreamFraming {
    /// Newlines; a syslog connection is decided on its first read:
    /// octet counting when it starts with a digit, NUL when a NUL has
    /// arrived, newlines otherwise.
    #[default]
    Auto,
    /// Newlines only.
    Newline,
    /// Each message ends with a NUL; newlines inside a message are kept.
    Nul,
    /// RFC 6587 octet counting (`LEN SP MSG`).
    OctetCounting,
}

/// Settings of the socket source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// `tcp`, `udp`, `unix_stream` or `unix_datagram`.
    pub(crate) mode: SocketMode,
    /// Listen address for `tcp` and `udp` (`0.0.0.0:5140`).
    #[serde(default)]
    pub(crate) address: Option<SocketAddr>,
    /// Socket file for `unix_stream` and `unix_datagram`.
    #[serde(default)]
    pub(crate) path: Option<PathBuf>,
    /// `json` (default) or `syslog`.
    #[serde(default)]
    pub(crate) format: SocketFormat,
    /// Stream framing: `auto` (default), `newline`, `nul` or
    /// `octet_counting`.
    #[serde(default)]
    pub(crate) framing: StreamFraming,
    /// Longest message (line, frame or datagram) kept whole.
    #[serde(default = "default_max_frame_bytes")]
    pub(crate) max_frame_bytes: ByteSize,
    /// What happens to a longer one: `truncate` (default) or `drop`.
    #[serde(default)]
    pub(crate) oversize: OverflowPolicy,
    /// Most connections open at once (stream modes); past it, new
    /// connections are accepted and closed at once, and counted.
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
    /// A connection that sends nothing for this long is closed (`0s`:
    /// never).
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub(crate) idle_timeout: Duration,
    /// TLS for `tcp`.
    #[serde(default)]
    pub(crate) tls: Option<TlsConfig>,
    /// Mode of the socket file, octal (`"0660"`); default `0666`, like
    /// `/dev/log`.
    #[serde(default, deserialize_with = "octal_mode")]
    pub(crate) permissions: Option<u32>,
    /// Owner of the socket file: a user name or uid.
    #[serde(default)]
    pub(crate) owner: Option<String>,
    /// Group of the socket file: a group name or gid.
    #[serde(default)]
    pub(crate) group: Option<String>,
    /// Unix sockets: add the peer's pid, uid, gid, command line and
    /// executable as `process` metadata (default true).
    #[serde(default = "default_true")]
    pub(crate) peer_metadata: bool,
    /// Unix sockets: variables to read from the peer's environment
    /// (`/proc/<pid>/environ`, when permitted). `SLUICE_RELEASE`,
    /// `SLUICE_RELEASE_COMMIT` and `SLUICE_PROCESS_TYPE` fill `release` and
    /// `process.type`; others go to `process.environment`.
    #[serde(default)]
    pub(crate) peer_environment: Vec<String>,
    /// Kernel receive buffer (SO_RCVBUF) for datagram sockets.
    #[serde(default)]
    pub(crate) receive_buffer_bytes: Option<ByteSize>,
    /// Lines that belong together (stack traces) become one event, per
    /// connection (stream modes, `format = "json"`; see docs/multiline.md).
    #[serde(default)]
    pub(crate) multiline: Option<MultilineConfig>,
}

fn default_max_frame_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_LINE_BYTES as u64)
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

fn default_true() -> bool {
    true
}

/// Default mode of a socket file.
const DEFAULT_PERMISSIONS: u32 = 0o666;

fn octal_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u32),
        S(String),
    }
    let mode = match Raw::deserialize(d)? {
        Raw::N(n) => n,
        Raw::S(s) => {
            let digits = s.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8).map_err(|_| serde::de::Error::custom(format!("invalid octal mode {s:?} (like \"0660\")")))?
        }
    };
    if mode > 0o7777 {
        return Err(serde::de::Error::custom(format!("mode {mode:o} is above 7777")));
    }
    Ok(Some(mode))
}

impl Validate for SocketConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let cfg = self;
        let stream = matches!(cfg.mode, SocketMode::Tcp | SocketMode::UnixStream);
        self.multiline.validate(path, errors);
        if self.multiline.is_some() && (!stream || self.format != SocketFormat::Json) {
            errors.push(ConfigError::at(
                path,
                "multiline",
                "works on stream connections (tcp, unix_stream) with format \"json\"; a datagram or a syslog message is one event already",
            ));
        }
        let unix = matches!(cfg.mode, SocketMode::UnixStream | SocketMode::UnixDatagram);
        if unix {
            match &cfg.path {
                None => errors.push(ConfigError::new(format!("{path}.path"), "a unix socket needs `path`")),
                Some(p) if p.as_os_str().len() >= unix::MAX_PATH_BYTES => errors.push(ConfigError::new(
                    format!("{path}.path"),
                    format!("socket paths are limited to {} bytes", unix::MAX_PATH_BYTES - 1),
                )),
                Some(_) => {}
            }
            if cfg.address.is_some() {
                errors.push(ConfigError::new(
                    format!("{path}.address"),
                    "unix sockets use `path`, not `address`",
                ));
            }
        } else {
            if cfg.address.is_none() {
                errors.push(ConfigError::new(
                    format!("{path}.address"),
                    "tcp and udp need `address` (like \"0.0.0.0:5140\")",
                ));
            }
            for (key, set) in [
                ("path", cfg.path.is_some()),
                ("permissions", cfg.permissions.is_some()),
                ("owner", cfg.owner.is_some()),
                ("group", cfg.group.is_some()),
            ] {
                if set {
                    errors.push(ConfigError::new(format!("{path}.{key}"), "only unix sockets have a socket file"));
                }
            }
        }
        if cfg.tls.is_some() && cfg.mode != SocketMode::Tcp {
            errors.push(ConfigError::new(format!("{path}.tls"), "TLS is only for `mode = \"tcp\"`"));
        }
        if !stream && matches!(cfg.framing, StreamFraming::OctetCounting | StreamFraming::Nul) {
            errors.push(ConfigError::new(
                format!("{path}.framing"),
                "`nul` and `octet_counting` are for stream sockets (a datagram is framed by the kernel)",
            ));
        }
        if stream && cfg.max_connections == 0 {
            errors.push(ConfigError::new(format!("{path}.max_connections"), "must be at least 1"));
        }
        if cfg.max_frame_bytes.0 == 0 || cfg.max_frame_bytes.0 > u32::MAX as u64 / 2 {
            errors.push(ConfigError::new(
                format!("{path}.max_frame_bytes"),
                "must be between 1 byte and 2GiB",
            ));
        }
        if !unix && (!cfg.peer_environment.is_empty()) {
            errors.push(ConfigError::new(
                format!("{path}.peer_environment"),
                "peer processes are known on unix sockets only",
            ));
        }
        for (i, name) in cfg.peer_environment.iter().enumerate() {
            if name.is_empty() || name.contains(['=', '\0']) {
                errors.push(ConfigError::new(format!("{path}.peer_environment[{i}]"), "not a variable name"));
            }
        }
    }
}

impl SourceComponent for SocketConfig {
    /// Binds the socket (so a bad address fails at start-up) and starts
    /// the source.
    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        self.start(cx, None)
    }
}

/// Takes a socket's framed messages instead of the decoder: a source built
/// on this receive code (statsd) reads them itself. Called on the socket's
/// task for every burst or connection read; it must not block for long.
pub(crate) trait FrameConsumer: Send + Sync {
    /// Handles the messages of one read; `ctx` names the sender.
    fn consume(&self, lines: &Lines, ctx: &SourceContext);
}

impl SocketConfig {
    /// Binds the socket and starts receiving; with `frames` the framed
    /// messages go there instead of to the pipeline's decode.
    pub(crate) fn start(&self, cx: SourceCx, frames: Option<Arc<dyn FrameConsumer>>) -> Result<Task<SourceError>, SourceError> {
        let name = cx.name.clone();
        let fatal = move |e: SocketError| SourceError::new(&name, e);
        let reader = Arc::new(Reader::new(self, &cx, frames));
        match self.mode {
            SocketMode::Tcp => {
                let addr = self.address.ok_or_else(|| fatal(SocketError::Missing("address")))?;
                let listener = net::bind_tcp(addr).map_err(&fatal)?;
                let tls = match &self.tls {
                    Some(t) => Some(t.acceptor().map_err(&fatal)?),
                    None => None,
                };
                let handshake_timeout = self.tls.as_ref().map(|t| t.handshake_timeout).unwrap_or_default();
                Ok(Box::pin(net::run_tcp(
                    listener,
                    tls,
                    handshake_timeout,
                    reader,
                    self.max_connections,
                    cx,
                )))
            }
            SocketMode::Udp => {
                let addr = self.address.ok_or_else(|| fatal(SocketError::Missing("address")))?;
                let socket = net::bind_udp(addr, self.receive_buffer_bytes).map_err(&fatal)?;
                Ok(Box::pin(datagram::run(
                    datagram::DatagramSocket::Udp(socket),
                    None,
                    self.clone(),
                    reader,
                    cx,
                )))
            }
            SocketMode::UnixStream => {
                let path = self.path.clone().ok_or_else(|| fatal(SocketError::Missing("path")))?;
                let (listener, file) = unix::bind_stream(&path, &self.file_settings()).map_err(&fatal)?;
                Ok(Box::pin(unix::run_stream(listener, file, self.clone(), reader, cx)))
            }
            SocketMode::UnixDatagram => {
                let path = self.path.clone().ok_or_else(|| fatal(SocketError::Missing("path")))?;
                let (socket, file) = unix::bind_datagram(&path, &self.file_settings(), self.receive_buffer_bytes).map_err(&fatal)?;
                Ok(Box::pin(datagram::run(
                    datagram::DatagramSocket::Unix(socket),
                    Some(file),
                    self.clone(),
                    reader,
                    cx,
                )))
            }
        }
    }

    fn file_settings(&self) -> unix::FileSettings {
        unix::FileSettings {
            permissions: self.permissions.unwrap_or(DEFAULT_PERMISSIONS),
            owner: self.owner.clone(),
            group: self.group.clone(),
        }
    }
}

/// Why a socket source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// A setting the mode needs is missing (validation catches this first).
    #[error("`{0}` is not set")]
    Missing(&'static str),
    /// Binding failed.
    #[error("cannot listen on {target}: {error}")]
    Bind {
        /// The address or path.
        target: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The socket file is in use by a running process.
    #[error("{0} is in use: another process is listening on it")]
    InUse(String),
    /// Something other than a socket is at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    /// The socket file's mode or owner could not be set.
    #[error("cannot set {what} of {path}: {error}")]
    FileSettings {
        /// `mode` or `owner`.
        what: &'static str,
        /// The socket path.
        path: String,
        /// What failed.
        error: String,
    },
    /// The TLS material could not be loaded.
    #[error("TLS {file}: {message}")]
    Tls {
        /// The file (or setting) at fault.
        file: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Reads connections and hands their frames to the pipeline. One per
/// source, shared by its connections.
pub(crate) struct Reader {
    name: Arc<str>,
    output: SourceOutput,
    format: SocketFormat,
    framing: StreamFraming,
    max_frame: usize,
    oversize: OverflowPolicy,
    idle_timeout: Option<Duration>,
    /// Set when another source takes the framed messages.
    frames: Option<Arc<dyn FrameConsumer>>,
    /// Each connection's multiline rules.
    multiline: Option<Arc<Compiled>>,
}

impl Reader {
    fn new(cfg: &SocketConfig, cx: &SourceCx, frames: Option<Arc<dyn FrameConsumer>>) -> Reader {
        Reader {
            name: cx.name.clone(),
            output: cx.output.clone(),
            format: cfg.format,
            framing: cfg.framing,
            max_frame: cfg.max_frame_bytes.0 as usize,
            oversize: cfg.oversize,
            idle_timeout: (!cfg.idle_timeout.is_zero()).then_some(cfg.idle_timeout),
            frames,
            multiline: cfg.multiline.as_ref().and_then(|m| match super::compile_multiline(m, &cx.name) {
                Ok(c) => Some(c),
                Err(error) => {
                    tracing::error!(source = %cx.name, %error, "multiline rules do not compile; lines are sent as they are");
                    None
                }
            }),
        }
    }

    fn framer(&self, cut: ConnFraming) -> ConnFramer {
        ConnFramer::new(cut, self.max_frame, self.oversize, CONN_READ_CHUNK)
    }

    /// Decodes framed messages (JSON lines or syslog) and queues them;
    /// waits while the pipeline is full.
    pub(crate) async fn send(&self, lines: Lines, ctx: &Arc<SourceContext>) -> Result<(), PipelineClosed> {
        if let Some(frames) = &self.frames {
            frames.consume(&lines, ctx);
            crate::framing::recycle(lines.chunk);
            return Ok(());
        }
        match self.format {
            SocketFormat::Json => self.output.send_lines(lines, ctx.clone(), None).await,
            SocketFormat::Syslog => {
                if lines.dropped > 0 {
                    core_metrics()
                        .events_dropped
                        .with_label_values(&[&self.name, "line_too_long"])
                        .inc_by(lines.dropped);
                }
                if lines.is_empty() {
                    return Ok(());
                }
                let per_event = ctx.fragment.spliced_len() + 160;
                let size = lines.chunk.len() + lines.len() * per_event;
                let source = self.name.clone();
                let fragment_ctx = ctx.clone();
                self.output
                    .send_decoded(ctx.clone(), None, size, move |decoder, out| {
                        let mut syslog = SyslogDecoder::new(SystemTime::now());
                        for (i, span) in lines.spans.iter().enumerate() {
                            syslog.decode_line(decoder, lines.line(i), span.truncated, &fragment_ctx.fragment, out);
                        }
                        let malformed = syslog.take_malformed();
                        if malformed > 0 {
                            socket_metrics().syslog_malformed.with_label_values(&[&source]).inc_by(malformed);
                        }
                        let truncated = syslog.take_truncated();
                        if truncated > 0 {
                            core_metrics().lines_truncated.with_label_values(&[&source]).inc_by(truncated);
                        }
                    })
                    .await
            }
        }
    }

    /// Reads one connection until it ends, idles out, or shutdown is
    /// asked; what is buffered at the end is sent as the last frame.
    pub(crate) async fn serve(&self, mut conn: Conn, ctx: Arc<SourceContext>, mut shutdown: ShutdownSignal) {
        let mut cut = match self.framing {
            StreamFraming::Auto | StreamFraming::Newline => ConnFraming::Newline,
            StreamFraming::Nul => ConnFraming::Nul,
            StreamFraming::OctetCounting => ConnFraming::OctetCounting,
        };
        let mut undecided = self.framing == StreamFraming::Auto && self.format == SocketFormat::Syslog;
        let mut slot: Option<ConnFramer> = None;
        let mut stage = self.multiline.as_ref().map(|c| LineStage::new(c, self.name.clone()));
        loop {
            let read = conn.read(&mut slot, || self.framer(cut));
            let wait = stage.as_ref().and_then(LineStage::next_timeout);
            let result = tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                // An open multiline group leaves after its timeout even
                // when the peer sends nothing more.
                _ = sleep_for(wait) => {
                    if let Some(s) = stage.as_mut() {
                        if s.flush(&self.output, &ctx, false).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                r = with_timeout(self.idle_timeout, read) => r,
            };
            match result {
                None => {
                    tracing::debug!(source = %self.name, stream = %ctx.stream, "connection idle; closing");
                    break;
                }
                Some(Ok(0)) => break,
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(source = %self.name, stream = %ctx.stream, %error, "connection read failed");
                    break;
                }
            }
            if undecided {
                undecided = false;
                if let Some(mut f) = slot.take() {
                    cut = ConnFraming::detect(f.buf_mut());
                    slot = Some(f.switch_to(cut, self.max_frame, self.oversize, CONN_READ_CHUNK));
                }
            }
            let Some(f) = slot.as_mut() else { continue };
            while let Some(lines) = f.take_lines() {
                if self.send_through(&mut stage, lines, &ctx).await.is_err() {
                    return;
                }
            }
            if f.pending_bytes() == 0 && conn.releases_buffer() {
                slot = None;
            }
        }
        if let Some(mut f) = slot {
            while let Some(lines) = f.finish() {
                if self.send_through(&mut stage, lines, &ctx).await.is_err() {
                    return;
                }
            }
        }
        if let Some(s) = stage.as_mut() {
            let _ = s.flush(&self.output, &ctx, true).await;
        }
    }

    /// [`Reader::send`] through the connection's multiline stage, if any.
    async fn send_through(&self, stage: &mut Option<LineStage>, lines: Lines, ctx: &Arc<SourceContext>) -> Result<(), PipelineClosed> {
        match stage {
            Some(s) => s.send(&self.output, lines, ctx).await,
            None => self.send(lines, ctx).await,
        }
    }
}

/// Sleeps for `wait`, or forever when there is nothing to wait for.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn with_timeout<F: std::future::Future>(limit: Option<Duration>, fut: F) -> Option<F::Output> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// An accepted stream connection.
pub(crate) enum Conn {
    /// Plain TCP.
    Tcp(tokio::net::TcpStream),
    /// A unix stream socket.
    Unix(tokio::net::UnixStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// A socket whose readiness can be awaited without a buffer.
trait ReadyStream {
    async fn ready(&self) -> std::io::Result<()>;
    fn try_read_into(&self, buf: &mut bytes::BytesMut) -> std::io::Result<usize>;
}

impl ReadyStream for tokio::net::TcpStream {
    async fn ready(&self) -> std::io::Result<()> {
        self.readable().await
    }
    fn try_read_into(&self, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
        self.try_read_buf(buf)
    }
}

impl ReadyStream for tokio::net::UnixStream {
    async fn ready(&self) -> std::io::Result<()> {
        self.readable().await
    }
    fn try_read_into(&self, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
        self.try_read_buf(buf)
    }
}

/// Waits for data, then reads what is ready (up to one read chunk) into
/// the framer, creating it only now: an idle connection holds no buffer.
async fn ready_read<S: ReadyStream>(s: &S, slot: &mut Option<ConnFramer>, make: impl Fn() -> ConnFramer) -> std::io::Result<usize> {
    loop {
        s.ready().await?;
        let f = slot.get_or_insert_with(&make);
        let mut total = 0;
        loop {
            match s.try_read_into(f.buf_mut()) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    total += n;
                    if f.pending_bytes() >= CONN_READ_CHUNK {
                        return Ok(total);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if total > 0 {
                        return Ok(total);
                    }
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Conn {
    async fn read(&mut self, slot: &mut Option<ConnFramer>, make: impl Fn() -> ConnFramer) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => ready_read(s, slot, make).await,
            Conn::Unix(s) => ready_read(s, slot, make).await,
            Conn::Tls(s) => {
                let f = slot.get_or_insert_with(make);
                s.read_buf(f.buf_mut()).await
            }
        }
    }

    /// Whether the read buffer may be released between reads: TLS keeps
    /// it (readiness of the TCP socket says nothing about decrypted bytes
    /// already buffered).
    fn releases_buffer(&self) -> bool {
        !matches!(self, Conn::Tls(_))
    }
}

/// Open connections of one source: admission under the cap, the tasks
/// that read them, and the wait for them at shutdown.
pub(crate) struct Connections {
    source: Arc<str>,
    active: Arc<AtomicUsize>,
    max: usize,
    tasks: JoinSet<()>,
}

/// Holds one connection's place under the cap.
pub(crate) struct ConnectionSlot {
    active: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Connections {
    pub(crate) fn new(source: Arc<str>, max: usize) -> Connections {
        Connections {
            source,
            active: Arc::new(AtomicUsize::new(0)),
            max,
            tasks: JoinSet::new(),
        }
    }

    /// A slot for a new connection, or `None` (counted) at the cap: the
    /// caller closes the connection at once.
    pub(crate) fn admit(&mut self) -> Option<ConnectionSlot> {
        while self.tasks.try_join_next().is_some() {}
        let m = socket_metrics();
        if self.active.load(Ordering::Acquire) >= self.max {
            m.refused.with_label_values(&[&self.source, "limit"]).inc();
            tracing::debug!(source = %self.source, max = self.max, "connection refused: max_connections reached");
            return None;
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        m.accepted.with_label_values(&[&self.source]).inc();
        let gauge = m.connections.with_label_values(&[&self.source]);
        gauge.inc();
        Some(ConnectionSlot {
            active: self.active.clone(),
            gauge,
        })
    }

    /// Runs a connection's task.
    pub(crate) fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&mut self, task: F) {
        self.tasks.spawn(task);
    }

    /// Waits for every connection to finish (they stop at shutdown).
    pub(crate) async fn join_all(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Waits for the next accepted item, or shutdown. `None` at shutdown.
pub(crate) async fn accept_or_stop<T, F: std::future::Future<Output = std::io::Result<T>>>(
    accept: F,
    shutdown: &mut ShutdownSignal,
    source: &str,
) -> Option<Option<T>> {
    tokio::select! {
        biased;
        _ = shutdown.wait() => None,
        r = accept => match r {
            Ok(v) => Some(Some(v)),
            Err(error) => {
                tracing::warn!(source, %error, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                Some(None)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    fn error_paths(sources: &str) -> Vec<String> {
        let text = format!("{sources}\n[sinks.out]\ntype = \"stdout\"\n");
        match Config::from_str(&text, Format::Toml, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect(),
        }
    }

    #[test]
    fn socket_settings_are_checked_with_key_paths() {
        let errs = error_paths(
            r#"
[sources.a]
type = "socket"
mode = "unix_stream"
address = "127.0.0.1:1"
[sources.b]
type = "socket"
mode = "udp"
permissions = "0600"
framing = "octet_counting"
peer_environment = ["X"]
[sources.c]
type = "socket"
mode = "tcp"
address = "127.0.0.1:1"
permissions = "999"
[sources.d]
type = "socket"
mode = "unix_datagram"
path = "/tmp/x"
framing = "nul"
tls = { cert_file = "c", key_file = "k" }
[sources.e]
type = "socket"
mode = "carrier_pigeon"
"#,
        );
        for want in [
            "sources.a.path:",
            "sources.a.address:",
            "sources.b.address:",
            "sources.b.permissions:",
            "sources.b.framing:",
            "sources.b.peer_environment:",
            "sources.c.permissions:",
            "sources.d.tls:",
            "sources.d.framing:",
            "sources.e.mode:",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want} in {errs:#?}");
        }
    }

    #[test]
    fn a_minimal_socket_config_is_valid_with_documented_defaults() {
        let text = "[sources.s]\ntype = \"socket\"\nmode = \"tcp\"\naddress = \"0.0.0.0:5140\"\n[sinks.out]\ntype = \"stdout\"\n";
        let c = Config::from_str(text, Format::Toml, &|_| None).unwrap();
        let crate::sources::SourceConfig::Socket(s) = &c.sources["s"] else {
            panic!("not a socket")
        };
        assert_eq!(s.format, super::SocketFormat::Json);
        assert_eq!(s.framing, super::StreamFraming::Auto);
        assert_eq!(s.max_connections, super::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(s.idle_timeout, super::DEFAULT_IDLE_TIMEOUT);
        assert!(s.peer_metadata);
    }
}
