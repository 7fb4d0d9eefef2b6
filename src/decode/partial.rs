//! Partial lines of container logs: the runtime splits a long line into
//! pieces (CRI `P` lines, docker 16 KiB pieces without a trailing newline).
//! Pieces are merged per (file, stream) up to a size cap; a piece whose
//! continuation never comes is sent as it is after a timeout.

use std::time::{Duration, Instant};

/// Which output stream a container line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A line being assembled from pieces.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The pieces so far (for docker: still JSON-escaped).
    pub(crate) buf: Vec<u8>,
    /// The first piece's timestamp.
    pub(crate) time: Vec<u8>,
    /// File offset of the first piece's line: a checkpoint must not move
    /// past it until the merged line is sent.
    pub(crate) start_offset: u64,
    /// When the first piece was read.
    pub(crate) started: Instant,
    /// Pieces past the cap were cut off.
    pub(crate) overflowed: bool,
}

/// Per-stream pending lines of one file.
#[derive(Debug)]
pub(crate) struct PartialLines {
    pending: [Option<Pending>; 2],
    max_bytes: usize,
}

impl PartialLines {
    /// Merges up to `max_bytes` per line.
    pub(crate) fn new(max_bytes: usize) -> PartialLines {
        PartialLines {
            pending: [None, None],
            max_bytes: max_bytes.max(1),
        }
    }

    /// Appends a piece. `cut` picks a safe length to keep when the piece
    /// does not fit (docker must not cut inside an escape sequence).
    pub(crate) fn push(
        &mut self,
        stream: Stream,
        piece: &[u8],
        time: &[u8],
        offset: u64,
        now: Instant,
        cut: impl Fn(&[u8], usize) -> usize,
    ) {
        let max = self.max_bytes;
        let p = self.pending[stream.index()].get_or_insert_with(|| Pending {
            buf: Vec::new(),
            time: time.to_vec(),
            start_offset: offset,
            started: now,
            overflowed: false,
        });
        if p.overflowed {
            return;
        }
        let room = max - p.buf.len().min(max);
        if piece.len() <= room {
            p.buf.extend_from_slice(piece);
        } else {
            let keep = cut(piece, room).min(room);
            p.buf.extend_from_slice(&piece[..keep]);
            p.overflowed = true;
        }
    }

    /// Takes the line being assembled for `stream`, if any.
    pub(crate) fn take(&mut self, stream: Stream) -> Option<Pending> {
        self.pending[stream.index()].take()
    }

    /// Whether a line is being assembled for `stream`.
    pub(crate) fn has(&self, stream: Stream) -> bool {
        self.pending[stream.index()].is_some()
    }

    /// Lines whose last piece came more than `timeout` ago (all of them
    /// when `timeout` is zero), taken out in stream order.
    pub(crate) fn take_expired(&mut self, now: Instant, timeout: Duration) -> Vec<(Stream, Pending)> {
        let mut out = Vec::new();
        for s in [Stream::Stdout, Stream::Stderr] {
            let expired = self.pending[s.index()]
                .as_ref()
                .is_some_and(|p| timeout.is_zero() || now.duration_since(p.started) >= timeout);
            if expired {
                if let Some(p) = self.take(s) {
                    out.push((s, p));
                }
            }
        }
        out.sort_by_key(|(_, p)| p.start_offset);
        out
    }

    /// The cap on an assembled line.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The earliest file offset a pending line started at.
    pub(crate) fn earliest_start(&self) -> Option<u64> {
        self.pending.iter().flatten().map(|p| p.start_offset).min()
    }
}

/// Where a record's bytes are: `len` bytes at `start` of the read chunk, or
/// of the batch's merge buffer when `merged` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Piece {
    /// Offset.
    pub(crate) start: u32,
    /// Length.
    pub(crate) len: u32,
    /// In the merge buffer rather than the chunk.
    pub(crate) merged: bool,
}

impl Piece {
    /// A piece of the chunk; `inner` must be a subslice of `chunk`.
    pub(crate) fn of_chunk(chunk: &[u8], inner: &[u8]) -> Piece {
        Piece {
            start: (inner.as_ptr() as usize - chunk.as_ptr() as usize) as u32,
            len: inner.len() as u32,
            merged: false,
        }
    }

    /// Appends `bytes` to the merge buffer and points at them.
    pub(crate) fn append(merged: &mut Vec<u8>, bytes: &[u8]) -> Piece {
        let start = merged.len() as u32;
        merged.extend_from_slice(bytes);
        Piece {
            start,
            len: bytes.len() as u32,
            merged: true,
        }
    }

    /// The bytes.
    pub(crate) fn get<'a>(&self, chunk: &'a [u8], merged: &'a [u8]) -> &'a [u8] {
        let src = if self.merged { merged } else { chunk };
        src.get(self.start as usize..(self.start + self.len) as usize).unwrap_or(&[])
    }
}

/// Counters of one unwrap step, flushed into the metrics per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ContainerStats {
    /// Lines assembled from more than one piece.
    pub(crate) merged: u64,
    /// Assembled lines cut at the size cap.
    pub(crate) overflowed: u64,
    /// Partial lines sent without their continuation after the timeout.
    pub(crate) timed_out: u64,
    /// Lines that were not in the file's container format (kept as they are).
    pub(crate) foreign: u64,
}

impl ContainerStats {
    /// Adds another set of counters.
    pub(crate) fn add(&mut self, o: ContainerStats) {
        self.merged += o.merged;
        self.overflowed += o.overflowed;
        self.timed_out += o.timed_out;
        self.foreign += o.foreign;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_merge_per_stream_up_to_the_cap() {
        let now = Instant::now();
        let mut p = PartialLines::new(8);
        p.push(Stream::Stdout, b"abc", b"t1", 10, now, |_, n| n);
        p.push(Stream::Stderr, b"xyz", b"t2", 20, now, |_, n| n);
        p.push(Stream::Stdout, b"defghij", b"t3", 30, now, |_, n| n);
        assert_eq!(p.earliest_start(), Some(10));
        let out = p.take(Stream::Stdout).unwrap();
        assert_eq!(out.buf, b"abcdefgh");
        assert!(out.overflowed);
        assert_eq!(out.time, b"t1");
        assert_eq!(p.earliest_start(), Some(20));
        let expired = p.take_expired(now + Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(expired.len(), 1);
        assert_eq!(p.earliest_start(), None, "nothing pending");
    }
}
