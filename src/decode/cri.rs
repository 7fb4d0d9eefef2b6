//! The CRI log format (containerd, CRI-O):
//! `<RFC3339Nano time> <stdout|stderr> <P|F>[:tags] <message>`.
//!
//! Unwrapping is split in two: [`CriReader`] runs in order on the file's
//! reader (it must see lines in order to merge `P` pieces) and only finds
//! the three separators of each line; [`CriBatch::decode`] runs on the
//! decode pool and parses the payloads. No regex: a few byte comparisons
//! per line.

use bytes::Bytes;
use serde_json::Value;
use std::time::{Duration, Instant};

use super::partial::{ContainerStats, PartialLines, Piece, Stream};
use super::Decoder;
use crate::enrich::{Fragment, Member};
use crate::event::BatchBuilder;
use crate::framing::Lines;

/// Key of the container timestamp member added to each event.
pub(crate) const TIME_KEY: &str = "time";
/// Key of the stream member (`stdout`, `stderr`) added to each event.
pub(crate) const STREAM_KEY: &str = "stream";

/// One CRI line, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriLine<'a> {
    /// The runtime's timestamp, as written (RFC 3339).
    pub(crate) time: &'a [u8],
    /// Which stream.
    pub(crate) stream: Stream,
    /// A `P` piece: the line continues in the next piece of this stream.
    pub(crate) partial: bool,
    /// The container's output.
    pub message: &'a [u8],
}

/// Splits a CRI line, or `None` when it is not one.
pub fn parse(line: &[u8]) -> Option<CriLine<'_>> {
    let sp = memchr::memchr(b' ', line)?;
    let time = &line[..sp];
    if !looks_like_time(time) {
        return None;
    }
    let rest = &line[sp + 1..];
    let stream = if rest.starts_with(b"stdout ") {
        Stream::Stdout
    } else if rest.starts_with(b"stderr ") {
        Stream::Stderr
    } else {
        return None;
    };
    let rest = &rest[7..];
    let partial = match rest.first()? {
        b'P' => true,
        b'F' => false,
        _ => return None,
    };
    // Tags run to the next space; the message is everything after it (an
    // empty line may have no space at all).
    let (tag, message) = match memchr::memchr(b' ', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if tag.len() > 1 && tag[1] != b':' {
        return None;
    }
    Some(CriLine {
        time,
        stream,
        partial,
        message,
    })
}

/// `2024-01-02T03:04:05.123456789Z` or with a `+hh:mm` offset: the shape,
/// not a calendar check.
fn looks_like_time(t: &[u8]) -> bool {
    t.len() >= 20
        && t.len() <= 40
        && t[4] == b'-'
        && t[7] == b'-'
        && t[10] == b'T'
        && t[13] == b':'
        && t[16] == b':'
        && t.iter()
            .all(|&b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'T' | b'.' | b'Z' | b'+'))
}

/// One event to decode: its payload, and the stream and time to add (none
/// for a line that was not CRI: it is kept as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// The message.
    pub(crate) payload: Piece,
    /// The timestamp.
    pub(crate) time: Piece,
    /// The stream, or `None` for a foreign line.
    pub(crate) stream: Option<Stream>,
    /// Cut at `max_line_bytes` or at the partial-line cap.
    pub(crate) truncated: bool,
    /// File offset where the record's first line starts (0 where unknown):
    /// a checkpoint held before an open multiline group stays here.
    pub(crate) offset: u64,
    /// The payload may hold line breaks (lines joined by multiline, or
    /// frames cut by NUL or octet counts).
    pub(crate) breaks: bool,
    /// A multiline group cut by this bound (`max_lines`, `max_bytes`).
    pub(crate) cut: Option<&'static str>,
}

/// Key of the member that flags a multiline group cut by a bound.
pub(crate) const CUT_KEY: &str = "multiline_cut";

/// A chunk unwrapped into records, ready for the decode pool.
#[derive(Debug, Clone, Default)]
pub struct CriBatch {
    /// The read chunk the records point into.
    pub(crate) chunk: Bytes,
    /// Payloads and timestamps assembled from pieces.
    pub(crate) merged: Vec<u8>,
    /// The events, in order.
    pub(crate) records: Vec<Record>,
}

impl CriBatch {
    /// Bytes of payload, for sizing the output buffer.
    pub(crate) fn payload_bytes(&self) -> usize {
        self.records.iter().map(|r| r.payload.len as usize).sum()
    }

    /// Decodes every record into `out`, adding `stream` and `time` members.
    pub fn decode(&self, decoder: &mut Decoder, fragment: &Fragment, out: &mut BatchBuilder) {
        let stdout = Member::new(STREAM_KEY, &Value::from(Stream::Stdout.as_str()));
        let stderr = Member::new(STREAM_KEY, &Value::from(Stream::Stderr.as_str()));
        // extra[0] is the stream member, kept while the stream stays the
        // same; extra[1] the time, new for every event.
        let mut extra: Vec<Member> = Vec::with_capacity(2);
        let mut current: Option<Stream> = None;
        for r in &self.records {
            let payload = r.payload.get(&self.chunk, &self.merged);
            if r.breaks || r.cut.is_some() {
                // Joined by multiline: rare, off the per-line path.
                let mut extra = Vec::with_capacity(3);
                if let Some(stream) = r.stream {
                    extra.push(Member::string(STREAM_KEY, stream.as_str()));
                    let time = r.time.get(&self.chunk, &self.merged);
                    extra.push(Member::string(TIME_KEY, std::str::from_utf8(time).unwrap_or_default()));
                }
                if let Some(cut) = r.cut {
                    extra.push(Member::string(CUT_KEY, cut));
                }
                decoder.decode_line(payload, r.truncated, &extra, fragment, out);
                continue;
            }
            let Some(stream) = r.stream else {
                decoder.decode_framed_line(payload, r.truncated, &[], fragment, out);
                continue;
            };
            if current != Some(stream) {
                extra.clear();
                extra.push(if stream == Stream::Stdout { stdout.clone() } else { stderr.clone() });
                current = Some(stream);
            }
            extra.truncate(1);
            let time = r.time.get(&self.chunk, &self.merged);
            // `parse` admitted only ASCII time characters.
            extra.push(Member::string(TIME_KEY, std::str::from_utf8(time).unwrap_or_default()));
            decoder.decode_framed_line(payload, r.truncated, &extra, fragment, out);
        }
    }
}

/// The in-order half of CRI decoding for one file: splits lines and merges
/// `P` pieces per stream.
#[derive(Debug)]
pub struct CriReader {
    partials: PartialLines,
    stats: ContainerStats,
}

impl CriReader {
    /// Merged lines are cut at `partial_max_bytes`.
    pub fn new(partial_max_bytes: usize) -> CriReader {
        CriReader {
            partials: PartialLines::new(partial_max_bytes),
            stats: ContainerStats::default(),
        }
    }

    /// Unwraps the lines of a chunk that starts at file offset
    /// `chunk_offset`.
    pub fn unwrap(&mut self, lines: &Lines, chunk_offset: u64, now: Instant) -> CriBatch {
        let mut batch = CriBatch {
            chunk: lines.chunk.clone(),
            merged: Vec::new(),
            records: Vec::with_capacity(lines.len()),
        };
        for (i, span) in lines.spans.iter().enumerate() {
            let line = lines.line(i);
            let Some(cri) = parse(line) else {
                self.stats.foreign += 1;
                batch.records.push(Record {
                    payload: Piece::of_chunk(&lines.chunk, line),
                    time: Piece::default(),
                    stream: None,
                    truncated: span.truncated,
                    offset: chunk_offset + span.start as u64,
                    breaks: false,
                    cut: None,
                });
                continue;
            };
            if cri.partial {
                self.partials
                    .push(cri.stream, cri.message, cri.time, chunk_offset + span.start as u64, now, |_, n| n);
                continue;
            }
            match self.partials.take(cri.stream) {
                None => batch.records.push(Record {
                    payload: Piece::of_chunk(&lines.chunk, cri.message),
                    time: Piece::of_chunk(&lines.chunk, cri.time),
                    stream: Some(cri.stream),
                    truncated: span.truncated,
                    offset: chunk_offset + span.start as u64,
                    breaks: false,
                    cut: None,
                }),
                Some(mut p) => {
                    let room = self.partials_cap().saturating_sub(p.buf.len());
                    if cri.message.len() > room {
                        p.overflowed = true;
                    }
                    if !p.overflowed || room > 0 {
                        p.buf.extend_from_slice(&cri.message[..cri.message.len().min(room)]);
                    }
                    self.stats.merged += 1;
                    if p.overflowed {
                        self.stats.overflowed += 1;
                    }
                    let payload = Piece::append(&mut batch.merged, &p.buf);
                    let time = Piece::append(&mut batch.merged, &p.time);
                    batch.records.push(Record {
                        payload,
                        time,
                        stream: Some(cri.stream),
                        truncated: p.overflowed || span.truncated,
                        offset: p.start_offset,
                        breaks: false,
                        cut: None,
                    });
                }
            }
        }
        batch
    }

    fn partials_cap(&self) -> usize {
        self.partials.max_bytes()
    }

    /// Partial lines older than `timeout` (all, when zero), as records of a
    /// batch with no chunk.
    pub fn take_expired(&mut self, now: Instant, timeout: Duration) -> Option<CriBatch> {
        let expired = self.partials.take_expired(now, timeout);
        if expired.is_empty() {
            return None;
        }
        let mut batch = CriBatch::default();
        for (stream, p) in expired {
            self.stats.timed_out += 1;
            let payload = Piece::append(&mut batch.merged, &p.buf);
            let time = Piece::append(&mut batch.merged, &p.time);
            batch.records.push(Record {
                payload,
                time,
                stream: Some(stream),
                truncated: p.overflowed,
                offset: p.start_offset,
                breaks: false,
                cut: None,
            });
        }
        Some(batch)
    }

    /// Where the oldest unfinished partial line starts in the file.
    pub fn pending_start(&self) -> Option<u64> {
        self.partials.earliest_start()
    }

    /// Counters since the last call.
    pub(crate) fn take_stats(&mut self) -> ContainerStats {
        std::mem::take(&mut self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{decoded, lines};

    fn decode(batch: &CriBatch) -> Vec<serde_json::Value> {
        decoded(|d, out| batch.decode(d, &Fragment::default(), out))
    }

    #[test]
    fn parses_full_and_partial_lines_with_tags() {
        let l = parse(b"2024-01-02T03:04:05.123456789Z stdout F {\"a\":1}").unwrap();
        assert_eq!(l.stream, Stream::Stdout);
        assert!(!l.partial);
        assert_eq!(l.message, b"{\"a\":1}");
        let l = parse(b"2024-01-02T03:04:05.1+01:00 stderr P:x,y part").unwrap();
        assert!(l.partial);
        assert_eq!(l.message, b"part");
        assert_eq!(parse(b"2024-01-02T03:04:05Z stdout F").unwrap().message, b"");
        for bad in [
            &b"hello world"[..],
            b"2024-01-02T03:04:05Z stdin F x",
            b"2024-01-02T03:04:05Z stdout X x",
            b"",
        ] {
            assert!(parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn partial_pieces_merge_per_stream_and_payload_is_decoded_as_json() {
        let mut r = CriReader::new(1 << 20);
        let text = b"2024-01-01T00:00:00.000000001Z stdout P {\"msg\":\"hel\n\
2024-01-01T00:00:00.000000002Z stderr F plain err\n\
2024-01-01T00:00:00.000000003Z stdout F lo\"}\n";
        let batch = r.unwrap(&lines(text), 0, Instant::now());
        let v = decode(&batch);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            serde_json::json!({"message":"plain err","stream":"stderr","time":"2024-01-01T00:00:00.000000002Z"})
        );
        assert_eq!(
            v[1],
            serde_json::json!({"msg":"hello","stream":"stdout","time":"2024-01-01T00:00:00.000000001Z"})
        );
        assert_eq!(r.take_stats().merged, 1);
        assert_eq!(r.pending_start(), None);
    }

    #[test]
    fn pending_piece_holds_back_the_checkpoint_and_times_out() {
        let mut r = CriReader::new(1 << 20);
        let text = b"2024-01-01T00:00:00Z stdout F one\n2024-01-01T00:00:01Z stdout P tw\n";
        let batch = r.unwrap(&lines(text), 100, Instant::now());
        assert_eq!(batch.records.len(), 1);
        assert_eq!(r.pending_start(), Some(100 + 34));
        assert!(r.take_expired(Instant::now(), Duration::from_secs(60)).is_none());
        let late = r.take_expired(Instant::now(), Duration::ZERO).unwrap();
        assert_eq!(decode(&late)[0]["message"], "tw");
        assert_eq!(r.pending_start(), None);
    }

    #[test]
    fn merged_line_is_cut_at_the_cap_and_flagged() {
        let mut r = CriReader::new(6);
        let text = b"2024-01-01T00:00:00Z stdout P abcd\n2024-01-01T00:00:00Z stdout P efgh\n2024-01-01T00:00:00Z stdout F ijkl\n";
        let batch = r.unwrap(&lines(text), 0, Instant::now());
        assert_eq!(batch.records.len(), 1);
        assert!(batch.records[0].truncated);
        assert_eq!(batch.records[0].payload.get(&batch.chunk, &batch.merged), b"abcdef");
    }

    #[test]
    fn foreign_lines_are_kept_whole() {
        let mut r = CriReader::new(100);
        let batch = r.unwrap(&lines(b"not cri at all\n"), 0, Instant::now());
        let v = decode(&batch);
        assert_eq!(v[0], serde_json::json!({"message":"not cri at all"}));
    }
}
