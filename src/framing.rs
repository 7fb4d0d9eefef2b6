//! Line framing: bytes read in large chunks become complete lines, each a
//! span of the chunk it was read in (no copy).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::recycle::Pool;

/// How much to ask the kernel for per read. Large reads amortise the
/// syscall; 256 KiB keeps a chunk well inside L2 while it is decoded.
pub(crate) const READ_CHUNK_BYTES: usize = 256 * 1024;

/// The capacity asked of a pipe a source reads (the kernel's default is 64
/// KiB): a writer keeps writing while a chunk is decoded, and the reader
/// wakes less often.
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Asks the kernel for a [`PIPE_BYTES`] pipe on `fd`. A refusal (not a
/// pipe, or over `/proc/sys/fs/pipe-max-size`) only costs speed, so it is
/// not an error.
pub(crate) fn widen_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl with an integer argument has no memory effects; on a
    // descriptor that is not a pipe it fails and changes nothing.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES);
    }
}

/// Default cap on one line: long enough for any sane log event, short
/// enough that a stream without newlines cannot grow memory without bound.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// What happens to a line longer than `max_line_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Keep the first `max_line_bytes` bytes as a flagged event.
    #[default]
    Truncate,
    /// Drop the line and count it.
    Drop,
}

/// One line of a chunk: `chunk[start..start + len]`, without its newline or
/// trailing `\r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSpan {
    /// Offset in the chunk.
    pub(crate) start: u32,
    /// Length in bytes.
    pub(crate) len: u32,
    /// The line was longer than the limit and was cut to it.
    pub truncated: bool,
}

/// Complete lines framed from one read chunk.
#[derive(Debug, Clone)]
pub struct Lines {
    /// The bytes the spans point into.
    pub chunk: Bytes,
    /// The lines, in order.
    pub spans: Vec<LineSpan>,
    /// Lines dropped by the `drop` overflow policy while framing this chunk.
    pub dropped: u64,
    /// A line may hold a line break (`\n` or `\r`): frames cut by NUL or
    /// octet counts, datagrams, Kafka messages. Newline framing leaves
    /// none, and its lines skip the check that keeps each event on one line.
    pub may_hold_breaks: bool,
}

impl Lines {
    /// Line `i` as a slice.
    pub fn line(&self, i: usize) -> &[u8] {
        let s = self.spans[i];
        &self.chunk[s.start as usize..(s.start + s.len) as usize]
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there is no line.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Splits every complete line of `chunk` into spans. Bytes after the last
/// newline are not part of any span; `split_lines` returns where they start.
pub fn split_lines(chunk: &[u8], spans: &mut Vec<LineSpan>) -> usize {
    let mut start = 0usize;
    for nl in memchr::memchr_iter(b'\n', chunk) {
        let mut end = nl;
        if end > start && chunk[end - 1] == b'\r' {
            end -= 1;
        }
        spans.push(LineSpan {
            start: start as u32,
            len: (end - start) as u32,
            truncated: false,
        });
        start = nl + 1;
    }
    start
}

/// Turns a byte stream into chunks of complete lines, enforcing the line
/// limit with bounded memory.
///
/// Read buffers whose chunks were decoded, for the next read.
static READ_BUFFERS: Pool<BytesMut> = Pool::new();

/// Hands a decoded chunk's memory back for a later read, once nothing else
/// holds a view of it (the last chunk split off a read buffer frees it).
pub(crate) fn recycle(chunk: Bytes) {
    if let Ok(mut buf) = chunk.try_into_mut() {
        // Reclaims the whole allocation: the chunk was a view into it.
        buf.clear();
        buf.reserve(buf.capacity());
        READ_BUFFERS.give(buf);
    }
}

/// A spare read buffer with room for `bytes`, or a new one: for sources
/// that build their chunks whole (an OTLP request's body and its rendered
/// events), so that they reuse mapped memory as reads do. Give it back
/// with [`recycle`] once decoded.
pub(crate) fn spare_buffer(bytes: usize) -> Vec<u8> {
    READ_BUFFERS.take(bytes).map(Vec::from).unwrap_or_else(|| Vec::with_capacity(bytes))
}

/// Invariants: `buf` holds only bytes after the last newline handed out;
/// `buf[..scanned]` is known to contain no newline; when `discarding` is
/// set, the current line already overflowed and its remaining bytes are
/// skipped up to the next newline. `buf` never grows past
/// `max_line_bytes + read_chunk`.
#[derive(Debug)]
pub struct LineFramer {
    buf: BytesMut,
    scanned: usize,
    max_line_bytes: usize,
    policy: OverflowPolicy,
    discarding: bool,
    read_chunk: usize,
}

impl LineFramer {
    /// A framer with the given limit and overflow policy.
    pub fn new(max_line_bytes: usize, policy: OverflowPolicy) -> LineFramer {
        LineFramer::with_read_chunk(max_line_bytes, policy, READ_CHUNK_BYTES)
    }

    /// A framer that reads `read_chunk` bytes at a time.
    pub fn with_read_chunk(max_line_bytes: usize, policy: OverflowPolicy, read_chunk: usize) -> LineFramer {
        LineFramer {
            buf: BytesMut::with_capacity(read_chunk),
            scanned: 0,
            max_line_bytes: max_line_bytes.max(1),
            policy,
            discarding: false,
            read_chunk: read_chunk.max(1),
        }
    }

    /// Reads once from `r` into the buffer. Returns the bytes read (0 at
    /// end of input).
    pub fn fill_from<R: std::io::Read>(&mut self, r: &mut R) -> std::io::Result<usize> {
        let len = self.buf.len();
        self.buf.resize(len + self.read_chunk, 0);
        let res = r.read(&mut self.buf[len..]);
        let n = *res.as_ref().unwrap_or(&0);
        self.buf.truncate(len + n);
        res
    }

    /// Reads once from a file descriptor straight into the buffer's spare
    /// capacity: no zero-filling first (that memset was 6% of all
    /// instructions on the stdin path). Returns the bytes read (0 at end of
    /// input).
    pub(crate) fn fill_from_fd(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        self.make_room();
        let spare = self.buf.spare_capacity_mut();
        let want = spare.len().min(self.read_chunk.max(1) * 2);
        // SAFETY: `spare` is valid for writes of `want` bytes; read(2)
        // writes at most that many and reports how many it wrote.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), want) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel initialised the first `n` spare bytes.
        unsafe { self.buf.set_len(self.buf.len() + n as usize) };
        Ok(n as usize)
    }

    /// The buffer, for async readers (`AsyncReadExt::read_buf`). Append
    /// only; reserve about [`LineFramer::read_chunk`] bytes first.
    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
        self.make_room();
        &mut self.buf
    }

    /// Makes room for a read of about `read_chunk` bytes. While the carried
    /// partial line is short, every new buffer has the same size
    /// (`read_chunk` and a quarter), so the memory of a chunk freed after
    /// decode fits the next one exactly. Buffers sized by the carry left
    /// holes slightly too small for any later chunk between long-lived
    /// batches: 10 MB of a full 256 MiB queue.
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() >= self.read_chunk / 2 {
            return;
        }
        let fixed = self.read_chunk + self.read_chunk / 4;
        let len = self.buf.len();
        let additional = if len + self.read_chunk <= fixed {
            fixed - len
        } else {
            self.read_chunk
        };
        // Chunks split off this buffer may still be decoding: a recycled
        // buffer takes the carried partial line instead of a fresh one.
        if let Some(mut spare) = READ_BUFFERS.take(len + additional) {
            spare.extend_from_slice(&self.buf);
            self.buf = spare;
            return;
        }
        self.buf.reserve(additional);
    }

    /// Appends bytes that were read elsewhere (datagrams, decompressed data).
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// How many bytes a read should ask for.
    pub(crate) fn read_chunk(&self) -> usize {
        self.read_chunk
    }

    /// Bytes buffered that are not yet part of a complete line.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next chunk of complete lines, if any. Call until `None` after
    /// each fill.
    pub fn take_lines(&mut self) -> Option<Lines> {
        let mut dropped = 0;
        loop {
            if self.discarding {
                match memchr::memchr(b'\n', &self.buf) {
                    Some(nl) => {
                        let _ = self.buf.split_to(nl + 1);
                        self.discarding = false;
                        self.scanned = 0;
                    }
                    None => {
                        self.buf.clear();
                        self.scanned = 0;
                        return self.only_dropped(dropped);
                    }
                }
            }
            let tail = &self.buf[self.scanned..];
            match memchr::memrchr(b'\n', tail) {
                Some(rel) => {
                    let chunk = self.buf.split_to(self.scanned + rel + 1).freeze();
                    self.scanned = 0;
                    let mut spans = Vec::with_capacity(chunk.len() / 128 + 1);
                    split_lines(&chunk, &mut spans);
                    dropped += self.enforce_limit(&mut spans);
                    return Some(Lines {
                        chunk,
                        spans,
                        dropped,
                        may_hold_breaks: false,
                    });
                }
                // Over the limit once it holds more than max bytes, not
                // counting a final `\r` that may yet turn out to be CRLF.
                None if self.buf.len() > self.max_line_bytes + usize::from(self.buf.last() == Some(&b'\r')) => {
                    let head = self.buf.split_to(self.max_line_bytes).freeze();
                    self.scanned = 0;
                    self.discarding = true;
                    match self.policy {
                        OverflowPolicy::Truncate => {
                            let len = head.len() as u32;
                            return Some(Lines {
                                chunk: head,
                                spans: vec![LineSpan {
                                    start: 0,
                                    len,
                                    truncated: true,
                                }],
                                dropped,
                                may_hold_breaks: false,
                            });
                        }
                        OverflowPolicy::Drop => dropped += 1,
                    }
                }
                None => {
                    self.scanned = self.buf.len();
                    return self.only_dropped(dropped);
                }
            }
        }
    }

    /// At end of input: the last line, even without a newline.
    pub fn finish(&mut self) -> Option<Lines> {
        if self.discarding {
            self.buf.clear();
            self.discarding = false;
            return None;
        }
        if self.buf.is_empty() {
            return None;
        }
        self.buf.extend_from_slice(b"\n");
        self.scanned = 0;
        self.take_lines()
    }

    fn only_dropped(&self, dropped: u64) -> Option<Lines> {
        (dropped > 0).then(|| Lines {
            chunk: Bytes::new(),
            spans: Vec::new(),
            dropped,
            may_hold_breaks: false,
        })
    }

    /// Applies the line limit to complete lines; returns how many it dropped.
    fn enforce_limit(&self, spans: &mut Vec<LineSpan>) -> u64 {
        let max = self.max_line_bytes as u32;
        if spans.iter().all(|s| s.len <= max) {
            return 0;
        }
        let before = spans.len();
        match self.policy {
            OverflowPolicy::Truncate => {
                for s in spans.iter_mut().filter(|s| s.len > max) {
                    s.len = max;
                    s.truncated = true;
                }
                0
            }
            OverflowPolicy::Drop => {
                spans.retain(|s| s.len <= max);
                (before - spans.len()) as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_read_buffers_have_one_size_whatever_the_carried_partial_line() {
        for carry in [0usize, 17, 90] {
            let mut f = LineFramer::with_read_chunk(1 << 20, OverflowPolicy::Truncate, 1000);
            let mut data = vec![b'a'; 900];
            data.push(b'\n');
            data.extend(std::iter::repeat_n(b'b', carry));
            f.extend(&data);
            // The lines handed out keep the old buffer shared, so room for
            // the next read is a new allocation.
            let held = f.take_lines().expect("one line");
            assert_eq!(held.len(), 1);
            let buf = f.buf_mut();
            assert_eq!((buf.len(), buf.capacity()), (carry, 1250), "carry {carry}");
        }
    }

    fn frame_all(input: &[u8], max: usize, policy: OverflowPolicy, read_chunk: usize) -> (Vec<(Vec<u8>, bool)>, u64) {
        let mut f = LineFramer::with_read_chunk(max, policy, read_chunk);
        let mut r = input;
        let mut out = Vec::new();
        let mut dropped = 0;
        let collect = |lines: Lines, out: &mut Vec<(Vec<u8>, bool)>| {
            for (i, s) in lines.spans.iter().enumerate() {
                out.push((lines.line(i).to_vec(), s.truncated));
            }
            lines.dropped
        };
        while f.fill_from(&mut r).unwrap() > 0 {
            while let Some(l) = f.take_lines() {
                dropped += collect(l, &mut out);
            }
            assert!(f.pending_bytes() <= max + read_chunk);
        }
        while let Some(l) = f.finish() {
            dropped += collect(l, &mut out);
        }
        (out, dropped)
    }

    #[test]
    fn splits_lines_strips_crlf_and_keeps_last_line_without_newline() {
        let (lines, _) = frame_all(b"a\r\nb\n\nc", 100, OverflowPolicy::Truncate, 3);
        let got: Vec<_> = lines.iter().map(|(l, _)| l.as_slice()).collect();
        assert_eq!(got, vec![&b"a"[..], b"b", b"", b"c"]);
    }

    #[test]
    fn lone_cr_is_content() {
        let (lines, _) = frame_all(b"a\rb\n", 100, OverflowPolicy::Truncate, 64);
        assert_eq!(lines[0].0, b"a\rb");
    }

    #[test]
    fn long_line_is_truncated_and_flagged_with_bounded_memory() {
        let mut input = vec![b'x'; 10 * 1024 * 1024];
        input.extend_from_slice(b"\nnext\n");
        let (lines, dropped) = frame_all(&input, 1024, OverflowPolicy::Truncate, 4096);
        assert_eq!(dropped, 0);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].0.len(), 1024);
        assert!(lines[0].1);
        assert_eq!(lines[1], (b"next".to_vec(), false));
    }

    #[test]
    fn long_line_is_dropped_and_counted() {
        let mut input = b"a\n".to_vec();
        input.extend(vec![b'y'; 5000]);
        input.extend_from_slice(b"\nb\n");
        for chunk in [16, 4096, 1 << 16] {
            let (lines, dropped) = frame_all(&input, 100, OverflowPolicy::Drop, chunk);
            assert_eq!(dropped, 1, "read chunk {chunk}");
            let got: Vec<_> = lines.iter().map(|(l, _)| l.clone()).collect();
            assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()], "read chunk {chunk}");
        }
    }
}
