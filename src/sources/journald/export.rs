//! journalctl's export format (`journalctl --output=export`, systemd's
//! "Journal Export Format"): entries end with an empty line; a field is
//! either `KEY=value\n` (text) or `KEY\n`, a little-endian u64 length, that
//! many bytes and `\n` (binary: the value may hold newlines).
//!
//! [`parse_entry`] reads one whole entry from the front of a buffer into
//! field spans, never holding more than `max_entry` bytes: an entry that
//! would grow past it is cut after its last whole field, and [`Skip`]
//! discards the rest of it as it streams past, so a multi-megabyte field
//! (a core dump) never grows the buffer.

use std::ops::Range;

/// One field of an entry: spans of the buffer `parse_entry` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldSpan {
    /// The field name.
    pub(crate) key: Range<usize>,
    /// The value, without the trailing newline.
    pub(crate) value: Range<usize>,
}

/// What [`parse_entry`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A whole entry, its fields in the span list; the caller consumes
    /// `end` bytes (the entry and its empty line).
    Entry {
        /// Bytes the entry took.
        end: usize,
    },
    /// The entry is not complete yet, and what is there is within
    /// `max_entry`: read more and call again.
    NeedMore,
    /// The entry exceeds `max_entry`, or a binary field is malformed (its
    /// data not followed by a newline). The spans hold the whole fields
    /// before `kept`; the caller consumes `resume` bytes and then skips the
    /// rest of the entry with [`Skip`].
    Cut {
        /// End of the last whole field kept.
        kept: usize,
        /// Where skipping starts: a field's start.
        resume: usize,
    },
}

/// Parses the entry at the front of `buf` into `fields` (cleared first).
pub(crate) fn parse_entry(buf: &[u8], max_entry: usize, fields: &mut Vec<FieldSpan>) -> Step {
    fields.clear();
    let mut pos = 0;
    loop {
        let Some(&first) = buf.get(pos) else {
            return if buf.len() > max_entry {
                Step::Cut { kept: pos, resume: pos }
            } else {
                Step::NeedMore
            };
        };
        if first == b'\n' {
            return Step::Entry { end: pos + 1 };
        }
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]).map(|n| pos + n) else {
            return if buf.len() > max_entry {
                Step::Cut { kept: pos, resume: pos }
            } else {
                Step::NeedMore
            };
        };
        if nl + 1 > max_entry {
            return Step::Cut { kept: pos, resume: pos };
        }
        if let Some(eq) = memchr::memchr(b'=', &buf[pos..nl]).map(|e| pos + e) {
            fields.push(FieldSpan {
                key: pos..eq,
                value: eq + 1..nl,
            });
            pos = nl + 1;
            continue;
        }
        // Binary: the length follows the name's newline.
        let data = nl + 1 + 8;
        if data > max_entry {
            return Step::Cut { kept: pos, resume: pos };
        }
        let Some(len_bytes) = buf.get(nl + 1..data) else {
            return Step::NeedMore;
        };
        let mut le = [0u8; 8];
        le.copy_from_slice(len_bytes);
        let len = u64::from_le_bytes(le);
        // The data and its newline; past max_entry (or past usize) it is cut.
        let end = match usize::try_from(len).ok().and_then(|l| data.checked_add(l)) {
            Some(end) if end < max_entry => end,
            _ => return Step::Cut { kept: pos, resume: pos },
        };
        let Some(&after) = buf.get(end) else {
            return Step::NeedMore;
        };
        if after != b'\n' {
            // Not the format: keep what came before; skipping resyncs at the
            // byte after the data, as if a field started there.
            return Step::Cut { kept: pos, resume: end };
        }
        fields.push(FieldSpan {
            key: pos..nl,
            value: data..end,
        });
        pos = end + 1;
    }
}

/// Discards the rest of a cut entry as its bytes arrive, field by field,
/// up to and including the empty line that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Skip {
    /// At the start of a field, or of the empty line that ends the entry.
    #[default]
    FieldStart,
    /// In a field's name: `=` makes it text, a newline binary.
    Name,
    /// In a text value, up to its newline.
    Text,
    /// Reading a binary length: bytes seen so far, little-endian.
    Length {
        /// How many of the 8 bytes were read.
        have: u8,
        /// The length so far.
        value: u64,
    },
    /// In binary data: bytes left.
    Data(u64),
    /// The newline after binary data.
    DataEnd,
}

impl Skip {
    /// Skips over `buf`; returns the bytes consumed and whether the entry
    /// ended (then the bytes after it belong to the next entry).
    pub(crate) fn advance(&mut self, buf: &[u8]) -> (usize, bool) {
        let mut pos = 0;
        while pos < buf.len() {
            match *self {
                Skip::FieldStart => {
                    if buf[pos] == b'\n' {
                        *self = Skip::FieldStart;
                        return (pos + 1, true);
                    }
                    *self = Skip::Name;
                }
                Skip::Name => match memchr::memchr2(b'=', b'\n', &buf[pos..]) {
                    Some(i) => {
                        *self = if buf[pos + i] == b'=' {
                            Skip::Text
                        } else {
                            Skip::Length { have: 0, value: 0 }
                        };
                        pos += i + 1;
                    }
                    None => pos = buf.len(),
                },
                Skip::Text => match memchr::memchr(b'\n', &buf[pos..]) {
                    Some(i) => {
                        *self = Skip::FieldStart;
                        pos += i + 1;
                    }
                    None => pos = buf.len(),
                },
                Skip::Length { have, value } => {
                    let value = value | (u64::from(buf[pos]) << (8 * u32::from(have)));
                    pos += 1;
                    *self = if have == 7 {
                        Skip::Data(value)
                    } else {
                        Skip::Length { have: have + 1, value }
                    };
                }
                Skip::Data(left) => {
                    let n = left.min((buf.len() - pos) as u64);
                    pos += n as usize;
                    *self = if n == left { Skip::DataEnd } else { Skip::Data(left - n) };
                }
                Skip::DataEnd => {
                    // A newline, if the input keeps to the format; if not,
                    // this byte starts the next field.
                    if buf[pos] == b'\n' {
                        pos += 1;
                    }
                    *self = Skip::FieldStart;
                }
            }
        }
        (pos, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(key: &str, value: &[u8]) -> Vec<u8> {
        let mut v = key.as_bytes().to_vec();
        v.push(b'\n');
        v.extend_from_slice(&(value.len() as u64).to_le_bytes());
        v.extend_from_slice(value);
        v.push(b'\n');
        v
    }

    fn fields_of<'a>(buf: &'a [u8], spans: &[FieldSpan]) -> Vec<(&'a [u8], &'a [u8])> {
        spans.iter().map(|f| (&buf[f.key.clone()], &buf[f.value.clone()])).collect()
    }

    #[test]
    fn text_and_binary_fields_are_read_and_the_empty_line_ends_the_entry() {
        let mut buf = b"__CURSOR=s=1\nMESSAGE=hi\n".to_vec();
        buf.extend(binary("BIN", b"a\n\nb"));
        buf.extend_from_slice(b"\nNEXT=1\n");
        let mut spans = Vec::new();
        let Step::Entry { end } = parse_entry(&buf, 1 << 20, &mut spans) else {
            panic!("not an entry")
        };
        assert_eq!(&buf[end..], b"NEXT=1\n");
        assert_eq!(
            fields_of(&buf, &spans),
            vec![(&b"__CURSOR"[..], &b"s=1"[..]), (b"MESSAGE", b"hi"), (b"BIN", b"a\n\nb")]
        );
    }

    #[test]
    fn every_prefix_of_an_entry_asks_for_more() {
        let mut buf = b"A=1\n".to_vec();
        buf.extend(binary("B", b"xy\nz"));
        buf.push(b'\n');
        let mut spans = Vec::new();
        for n in 0..buf.len() {
            assert_eq!(parse_entry(&buf[..n], 1 << 20, &mut spans), Step::NeedMore, "prefix {n}");
        }
        assert_eq!(parse_entry(&buf, 1 << 20, &mut spans), Step::Entry { end: buf.len() });
    }

    #[test]
    fn an_oversize_entry_is_cut_after_its_last_whole_field_and_the_rest_skipped() {
        let mut buf = b"__CURSOR=c1\nMESSAGE=m\n".to_vec();
        let keep = buf.len();
        buf.extend(binary("COREDUMP", &[7u8; 5000]));
        buf.extend_from_slice(b"AFTER=x\n\nNEXT=1\n\n");
        let mut spans = Vec::new();
        assert_eq!(parse_entry(&buf, 1000, &mut spans), Step::Cut { kept: keep, resume: keep });
        assert_eq!(fields_of(&buf, &spans).len(), 2);
        // The skipper, fed in small pieces, stops right after the entry.
        let mut skip = Skip::default();
        let mut pos = keep;
        loop {
            let piece = &buf[pos..(pos + 7).min(buf.len())];
            let (n, done) = skip.advance(piece);
            pos += n;
            if done {
                break;
            }
            assert!(n > 0, "progress");
        }
        assert_eq!(&buf[pos..], b"NEXT=1\n\n");
    }

    #[test]
    fn a_long_text_line_without_its_newline_is_cut_not_buffered() {
        let buf = vec![b'a'; 2000];
        let mut spans = Vec::new();
        assert_eq!(parse_entry(&buf, 1000, &mut spans), Step::Cut { kept: 0, resume: 0 });
    }

    #[test]
    fn huge_binary_lengths_do_not_overflow() {
        let mut buf = b"K\n".to_vec();
        buf.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut spans = Vec::new();
        assert_eq!(parse_entry(&buf, 1 << 20, &mut spans), Step::Cut { kept: 0, resume: 0 });
    }
}
