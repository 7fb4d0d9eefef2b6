//! Per-sink queues. Every sink has its own, bounded in events and in bytes,
//! with its own policy for when it is full, so one slow sink never decides
//! for the others unless its policy says `block`.
//!
//! A queue lives in memory ([`queue`]) or, with `type = "disk"`, in segment
//! files under `data_dir/buffers/<sink>` ([`open`]). Either way the fan-out
//! holds a [`QueueSender`] and the sink a [`QueueReceiver`]: sinks do not
//! know which kind feeds them.

mod disk;
mod memory;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use disk::fuzz_read_segment;
pub(crate) use disk::DiskHandle;
pub use memory::queue;
pub(crate) use memory::{BudgetShare, QueueItem, QueueReceiver, SinkGone};

use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ByteSize, ConfigError, NumberOrText, Validate};
use crate::event::{Batch, EventKind, FieldSet};

/// What a full queue does with the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WhenFull {
    /// Wait: the fan-out stops, sources stop reading, nothing is lost.
    #[default]
    Block,
    /// Skip the batch for this sink and count it.
    DropNewest,
}

/// Where a sink's queue lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BufferType {
    /// In memory, bounded by `max_events` and `max_bytes`.
    #[default]
    Memory,
    /// In segment files on disk, bounded by `max_bytes` of disk; survives
    /// restarts, and a batch counts as delivered once written.
    Disk,
}

/// When a disk buffer calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsyncPolicy {
    /// After every record, before the source is acknowledged: nothing is
    /// lost even on power failure, at the cost of one fsync per batch.
    Always,
    /// At most this often, and when the writer goes idle: a power failure
    /// may lose the last interval; a process crash loses nothing.
    Interval(Duration),
    /// Never: the kernel writes back when it likes.
    Never,
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Text(s) if s == "always" => Ok(FsyncPolicy::Always),
            NumberOrText::Text(s) if s == "never" => Ok(FsyncPolicy::Never),
            v => match v.to_duration() {
                Ok(t) if !t.is_zero() => Ok(FsyncPolicy::Interval(t)),
                _ => Err(serde::de::Error::custom(format!(
                    "invalid fsync policy {v}: use \"always\", \"never\" or an interval such as \"1s\""
                ))),
            },
        }
    }
}

/// Default `fsync` of a disk buffer: once a second bounds what a power
/// failure can take, at a cost no throughput figure notices.
pub(crate) const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The `buffer` table of a sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "RawBufferConfig")]
pub struct BufferConfig {
    /// Memory (the default) or disk.
    pub(crate) kind: BufferType,
    /// Most events queued in memory for the sink (for a disk buffer: read
    /// ahead of the sink).
    pub(crate) max_events: usize,
    /// Most bytes of events queued (and in flight) for the sink; for a disk
    /// buffer, the most bytes of segment files on disk.
    pub(crate) max_bytes: ByteSize,
    /// What to do when full.
    pub(crate) when_full: WhenFull,
    /// When a disk buffer syncs its writes.
    pub(crate) fsync: FsyncPolicy,
}

/// The `buffer` table as written: defaults depend on the type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBufferConfig {
    #[serde(rename = "type", default)]
    kind: BufferType,
    max_events: Option<usize>,
    max_bytes: Option<ByteSize>,
    when_full: Option<WhenFull>,
    fsync: Option<FsyncPolicy>,
}

impl TryFrom<RawBufferConfig> for BufferConfig {
    type Error = String;

    fn try_from(raw: RawBufferConfig) -> Result<Self, String> {
        if raw.fsync.is_some() && raw.kind == BufferType::Memory {
            return Err("fsync applies only to type = \"disk\"".into());
        }
        let default_bytes = match raw.kind {
            BufferType::Memory => DEFAULT_BUFFER_MAX_BYTES,
            BufferType::Disk => DEFAULT_DISK_BUFFER_MAX_BYTES,
        };
        Ok(BufferConfig {
            kind: raw.kind,
            max_events: raw.max_events.unwrap_or(DEFAULT_BUFFER_MAX_EVENTS),
            max_bytes: raw.max_bytes.unwrap_or(ByteSize(default_bytes)),
            when_full: raw.when_full.unwrap_or_default(),
            fsync: raw.fsync.unwrap_or(FsyncPolicy::Interval(DEFAULT_FSYNC_INTERVAL)),
        })
    }
}

/// Default queue budget per sink: 8 MiB holds ~30k typical events, several
/// batches of slack, while keeping a collector with four sinks small.
pub(crate) const DEFAULT_BUFFER_MAX_BYTES: u64 = 8 << 20;

/// Default event bound of a memory queue (and of a disk buffer's read-ahead).
pub(crate) const DEFAULT_BUFFER_MAX_EVENTS: usize = 100_000;

/// Default disk budget of a disk buffer: 256 MiB rides out minutes of an
/// outage at typical agent rates without surprising anyone's disk.
pub(crate) const DEFAULT_DISK_BUFFER_MAX_BYTES: u64 = 256 << 20;

/// Smallest disk budget: a few segments of a useful size.
const MIN_DISK_BUFFER_BYTES: u64 = 1 << 20;

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            kind: BufferType::Memory,
            max_events: DEFAULT_BUFFER_MAX_EVENTS,
            max_bytes: ByteSize(DEFAULT_BUFFER_MAX_BYTES),
            when_full: WhenFull::Block,
            fsync: FsyncPolicy::Interval(DEFAULT_FSYNC_INTERVAL),
        }
    }
}

/// Checks the limits make sense.
impl Validate for BufferConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.max_events == 0 {
            errors.push(ConfigError::at(path, "max_events", "must be at least 1"));
        }
        let max_bytes = match self.kind {
            BufferType::Memory if self.max_bytes.0 < 1024 => Some("must be at least 1KiB"),
            BufferType::Memory if self.max_bytes.0 > u32::MAX as u64 => Some("must be below 4GiB for a memory buffer"),
            BufferType::Disk if self.max_bytes.0 < MIN_DISK_BUFFER_BYTES => Some("must be at least 1MiB for a disk buffer"),
            _ => None,
        };
        if let Some(message) = max_bytes {
            errors.push(ConfigError::at(path, "max_bytes", message));
        }
    }
}

/// The fan-out's end of a sink queue. Cloneable: each source's fan-out
/// holds one.
#[derive(Debug, Clone)]
pub struct QueueSender {
    inner: SenderKind,
    /// The event kinds the sink takes, `[logs, metrics]`; the fan-out
    /// passes it by batches of another kind.
    takes: [bool; 2],
}

#[derive(Debug, Clone)]
enum SenderKind {
    Memory(memory::MemorySender),
    Disk(disk::DiskSender),
}

impl QueueSender {
    fn memory(tx: memory::MemorySender) -> QueueSender {
        QueueSender {
            inner: SenderKind::Memory(tx),
            takes: [true; 2],
        }
    }

    /// This sender, for a sink that takes only the kinds `accepts` says.
    pub(crate) fn taking(mut self, accepts: impl Fn(EventKind) -> bool) -> QueueSender {
        self.takes = [accepts(EventKind::Log), accepts(EventKind::Metric)];
        self
    }

    /// Whether the sink takes batches of `kind`.
    pub fn takes(&self, kind: EventKind) -> bool {
        self.takes[kind as usize]
    }

    /// Queues a batch. A memory queue waits for room under `block` or drops
    /// (counted, acknowledged as dropped) under `drop_newest`; a disk buffer
    /// writes it to disk and acknowledges it as delivered, waiting only on
    /// the disk (or on room, once its budget is spent, under `block`).
    pub async fn send(&self, batch: Arc<Batch>) -> Result<(), SinkGone> {
        match &self.inner {
            SenderKind::Memory(tx) => tx.send(batch).await,
            SenderKind::Disk(tx) => tx.send(batch).await,
        }
    }
}

/// What opening a disk buffer needs besides its config.
#[derive(Debug, Clone)]
pub(crate) struct BufferCx {
    /// `data_dir`; the buffer lives in `data_dir/buffers/<sink>`.
    pub(crate) data_dir: Option<PathBuf>,
    /// The pipeline's field set: batches read back carry values for it.
    pub(crate) fields: Arc<FieldSet>,
}

/// A sink's queue, ready to use.
#[derive(Debug)]
pub(crate) struct OpenedQueue {
    /// For the fan-out.
    pub(crate) sender: QueueSender,
    /// For the sink.
    pub(crate) receiver: QueueReceiver,
    /// Set for a disk buffer: stop it and wait for it to close.
    pub(crate) disk: Option<DiskHandle>,
}

/// Why a queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// A disk buffer without a place to live.
    #[error("sink {sink}: buffer type \"disk\" needs data_dir (or SLUICE_DATA_DIR) to be set")]
    NoDataDir {
        /// The sink's name.
        sink: String,
    },
    /// The buffer directory or one of its files failed.
    #[error("sink {sink}: disk buffer {path}: {error}")]
    Io {
        /// The sink's name.
        sink: String,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// Another process holds the buffer.
    #[error("sink {sink}: disk buffer {path} is in use by another sluice process")]
    Locked {
        /// The sink's name.
        sink: String,
        /// The directory.
        path: PathBuf,
    },
}

/// Opens the queue of the sink named `sink` as its config says: in memory,
/// or on disk under `data_dir/buffers/<sink>` (replaying what an earlier run
/// left unacknowledged first). Must run inside the tokio runtime.
pub(crate) fn open(sink: &str, config: &BufferConfig, cx: &BufferCx) -> Result<OpenedQueue, BufferError> {
    match config.kind {
        BufferType::Memory => {
            let (sender, receiver) = queue(sink, config);
            Ok(OpenedQueue {
                sender,
                receiver,
                disk: None,
            })
        }
        BufferType::Disk => {
            let data_dir = cx.data_dir.as_ref().ok_or_else(|| BufferError::NoDataDir { sink: sink.into() })?;
            let dir = data_dir.join("buffers").join(sink);
            let (tx, receiver, handle) = disk::open(sink, &dir, config, cx.fields.clone())?;
            Ok(OpenedQueue {
                sender: QueueSender {
                    inner: SenderKind::Disk(tx),
                    takes: [true; 2],
                },
                receiver,
                disk: Some(handle),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fsync(toml_value: &str) -> Result<FsyncPolicy, String> {
        #[derive(Deserialize)]
        struct T {
            fsync: FsyncPolicy,
        }
        toml::from_str::<T>(&format!("fsync = {toml_value}"))
            .map(|t| t.fsync)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn fsync_policy_is_a_word_an_interval_or_seconds() {
        assert_eq!(fsync("\"always\""), Ok(FsyncPolicy::Always));
        assert_eq!(fsync("\"never\""), Ok(FsyncPolicy::Never));
        assert_eq!(fsync("\"250ms\""), Ok(FsyncPolicy::Interval(Duration::from_millis(250))));
        assert_eq!(fsync("2"), Ok(FsyncPolicy::Interval(Duration::from_secs(2))));
        for bad in ["\"sometimes\"", "0", "-1", "\"0s\""] {
            let e = fsync(bad).unwrap_err();
            assert!(e.contains("invalid fsync policy") && e.contains("\"always\""), "{bad}: {e}");
        }
    }
}
