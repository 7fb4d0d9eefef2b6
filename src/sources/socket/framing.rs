//! Framing of stream connections: newline-delimited (NDJSON, syslog with
//! non-transparent framing), NUL-terminated (syslog from glibc and
//! Python's `SysLogHandler` on a unix stream socket; GELF over TCP) or
//! RFC 6587 octet counting (`LEN SP MSG`), chosen per connection.

use bytes::{Buf, Bytes, BytesMut};

use crate::framing::{LineFramer, LineSpan, Lines, OverflowPolicy};

/// Longest octet count accepted: ten digits covers any frame a u32 can
/// describe; a longer run of digits is not a length.
const MAX_COUNT_DIGITS: usize = 10;

/// How a connection's bytes are cut into messages, once decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnFraming {
    /// Each message ends with a newline (an optional `\r` before it is
    /// not part of the message).
    Newline,
    /// Each message ends with a NUL (RFC 6587 non-transparent framing with
    /// the NUL trailer); newlines inside a message are kept.
    Nul,
    /// RFC 6587 octet counting (`LEN SP MSG`); a frame without a count
    /// ends at a newline, so mixed senders work.
    OctetCounting,
}

impl ConnFraming {
    /// The cut `auto` picks for a syslog connection from its first read:
    /// octet counting when it starts with a digit (a count), NUL framing
    /// when a NUL has arrived (glibc and Python end each record with one,
    /// and a newline-framed record never holds one), newlines otherwise.
    pub(crate) fn detect(first: &[u8]) -> ConnFraming {
        match first.first() {
            Some(b'1'..=b'9') => ConnFraming::OctetCounting,
            _ if memchr::memchr(0, first).is_some() => ConnFraming::Nul,
            _ => ConnFraming::Newline,
        }
    }
}

/// How one connection is framed.
#[derive(Debug)]
pub(crate) enum ConnFramer {
    /// Newline-delimited.
    Newline(LineFramer),
    /// NUL-terminated or octet-counted.
    Rfc6587(Rfc6587Framer),
}

impl ConnFramer {
    /// A framer that cuts as `cut` says.
    pub(crate) fn new(cut: ConnFraming, max_frame: usize, policy: OverflowPolicy, read_chunk: usize) -> ConnFramer {
        match cut {
            ConnFraming::Newline => ConnFramer::Newline(LineFramer::with_read_chunk(max_frame, policy, read_chunk)),
            ConnFraming::Nul => ConnFramer::Rfc6587(Rfc6587Framer::new(false, 0, max_frame, policy, read_chunk)),
            ConnFraming::OctetCounting => ConnFramer::Rfc6587(Rfc6587Framer::new(true, b'\n', max_frame, policy, read_chunk)),
        }
    }

    /// The read buffer: append only.
    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
        match self {
            ConnFramer::Newline(f) => f.buf_mut(),
            ConnFramer::Rfc6587(f) => f.buf_mut(),
        }
    }

    /// Bytes buffered that are not yet part of a complete frame.
    pub(crate) fn pending_bytes(&self) -> usize {
        match self {
            ConnFramer::Newline(f) => f.pending_bytes(),
            ConnFramer::Rfc6587(f) => f.buf.len(),
        }
    }

    /// The next run of complete frames, if any. Call until `None`.
    pub(crate) fn take_lines(&mut self) -> Option<Lines> {
        match self {
            ConnFramer::Newline(f) => f.take_lines(),
            ConnFramer::Rfc6587(f) => f.take_lines(),
        }
    }

    /// At end of input: what is left, as a last frame.
    pub(crate) fn finish(&mut self) -> Option<Lines> {
        match self {
            ConnFramer::Newline(f) => f.finish(),
            ConnFramer::Rfc6587(f) => f.finish(),
        }
    }

    /// Switches a newline framer that has not framed anything yet to
    /// `cut`, keeping what it buffered.
    pub(crate) fn switch_to(self, cut: ConnFraming, max_frame: usize, policy: OverflowPolicy, read_chunk: usize) -> ConnFramer {
        match (self, cut) {
            (ConnFramer::Newline(mut f), ConnFraming::Nul | ConnFraming::OctetCounting) => {
                let mut next = ConnFramer::new(cut, max_frame, policy, read_chunk);
                let pending = f.buf_mut().split();
                next.buf_mut().extend_from_slice(&pending);
                next
            }
            (same, _) => same,
        }
    }
}

/// Fuzzing entry point: frames `data` with octet counting, handed over in
/// pieces of `piece` bytes as a connection would read it, then ends the
/// input. Returns every run of frames in order.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_octet_frames(data: &[u8], piece: usize, max_frame: usize, policy: OverflowPolicy) -> Vec<Lines> {
    let mut framer = ConnFramer::new(ConnFraming::OctetCounting, max_frame, policy, piece.max(1));
    let mut out = Vec::new();
    for p in data.chunks(piece.max(1)) {
        framer.buf_mut().extend_from_slice(p);
        out.extend(std::iter::from_fn(|| framer.take_lines()));
    }
    out.extend(std::iter::from_fn(|| framer.finish()));
    out
}

/// RFC 6587 framing: octet counting (section 3.4.1), tolerant of mixed
/// senders (a frame that does not start with a count ends at its trailer),
/// or non-transparent framing alone (section 3.4.2: every frame ends at its
/// trailer, NUL here). Separators between frames (newlines, carriage
/// returns, spaces, NULs) are skipped.
///
/// Invariants: `buf` starts at a frame boundary unless `skip > 0` (the
/// rest of an oversize counted frame still to discard) or
/// `discard_to_trailer` is set (the rest of an oversize uncounted frame);
/// `buf` never grows past `max_frame + MAX_COUNT_DIGITS + 1 + read_chunk`.
#[derive(Debug)]
pub(crate) struct Rfc6587Framer {
    /// Whether a frame may start with an octet count.
    counting: bool,
    /// The byte that ends an uncounted frame: `\n` or NUL.
    trailer: u8,
    buf: BytesMut,
    max_frame: usize,
    policy: OverflowPolicy,
    read_chunk: usize,
    skip: usize,
    discard_to_trailer: bool,
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
    Dropped {
        next: usize,
        skip: usize,
        discard_to_trailer: bool,
    },
    /// A truncated frame whose remaining `skip` bytes (or the rest up to the trailer)
    /// must be discarded after it.
    Cut {
        start: usize,
        len: usize,
        next: usize,
        skip: usize,
        discard_to_trailer: bool,
    },
    /// Separators between frames, consumed up to `next`.
    Skip { next: usize },
    /// Not enough bytes for the next frame.
    NeedMore,
}

impl Rfc6587Framer {
    /// A framer; `counting` allows octet counts, `trailer` ends a frame
    /// without one.
    pub(crate) fn new(counting: bool, trailer: u8, max_frame: usize, policy: OverflowPolicy, read_chunk: usize) -> Rfc6587Framer {
        Rfc6587Framer {
            counting,
            trailer,
            buf: BytesMut::with_capacity(read_chunk),
            max_frame: max_frame.max(1),
            policy,
            read_chunk: read_chunk.max(1),
            skip: 0,
            discard_to_trailer: false,
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
        if self.discard_to_trailer {
            match memchr::memchr(self.trailer, &self.buf) {
                Some(nl) => {
                    self.buf.advance(nl + 1);
                    self.discard_to_trailer = false;
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
                    discard_to_trailer,
                } => {
                    spans.push(span(start, len, true));
                    pos = next;
                    after = Some((skip, discard_to_trailer));
                    break;
                }
                Step::Dropped {
                    next,
                    skip,
                    discard_to_trailer,
                } => {
                    dropped += 1;
                    pos = next;
                    after = Some((skip, discard_to_trailer));
                    break;
                }
                Step::Skip { next } => pos = next,
                Step::NeedMore => break,
            }
        }
        let chunk: Bytes = self.buf.split_to(pos).freeze();
        if let Some((skip, discard_to_trailer)) = after {
            self.skip = skip;
            self.discard_to_trailer = discard_to_trailer;
            self.discard();
        }
        if spans.is_empty() {
            return (dropped > 0).then(|| empty(dropped));
        }
        Some(Lines {
            chunk,
            spans,
            dropped,
            may_hold_breaks: true,
        })
    }

    /// Frames the bytes at `buf[pos..]`.
    fn step(&self, pos: usize) -> Step {
        let b = &self.buf[pos..];
        // Separators some senders put between frames.
        let lead = b.iter().take_while(|&&c| is_separator(c)).count();
        let b = &b[lead..];
        let at = pos + lead;
        if lead > 0 {
            return Step::Skip { next: at };
        }
        if b.is_empty() {
            return Step::NeedMore;
        }
        if self.counting && matches!(b[0], b'1'..=b'9') {
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
                            discard_to_trailer: false,
                        },
                        OverflowPolicy::Truncate if have >= self.max_frame => Step::Cut {
                            start,
                            len: self.max_frame,
                            next: start + self.max_frame,
                            skip: len - self.max_frame,
                            discard_to_trailer: false,
                        },
                        OverflowPolicy::Truncate => Step::NeedMore,
                    };
                }
                // Digits not followed by a space: not a count, a line.
                _ => {}
            }
        }
        match memchr::memchr(self.trailer, b) {
            Some(nl) => {
                let len = self.content_len(&b[..nl]);
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
                            discard_to_trailer: false,
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
                    discard_to_trailer: true,
                },
                OverflowPolicy::Drop => Step::Dropped {
                    next: self.buf.len(),
                    skip: 0,
                    discard_to_trailer: true,
                },
            },
            None => Step::NeedMore,
        }
    }

    /// Length of a frame's content without the line ending before its
    /// trailer: a `\r` before a newline trailer; any `\r` and `\n` before
    /// a NUL (some senders end records with `\n\0`).
    fn content_len(&self, frame: &[u8]) -> usize {
        if self.trailer == b'\n' {
            frame.strip_suffix(b"\r").unwrap_or(frame).len()
        } else {
            frame.iter().rposition(|&c| !matches!(c, b'\n' | b'\r')).map_or(0, |i| i + 1)
        }
    }

    /// At end of input. Call until `None`: complete frames first, then the
    /// incomplete tail as a last frame (flagged truncated when a count
    /// promised more bytes than arrived).
    fn finish(&mut self) -> Option<Lines> {
        if let Some(lines) = self.take_lines() {
            return Some(lines);
        }
        if self.skip > 0 || self.discard_to_trailer {
            self.buf.clear();
            self.skip = 0;
            self.discard_to_trailer = false;
            return None;
        }
        let rest = self.buf.split().freeze();
        let lead = rest.iter().take_while(|&&c| is_separator(c)).count();
        if lead == rest.len() {
            return None;
        }
        let b = &rest[lead..];
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let counted = self.counting && matches!(b.first(), Some(b'1'..=b'9')) && digits <= MAX_COUNT_DIGITS && b.get(digits) == Some(&b' ');
        let start = if counted { lead + digits + 1 } else { lead };
        let len = (rest.len() - start).min(self.max_frame);
        let truncated = counted || rest.len() - start > self.max_frame;
        Some(Lines {
            chunk: rest,
            spans: vec![span(start, len, truncated)],
            dropped: 0,
            may_hold_breaks: true,
        })
    }
}

/// Bytes some senders put between frames.
fn is_separator(c: u8) -> bool {
    matches!(c, b'\n' | b'\r' | b' ' | 0)
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
        may_hold_breaks: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` to an octet-counting framer in pieces of the given
    /// sizes (cycled) and collects every frame, then the end-of-input
    /// frames.
    fn frame(input: &[u8], pieces: &[usize], max: usize, policy: OverflowPolicy) -> (Vec<(Vec<u8>, bool)>, u64) {
        frame_with(Rfc6587Framer::new(true, b'\n', max, policy, 64), input, pieces)
    }

    /// The same with a NUL-framing framer.
    fn frame_nul(input: &[u8], pieces: &[usize], max: usize, policy: OverflowPolicy) -> (Vec<(Vec<u8>, bool)>, u64) {
        frame_with(Rfc6587Framer::new(false, 0, max, policy, 64), input, pieces)
    }

    fn frame_with(mut f: Rfc6587Framer, input: &[u8], pieces: &[usize]) -> (Vec<(Vec<u8>, bool)>, u64) {
        let max = f.max_frame;
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

    type Framing = fn(&[u8], &[usize], usize, OverflowPolicy) -> (Vec<(Vec<u8>, bool)>, u64);

    #[test]
    fn oversize_frames_are_truncated_or_dropped_and_the_next_frame_survives() {
        let counted = encode(&[vec![b'x'; 500], b"next".to_vec()]);
        let mut nul = vec![b'x'; 500];
        nul.extend_from_slice(b"\0next\0");
        for (input, framing) in [(counted, frame as Framing), (nul, frame_nul)] {
            let (got, _) = framing(&input, &[7, 100], 50, OverflowPolicy::Truncate);
            assert_eq!(got, vec![(vec![b'x'; 50], true), (b"next".to_vec(), false)]);
            let (got, dropped) = framing(&input, &[7, 100], 50, OverflowPolicy::Drop);
            assert_eq!(dropped, 1);
            assert_eq!(got, vec![(b"next".to_vec(), false)]);
        }
    }

    #[test]
    fn an_incomplete_last_frame_is_kept_and_flagged() {
        let (got, _) = frame(b"10 abc", &[100], 100, OverflowPolicy::Truncate);
        assert_eq!(got, vec![(b"abc".to_vec(), true)]);
        let (got, _) = frame(b"5 hello\n\n", &[100], 100, OverflowPolicy::Truncate);
        assert_eq!(got, vec![(b"hello".to_vec(), false)]);
    }

    #[test]
    fn nul_frames_keep_their_newlines_and_separators_between_them_are_skipped() {
        let input = b"<12>one\0<12>two\n\0\n<11>first line\nsecond line\x0012 apples: not a count\0<14>no trailer";
        let (got, dropped) = frame_nul(input, &[5], 100, OverflowPolicy::Truncate);
        assert_eq!(dropped, 0);
        let got: Vec<_> = got.into_iter().map(|(l, _)| String::from_utf8(l).unwrap()).collect();
        assert_eq!(
            got,
            [
                "<12>one",
                "<12>two",
                "<11>first line\nsecond line",
                "12 apples: not a count",
                "<14>no trailer"
            ]
        );
    }

    #[test]
    fn auto_picks_octet_counting_nul_or_newlines_from_the_first_read() {
        assert_eq!(ConnFraming::detect(b"23 <13>1 - h app - - - x"), ConnFraming::OctetCounting);
        assert_eq!(ConnFraming::detect(b"<12>one\0<12>tw"), ConnFraming::Nul);
        assert_eq!(ConnFraming::detect(b"<11>Traceback:\n  File x\0"), ConnFraming::Nul);
        assert_eq!(ConnFraming::detect(b"<13>one\n<13>two\n"), ConnFraming::Newline);
        assert_eq!(ConnFraming::detect(b"<13>a partial rec"), ConnFraming::Newline);
    }

    #[test]
    fn switching_a_newline_framer_keeps_what_it_buffered() {
        let mut f = ConnFramer::new(ConnFraming::Newline, 100, OverflowPolicy::Truncate, 64);
        f.buf_mut().extend_from_slice(b"<12>one\n1\0<12>tw");
        let mut f = f.switch_to(ConnFraming::Nul, 100, OverflowPolicy::Truncate, 64);
        f.buf_mut().extend_from_slice(b"o\0");
        let lines = f.take_lines().unwrap();
        assert_eq!((lines.line(0), lines.line(1)), (&b"<12>one\n1"[..], &b"<12>two"[..]));
    }

    proptest! {
        #[test]
        fn any_read_split_gives_the_same_nul_frames(
            messages in proptest::collection::vec("[^\\x00\\n\\r ][^\\x00]{0,30}[^\\x00\\n\\r]", 0..20),
            pieces in proptest::collection::vec(1usize..50, 1..5),
        ) {
            let input: Vec<u8> = messages.iter().flat_map(|m| m.bytes().chain([0])).collect();
            let (got, dropped) = frame_nul(&input, &pieces, 256, OverflowPolicy::Truncate);
            prop_assert_eq!(dropped, 0);
            let want: Vec<_> = messages.into_iter().map(|m| (m.into_bytes(), false)).collect();
            prop_assert_eq!(got, want);
        }

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
            let _ = frame_nul(&input, &[piece], 32, OverflowPolicy::Truncate);
            let _ = frame_nul(&input, &[piece], 32, OverflowPolicy::Drop);
        }
    }
}
