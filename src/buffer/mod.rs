//! Per-sink queues. Every sink has its own, bounded in events and in bytes,
//! with its own policy for when it is full, so one slow sink never decides
//! for the others unless its policy says `block`.

mod memory;

pub use memory::{queue, QueueItem, QueueReceiver, QueueSender};

use serde::Deserialize;

use crate::config::ByteSize;

/// What a full queue does with the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait: the fan-out stops, sources stop reading, nothing is lost.
    #[default]
    Block,
    /// Skip the batch for this sink and count it.
    DropNewest,
}

/// Where a sink's queue lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BufferType {
    /// In memory, bounded by `max_events` and `max_bytes`.
    #[default]
    Memory,
}

/// The `buffer` table of a sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Memory (the default).
    #[serde(rename = "type")]
    pub kind: BufferType,
    /// Most events queued for the sink.
    pub max_events: usize,
    /// Most bytes of events queued (and in flight) for the sink.
    pub max_bytes: ByteSize,
    /// What to do when full.
    pub when_full: WhenFull,
}

/// Default queue budget per sink: 8 MiB holds ~30k typical events, several
/// batches of slack, while keeping a collector with four sinks small.
pub const DEFAULT_BUFFER_MAX_BYTES: u64 = 8 << 20;

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            kind: BufferType::Memory,
            max_events: 100_000,
            max_bytes: ByteSize(DEFAULT_BUFFER_MAX_BYTES),
            when_full: WhenFull::Block,
        }
    }
}

impl BufferConfig {
    /// Checks the limits make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_events == 0 {
            return Err("max_events must be at least 1".into());
        }
        if self.max_bytes.0 < 1024 {
            return Err("max_bytes must be at least 1KiB".into());
        }
        if self.max_bytes.0 > u32::MAX as u64 {
            return Err("max_bytes must be below 4GiB for a memory buffer".into());
        }
        Ok(())
    }
}
