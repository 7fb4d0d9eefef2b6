//! Settings of the `file` source, their defaults and their validation.

use serde::Deserialize;
use std::time::Duration;

use super::fingerprint::DEFAULT_FINGERPRINT_BYTES;
use super::kubernetes::KubernetesConfig;
use crate::config::{duration, key_path, ByteSize, ConfigError, Validate};
use crate::framing::{OverflowPolicy, DEFAULT_MAX_LINE_BYTES};
use crate::multiline::MultilineConfig;

/// Default open-file cap: far above what one node's pods write at once,
/// far below the usual `ulimit -n` of 65536.
pub(crate) const DEFAULT_MAX_OPEN_FILES: usize = 4096;

/// Default bytes one file may read per turn: one large read (fewer
/// syscalls, bigger batches) yet small enough that a thousand other files
/// get their turn within a few milliseconds.
pub(crate) const DEFAULT_READ_BUDGET: u64 = 256 * 1024;

/// How a file's lines are wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FileFormat {
    /// Detected per file from its first line: CRI, docker json-file, or
    /// plain lines.
    #[default]
    Auto,
    /// CRI (containerd, CRI-O): `<time> <stream> <P|F> <message>`.
    Cri,
    /// Docker json-file: `{"log":"…","stream":"…","time":"…"}`.
    Docker,
    /// Plain lines (each one JSON or text).
    Lines,
}

/// Where to start in a file seen for the first time at the first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReadFrom {
    /// From the first byte.
    #[default]
    Beginning,
    /// From the end: only lines written from now on.
    End,
}

/// Settings of the file source (`type = "file"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Glob patterns of files to read (`*`, `?`, `[..]`, `{a,b}`, and `**`
    /// for any number of directories). Absolute paths.
    pub(crate) include: Vec<String>,
    /// Glob patterns of files never to read.
    pub(crate) exclude: Vec<String>,
    /// Line format: `auto`, `cri`, `docker` or `lines`.
    pub(crate) format: FileFormat,
    /// Where to start in files found at the very first start (no checkpoint
    /// yet). Files that appear later are always read from the beginning.
    pub(crate) read_from: ReadFrom,
    /// Longest line kept whole.
    pub(crate) max_line_bytes: ByteSize,
    /// What happens to a longer line: `truncate` or `drop`.
    pub(crate) oversize: OverflowPolicy,
    /// Most files open at once; more wait, and idle open files are closed
    /// to let them in.
    pub(crate) max_open_files: usize,
    /// How often the include globs are scanned for new, rotated and
    /// deleted files.
    #[serde(deserialize_with = "duration")]
    pub(crate) scan_interval: Duration,
    /// How long the readers sleep when no file had new data.
    #[serde(deserialize_with = "duration")]
    pub(crate) poll_interval: Duration,
    /// How often acknowledged offsets are written to disk.
    #[serde(deserialize_with = "duration")]
    pub(crate) checkpoint_interval: Duration,
    /// How long a rotated-away or deleted file is kept open at its end, in
    /// case its writer has not reopened yet.
    #[serde(deserialize_with = "duration")]
    pub(crate) rotate_wait: Duration,
    /// Leading bytes hashed to recognise a file.
    pub(crate) fingerprint_bytes: ByteSize,
    /// Bytes one file may read per turn before the next file's turn.
    pub(crate) read_budget: ByteSize,
    /// Reader threads (0: one per core, at most 4).
    pub(crate) readers: usize,
    /// Longest line assembled from partial pieces (CRI `P`, docker pieces
    /// without a newline); longer ones are cut and flagged.
    pub(crate) partial_max_bytes: ByteSize,
    /// How long a partial line waits for its next piece before it is sent
    /// as it is.
    #[serde(deserialize_with = "duration")]
    pub(crate) partial_timeout: Duration,
    /// Read the files found at start to their end, then stop (backfills,
    /// benchmarks). The pipeline drains and sluice exits.
    pub(crate) stop_at_eof: bool,
    /// Add a `path` label to the per-file metrics (bytes read, lag). Off by
    /// default: paths are unbounded label values.
    pub(crate) metrics_per_file: bool,
    /// Kubernetes metadata.
    pub(crate) kubernetes: KubernetesConfig,
    /// Lines that belong together (stack traces) become one event, per
    /// file and container stream (see docs/multiline.md). A pod's
    /// `sluice.dev/multiline` annotation overrides it for its containers.
    pub(crate) multiline: Option<MultilineConfig>,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            include: Vec::new(),
            exclude: Vec::new(),
            format: FileFormat::Auto,
            read_from: ReadFrom::Beginning,
            max_line_bytes: ByteSize(DEFAULT_MAX_LINE_BYTES as u64),
            oversize: OverflowPolicy::Truncate,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            scan_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(100),
            checkpoint_interval: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            fingerprint_bytes: ByteSize(DEFAULT_FINGERPRINT_BYTES as u64),
            read_budget: ByteSize(DEFAULT_READ_BUDGET),
            readers: 0,
            partial_max_bytes: ByteSize(DEFAULT_MAX_LINE_BYTES as u64),
            partial_timeout: Duration::from_secs(5),
            stop_at_eof: false,
            metrics_per_file: false,
            kubernetes: KubernetesConfig::default(),
            multiline: None,
        }
    }
}

impl Validate for FileConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut p = |key: &str, message: String| errors.push(ConfigError::at(path, key, message));
        if self.include.is_empty() {
            p("include", "at least one glob pattern is required".to_owned());
        }
        for (key, globs) in [("include", &self.include), ("exclude", &self.exclude)] {
            for g in globs {
                if !g.starts_with('/') {
                    p(key, format!("{g:?} must be an absolute path"));
                }
                if let Err(e) = globset::GlobBuilder::new(g).literal_separator(true).build() {
                    p(key, format!("invalid glob {g:?}: {e}"));
                }
            }
        }
        if self.max_open_files == 0 {
            p("max_open_files", "must be at least 1".into());
        }
        if self.max_line_bytes.0 == 0 || self.max_line_bytes.0 > u32::MAX as u64 / 2 {
            p("max_line_bytes", "must be between 1 byte and 2GiB".into());
        }
        if self.fingerprint_bytes.0 < 16 || self.fingerprint_bytes.0 > 1 << 20 {
            p("fingerprint_bytes", "must be between 16 bytes and 1MiB".into());
        }
        if self.read_budget.0 < 4096 || self.read_budget.0 > 64 << 20 {
            p("read_budget", "must be between 4KiB and 64MiB".into());
        }
        if self.partial_max_bytes.0 == 0 || self.partial_max_bytes.0 > u32::MAX as u64 / 2 {
            p("partial_max_bytes", "must be between 1 byte and 2GiB".into());
        }
        for (key, d) in [
            ("scan_interval", self.scan_interval),
            ("poll_interval", self.poll_interval),
            ("checkpoint_interval", self.checkpoint_interval),
        ] {
            if d.is_zero() {
                p(key, "must be greater than zero".into());
            }
        }
        self.kubernetes.validate(&key_path(path, "kubernetes"), errors);
        self.multiline.validate(path, errors);
    }
}

impl FileConfig {
    /// This config as the source runs it: `max_open_files` lowered, with a
    /// warning, to what the process's open-file limit (`ulimit -n`) leaves
    /// after [`reserved_descriptors`], so files wait their turn for a
    /// descriptor instead of failing to open (and taking the checkpoint
    /// writes and sockets down with them).
    pub(crate) fn with_descriptor_limit(&self, source: &str) -> FileConfig {
        let mut cfg = self.clone();
        let limit = open_file_limit();
        let cap = open_file_cap(self.max_open_files, limit);
        if cap < self.max_open_files {
            tracing::warn!(source = %source, max_open_files = self.max_open_files, limit = limit.unwrap_or_default(), open_at_most = cap,
                "the open-file limit (ulimit -n) is below max_open_files; keeping fewer files open, the rest wait their turn");
            cfg.max_open_files = cap;
        }
        cfg
    }

    /// Reader threads to start.
    pub(crate) fn reader_threads(&self) -> usize {
        if self.readers > 0 {
            return self.readers.min(64);
        }
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4)
    }
}

/// Descriptors a file source leaves for everything else (sockets, disk
/// buffer segments, checkpoint writes, other sources): a quarter of the
/// limit, and never fewer than [`MIN_RESERVED_DESCRIPTORS`].
pub(crate) fn reserved_descriptors(limit: u64) -> u64 {
    (limit / 4).max(MIN_RESERVED_DESCRIPTORS)
}

/// The floor of [`reserved_descriptors`]: a process with a few sinks and
/// disk buffers needs a few dozen descriptors of its own.
const MIN_RESERVED_DESCRIPTORS: u64 = 64;

/// The soft `RLIMIT_NOFILE`, or `None` when unlimited or unknown.
fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(lim.rlim_cur)
}

/// Files open at once under `configured` and a descriptor `limit`: at least
/// one, so a tiny limit still makes progress.
fn open_file_cap(configured: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else { return configured };
    let budget = limit.saturating_sub(reserved_descriptors(limit)).max(1);
    configured.min(usize::try_from(budget).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod descriptor_tests {
    use super::*;

    #[test]
    fn open_file_cap_leaves_a_reserve_under_the_descriptor_limit() {
        assert_eq!(open_file_cap(4096, None), 4096);
        assert_eq!(open_file_cap(4096, Some(65536)), 4096);
        assert_eq!(open_file_cap(4096, Some(256)), 192);
        assert_eq!(open_file_cap(4096, Some(1024)), 768);
        assert_eq!(open_file_cap(100, Some(1024)), 100);
        assert_eq!(open_file_cap(4096, Some(10)), 1);
    }
}
