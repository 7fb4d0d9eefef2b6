//! Framing of stream connections: newline-delimited (NDJSON, syslog with
//! non-transparent framing) or RFC 6587 octet counting (`LEN SP MSG`),
//! chosen per connection.

use bytes::{Buf, Bytes, BytesMut};

use crate::framing::{LineFramer, LineSpan, Lines, OverflowPolicy};

/// Longest octet count accepted: ten digits covers any frame a u32 can
/// describe; a longer run of digits is not a length.
const MAX_COUNT_DIGITS: usize = 10;

/// How one connection is framed.
#[derive(Debug)]
pub(crate) enum ConnFramer {
    /// Newline-delimited.
    Newline(LineFramer),
    /// RFC 6587 octet counting.
    Octet(OctetFramer),
}

impl ConnFramer {
    /// The read buffer: append only.
    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
        match self {
            ConnFramer::Newline(f) => f.buf_mut(),
            ConnFramer::Octet(f) => f.buf_mut(),
        }
    }

    /// Bytes buffered that are not yet part of a complete frame.
    pub(crate) fn pending_bytes(&self) -> usize {
        match self {
            ConnFramer::Newline(f) => f.pending_bytes(),
            ConnFramer::Octet(f) => f.buf.len(),
        }
    }

    /// The next run of complete frames, if any. Call until `None`.
    pub(crate) fn take_lines(&mut self) -> Option<Lines> {
        match self {
            ConnFramer::Newline(f) => f.take_lines(),
            ConnFramer::Octet(f) => f.take_lines(),
        }
    }

    /// At end of input: what is left, as a last frame.
    pub(crate) fn finish(&mut self) -> Option<Lines> {
        match self {
            ConnFramer::Newline(f) => f.finish(),
            ConnFramer::Octet(f) => f.finish(),
        }
    }

    /// Switches a newline framer that has not framed anything yet to octet
    /// counting, keeping what it buffered.
    pub(crate) fn into_octet(self, max_frame: usize, policy: OverflowPolicy, read_chunk: usize) -> ConnFramer {
        match self {
            ConnFramer::Newline(mut f) => {
                let mut o = OctetFramer::new(max_frame, policy, read_chunk);
                let pending = f.buf_mut().split();
                o.buf.extend_from_slice(&pending);
                ConnFramer::Octet(o)
            }
            octet => octet,
        }
    }
}

/// Fuzzing entry point: frames `data` with octet counting, handed over in
/// pieces of `piece` bytes as a connection would read it, then ends the
/// input. Returns every run of frames in order.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_octet_frames(data: &[u8], piece: usize, max_frame: usize, policy: OverflowPolicy) -> Vec<Lines> {
    let mut framer = ConnFramer::Newline(LineFramer::new(max_frame, policy)).into_octet(max_frame, policy, piece);
    let mut out = Vec::new();
    for p in data.chunks(piece.max(1)) {
        framer.buf_mut().extend_from_slice(p);
        out.extend(std::iter::from_fn(|| framer.take_lines()));
    }
    out.extend(std::iter::from_fn(|| framer.finish()));
    out
}

/// RFC 6587 section 3.4.1 octet counting, tolerant of mixed senders: a
/// frame that does not start with a digit is taken as a newline-terminated
/// frame, and newlines between frames are skipped.
///
/// Invariants: `buf` starts at a frame boundary unless `skip > 0` (the
/// rest of an oversize frame still to discard) or `discard_line` is set
/// (the rest of an oversize newline frame); `buf` never grows past
/// `max_frame + MAX_COUNT_DIGITS + 1 + read_chunk`.
#[derive(Debug)]
pub(crate) struct OctetFramer {
    buf: BytesMut,
    max_frame: usize,
    policy: OverflowPolicy,
    read_chunk: usize,
    skip: usize,
    discard_line: bool,
}

enum Step {
    /// A frame at `start..start + len` of the buffer, the next frame at `next`.
    Frame {
        start: usize,
        len: usize,
        next: usize,
        truncated: bool,
    },
    /// An oversize frame dropped; its bytes up to `next` are consumed and
    /// `skip` more follow.
    Dropped { next: usize, skip: usize, discard_line: bool },
    /// A truncated frame whose remaining `skip` bytes (or rest of line)
    /// must be discarded after it.
    Cut {
        start: usize,
        len: usize,
        next: usize,
        skip: usize,
        discard_line: bool,
    },
    /// Separators between frames, consumed up to `next`.
    Skip { next: usize },
    /// Not enough bytes for the next frame.
    NeedMore,
}

impl OctetFramer {
    pub(crate) fn new(max_frame: usize, policy: OverflowPolicy, read_chunk: usize) -> OctetFramer {
        OctetFramer {
            buf: BytesMut::with_capacity(read_chunk),
            max_frame: max_frame.max(1),
            policy,
            read_chunk: read_chunk.max(1),
            skip: 0,
            discard_line: false,
        }
    }

    fn buf_mut(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < self.read_chunk / 2 {
            self.buf.reserve(self.read_chunk);
        }
        &mut self.buf
    }

    /// Discards what an oversize frame left behind. True when the buffer
    /// is at a frame boundary afterwards.
    fn discard(&mut self) -> bool {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len());
            self.buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return false;
            }
        }
        if self.discard_line {
            match memchr::memchr(b'\n', &self.buf) {
                Some(nl) => {
                    self.buf.advance(nl + 1);
                    self.discard_line = false;
                }
                None => {
                    self.buf.clear();
                    return false;
                }
            }
        }
        true
    }

    fn take_lines(&mut self) -> Option<Lines> {
        let mut dropped = 0;
        if !self.discard() {
            return None;
        }
        let mut spans = Vec::new();
        let mut pos = 0;
        let mut after: Option<(usize, bool)> = None;
        loop {
            match self.step(pos) {
                Step::Frame {
                    start,
                    len,
                    next,
                    truncated,
                } => {
                    spans.push(span(start, len, truncated));
                    pos = next;
                }
                Step::Cut {
                    start,
                    len,
                    next,
                    skip,
                    discard_line,
                } => {
                    spans.push(span(start, len, true));
                    pos = next;
                    after = Some((skip, discard_line));
                    break;
                }
                Step::Dropped { next, skip, discard_line } => {
                    dropped += 1;
                    pos = next;
                    after = Some((skip, discard_line));
                    break;
                }
                Step::Skip { next } => pos = next,
                Step::NeedMore => break,
            }
        }
        let chunk: Bytes = self.buf.split_to(pos).freeze();
        if let Some((skip, discard_line)) = after {
            self.skip = skip;
            self.discard_line = discard_line;
            self.discard();
        }
        if spans.is_empty() {
            return (dropped > 0).then(|| empty(dropped));
        }
        Some(Lines { chunk, spans, dropped })
    }

    /// Frames the bytes at `buf[pos..]`.
    fn step(&self, pos: usize) -> Step {
        let b = &self.buf[pos..];
        // Separators some senders put between frames.
        let lead = b.iter().take_while(|&&c| matches!(c, b'\n' | b'\r' | b' ' | 0)).count();
        let b = &b[lead..];
        let at = pos + lead;
        if lead > 0 {
            return Step::Skip { next: at };
        }
        if b.is_empty() {
            return Step::NeedMore;
        }
        if matches!(b[0], b'1'..=b'9') {
            let digits = b.iter().take(MAX_COUNT_DIGITS + 1).take_while(|c| c.is_ascii_digit()).count();
            match b.get(digits) {
                None if digits <= MAX_COUNT_DIGITS => return Step::NeedMore,
                Some(b' ') if digits <= MAX_COUNT_DIGITS => {
                    let len = b[..digits].iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    let start = at + digits + 1;
                    let have = self.buf.len() - start;
                    if len <= self.max_frame {
                        return if have >= len {
                            Step::Frame {
                                start,
                                len,
                                next: start + len,
                                truncated: false,
                            }
                        } else {
                            Step::NeedMore
                        };
                    }
                    return match self.policy {
                        OverflowPolicy::Drop => Step::Dropped {
                            next: start + have.min(len),
                            skip: len - have.min(len),
                            discard_line: false,
                        },
                        OverflowPolicy::Truncate if have >= self.max_frame => Step::Cut {
                            start,
                            len: self.max_frame,
                            next: start + self.max_frame,
                            skip: len - self.max_frame,
                            discard_line: false,
                        },
                        OverflowPolicy::Truncate => Step::NeedMore,
                    };
                }
                // Digits not followed by a space: not a count, a line.
                _ => {}
            }
        }
        match memchr::memchr(b'\n', b) {
            Some(nl) => {
                let mut len = nl;
                if len > 0 && b[len - 1] == b'\r' {
                    len -= 1;
                }
                if len > self.max_frame {
                    return match self.policy {
                        OverflowPolicy::Truncate => Step::Frame {
                            start: at,
                            len: self.max_frame,
                            next: at + nl + 1,
                            truncated: true,
                        },
                        OverflowPolicy::Drop => Step::Dropped {
                            next: at + nl + 1,
                            skip: 0,
                            discard_line: false,
                        },
                    };
                }
                Step::Frame {
                    start: at,
                    len,
                    next: at + nl + 1,
                    truncated: false,
                }
            }
            None if b.len() > self.max_frame => match self.policy {
                OverflowPolicy::Truncate => Step::Cut {
                    start: at,
                    len: self.max_frame,
                    next: self.buf.len(),
                    skip: 0,
                    discard_line: true,
                },
                OverflowPolicy::Drop => Step::Dropped {
                    next: self.buf.len(),
                    skip: 0,
                    discard_line: true,
                },
            },
            None => Step::NeedMore,
        }
    }

    /// At end of input. Call until `None`: complete frames first, then the
    /// incomplete tail as a last frame (flagged truncated when a count
    /// promised more bytes than arrived).
    fn finish(&mut self) -> Option<Lines> {
        if let Some(lines) = self.take_lines() {
            return Some(lines);
        }
        if self.skip > 0 || self.discard_line {
            self.buf.clear();
            self.skip = 0;
            self.discard_line = false;
            return None;
        }
        let rest = self.buf.split().freeze();
        let lead = rest.iter().take_while(|&&c| matches!(c, b'\n' | b'\r' | b' ' | 0)).count();
        if lead == rest.len() {
            return None;
        }
        let b = &rest[lead..];
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let counted = matches!(b.first(), Some(b'1'..=b'9')) && digits <= MAX_COUNT_DIGITS && b.get(digits) == Some(&b' ');
        let start = if counted { lead + digits + 1 } else { lead };
        let len = (rest.len() - start).min(self.max_frame);
        let truncated = counted || rest.len() - start > self.max_frame;
        Some(Lines {
            chunk: rest,
            spans: vec![span(start, len, truncated)],
            dropped: 0,
        })
    }
}

fn span(start: usize, len: usize, truncated: bool) -> LineSpan {
    LineSpan {
        start: start as u32,
        len: len as u32,
        truncated,
    }
}

fn empty(dropped: u64) -> Lines {
    Lines {
        chunk: Bytes::new(),
        spans: Vec::new(),
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in pieces of the given sizes (cycled) and collects
    /// every frame, then the end-of-input frames.
    fn frame(input: &[u8], pieces: &[usize], max: usize, policy: OverflowPolicy) -> (Vec<(Vec<u8>, bool)>, u64) {
        let mut f = OctetFramer::new(max, policy, 64);
        let mut out = Vec::new();
        let mut dropped = 0;
        let mut collect = |lines: Lines, out: &mut Vec<(Vec<u8>, bool)>| {
            dropped += lines.dropped;
            for (i, s) in lines.spans.iter().enumerate() {
                out.push((lines.line(i).to_vec(), s.truncated));
            }
        };
        let mut rest = input;
        let mut k = 0;
        while !rest.is_empty() {
            let n = pieces[k % pieces.len()].clamp(1, rest.len());
            k += 1;
            f.buf_mut().extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(l) = f.take_lines() {
                collect(l, &mut out);
            }
            assert!(f.buf.len() <= max + MAX_COUNT_DIGITS + 1 + 64 + n, "buffer bound");
        }
        while let Some(l) = f.finish() {
            collect(l, &mut out);
        }
        (out, dropped)
    }

    fn encode(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for m in messages {
            v.extend_from_slice(format!("{} ", m.len()).as_bytes());
            v.extend_from_slice(m);
        }
        v
    }

    #[test]
    fn octet_frames_keep_newlines_and_mixed_newline_frames_work() {
        let mut input = encode(&[b"a\nb".to_vec(), b"<13>x".to_vec()]);
        input.extend_from_slice(b"\nplain line\n12abc digits without a space\n");
        let (got, dropped) = frame(&input, &[3], 100, OverflowPolicy::Truncate);
        assert_eq!(dropped, 0);
        let got: Vec<_> = got.into_iter().map(|(l, _)| l).collect();
        assert_eq!(
            got,
            vec![
                b"a\nb".to_vec(),
                b"<13>x".to_vec(),
                b"plain line".to_vec(),
                b"12abc digits without a space".to_vec()
            ]
        );
    }

    #[test]
    fn oversize_frames_are_truncated_or_dropped_and_the_next_frame_survives() {
        let input = encode(&[vec![b'x'; 500], b"next".to_vec()]);
        let (got, _) = frame(&input, &[7, 100], 50, OverflowPolicy::Truncate);
        assert_eq!(got, vec![(vec![b'x'; 50], true), (b"next".to_vec(), false)]);
        let (got, dropped) = frame(&input, &[7, 100], 50, OverflowPolicy::Drop);
        assert_eq!(dropped, 1);
        assert_eq!(got, vec![(b"next".to_vec(), false)]);
    }

    #[test]
    fn an_incomplete_last_frame_is_kept_and_flagged() {
        let (got, _) = frame(b"10 abc", &[100], 100, OverflowPolicy::Truncate);
        assert_eq!(got, vec![(b"abc".to_vec(), true)]);
        let (got, _) = frame(b"5 hello\n\n", &[100], 100, OverflowPolicy::Truncate);
        assert_eq!(got, vec![(b"hello".to_vec(), false)]);
    }

    proptest! {
        #[test]
        fn any_read_split_gives_the_same_frames(
            // RFC 6587: a length is NONZERO-DIGIT *DIGIT.
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..20),
            pieces in proptest::collection::vec(1usize..50, 1..5),
        ) {
            let input = encode(&messages);
            let (got, dropped) = frame(&input, &pieces, 64, OverflowPolicy::Truncate);
            prop_assert_eq!(dropped, 0);
            let want: Vec<_> = messages.into_iter().map(|m| (m, false)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..400), piece in 1usize..64) {
            let _ = frame(&input, &[piece], 32, OverflowPolicy::Truncate);
            let _ = frame(&input, &[piece], 32, OverflowPolicy::Drop);
        }
    }
}
