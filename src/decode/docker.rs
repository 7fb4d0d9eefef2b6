//! Docker's json-file format: one JSON object per line,
//! `{"log":"…\n","stream":"stdout","time":"…"}`. Docker splits lines longer
//! than 16 KiB into pieces whose `log` does not end in a newline.
//!
//! [`DockerReader`] runs in order on the file's reader: it finds where `log`
//! ends with byte searches (the key order is fixed by docker) to tell
//! pieces from whole lines and merges pieces, still escaped, into one
//! wrapper. [`DockerBatch::decode`] runs on the decode pool: it parses each
//! wrapper with simd-json to unescape `log`, then decodes the payload like
//! any line.

use bytes::Bytes;
use serde_json::Value;
use simd_json::{Buffers, Node, Tape};
use std::cell::RefCell;
use std::time::{Duration, Instant};

use super::cri::{STREAM_KEY, TIME_KEY};
use super::partial::{ContainerStats, PartialLines, Piece, Stream};
use super::Decoder;
use crate::enrich::{Fragment, Member};
use crate::event::BatchBuilder;
use crate::framing::Lines;

const LOG_PREFIX: &[u8] = b"{\"log\":\"";
const STREAM_MARK: &[u8] = b"\",\"stream\":\"";
const TIME_MARK: &[u8] = b"\",\"time\":\"";

/// A docker line split by byte search, without unescaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DockerLine<'a> {
    /// The `log` value, still JSON-escaped.
    pub(crate) log_raw: &'a [u8],
    /// Which stream.
    pub(crate) stream: Stream,
    /// The `time` value.
    pub(crate) time: &'a [u8],
    /// `log` ends with a newline: the line is whole (or the last piece).
    pub(crate) complete: bool,
}

/// Splits a json-file line, or `None` when it is not one. Docker's own
/// compact layout is split by byte search; the same object laid out
/// otherwise (spaces, other key order, extra keys) is walked as JSON.
pub(crate) fn split(line: &[u8]) -> Option<DockerLine<'_>> {
    split_compact(line).or_else(|| {
        // Only a line that could be a wrapper pays for the walk.
        let first = line.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'{') && memchr::memmem::find(line, b"\"log\"").is_some() {
            split_any_layout(line)
        } else {
            None
        }
    })
}

/// Splits a line written in docker's exact layout,
/// `{"log":"…","stream":"…","time":"…"…`.
fn split_compact(line: &[u8]) -> Option<DockerLine<'_>> {
    if !line.starts_with(LOG_PREFIX) {
        return None;
    }
    // Inside a JSON string every `"` is escaped, so the last unescaped
    // `","stream":"` is the real end of `log`.
    let at = memchr::memmem::rfind(line, STREAM_MARK)?;
    if at < LOG_PREFIX.len() {
        return None;
    }
    let log_raw = &line[LOG_PREFIX.len()..at];
    let after = &line[at + STREAM_MARK.len()..];
    let stream = if after.starts_with(b"stdout\"") {
        Stream::Stdout
    } else if after.starts_with(b"stderr\"") {
        Stream::Stderr
    } else {
        return None;
    };
    let after = &after[6..];
    let time = match memchr::memmem::find(after, TIME_MARK) {
        Some(t) => {
            let v = &after[t + TIME_MARK.len()..];
            &v[..memchr::memchr(b'"', v)?]
        }
        None => &after[..0],
    };
    Some(DockerLine {
        log_raw,
        stream,
        time,
        complete: ends_with_escaped_newline(log_raw),
    })
}

/// Splits a wrapper in any JSON layout by walking its top-level object:
/// `log` must be a string and `stream` `"stdout"` or `"stderr"`; `time`
/// is used when it is a string. Nested values are skipped, not checked
/// (the decode pool parses the wrapper in full).
fn split_any_layout(line: &[u8]) -> Option<DockerLine<'_>> {
    let mut w = Walk { bytes: line, at: 0 };
    let (mut log, mut stream, mut time) = (None, None, None);
    w.expect(b'{')?;
    if !w.eat(b'}') {
        loop {
            let key = w.string()?;
            w.expect(b':')?;
            let value = w.value()?;
            let body = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\""));
            match key {
                b"log" => log = Some(body?),
                b"stream" => {
                    stream = Some(match body? {
                        b"stdout" => Stream::Stdout,
                        b"stderr" => Stream::Stderr,
                        _ => return None,
                    })
                }
                b"time" => time = body,
                _ => {}
            }
            if w.eat(b'}') {
                break;
            }
            w.expect(b',')?;
        }
    }
    w.skip_whitespace();
    if w.at != line.len() {
        return None;
    }
    let log_raw = log?;
    Some(DockerLine {
        log_raw,
        stream: stream?,
        time: time.unwrap_or(&line[..0]),
        complete: ends_with_escaped_newline(log_raw),
    })
}

/// A cursor over one JSON text. Every method skips whitespace first and
/// returns `None` on bytes that JSON does not allow there.
struct Walk<'a> {
    bytes: &'a [u8],
    /// Invariant: `at <= bytes.len()`.
    at: usize,
}

/// How deep [`Walk::value`] follows nested objects and arrays; deeper
/// wrappers are not docker's.
const MAX_DEPTH: usize = 64;

impl<'a> Walk<'a> {
    fn skip_whitespace(&mut self) {
        while self.bytes.get(self.at).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// A string's body, still escaped.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' => self.at = (self.at + 2).min(self.bytes.len()),
                b if b < 0x20 => return None,
                _ => self.at += 1,
            }
        }
        let body = self.bytes.get(start..self.at)?;
        self.at += 1;
        Some(body)
    }

    /// One value, as it is written (a string with its quotes).
    fn value(&mut self) -> Option<&'a [u8]> {
        self.skip_whitespace();
        let start = self.at;
        let mut depth = 0usize;
        loop {
            self.skip_whitespace();
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    self.at += 1;
                    continue;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    self.at += 1;
                }
                b',' | b':' if depth > 0 => {
                    self.at += 1;
                    continue;
                }
                b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') => {
                    while self
                        .bytes
                        .get(self.at)
                        .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                    {
                        self.at += 1;
                    }
                }
                _ => return None,
            }
            if depth == 0 {
                return Some(&self.bytes[start..self.at]);
            }
        }
    }
}

/// `raw` ends with the escape `\n` (and not with an escaped backslash
/// followed by `n`).
fn ends_with_escaped_newline(raw: &[u8]) -> bool {
    if !raw.ends_with(b"\\n") {
        return false;
    }
    let backslashes = raw[..raw.len() - 1].iter().rev().take_while(|&&b| b == b'\\').count();
    backslashes % 2 == 1
}

/// The longest prefix of `raw` no longer than `max` that does not end
/// inside an escape sequence.
fn safe_cut(raw: &[u8], max: usize) -> usize {
    let max = max.min(raw.len());
    let window_start = max.saturating_sub(6);
    let mut i = window_start;
    // Walk escapes from a point known to be outside one: the start of the
    // window may be inside one, so step back to the start of its run.
    while i > 0 && raw[i - 1] == b'\\' {
        i -= 1;
    }
    let mut cut = max;
    while i < max {
        if raw[i] == b'\\' {
            let len = if raw.get(i + 1) == Some(&b'u') { 6 } else { 2 };
            if i + len > max {
                cut = i;
                break;
            }
            i += len;
        } else {
            i += 1;
        }
    }
    cut
}

/// A chunk of wrapper lines (whole, or assembled from pieces).
#[derive(Debug, Clone, Default)]
pub struct DockerBatch {
    /// The read chunk.
    pub(crate) chunk: Bytes,
    /// Wrappers assembled from pieces.
    pub(crate) merged: Vec<u8>,
    /// Each event's wrapper and whether it was cut.
    pub(crate) records: Vec<(Piece, bool)>,
}

struct Scratch {
    bytes: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        bytes: Vec::with_capacity(4096),
        buffers: Buffers::new(4096),
        tape: Tape(Vec::new()),
    });
}

impl DockerBatch {
    /// Bytes of wrapper, for sizing the output buffer.
    pub(crate) fn wrapper_bytes(&self) -> usize {
        self.records.iter().map(|(p, _)| p.len as usize).sum()
    }

    /// Decodes every record: the wrapper is parsed to unescape `log`, the
    /// payload then decoded with `stream` and `time` members. A line that
    /// is not a docker wrapper is decoded as it is.
    pub fn decode(&self, decoder: &mut Decoder, fragment: &Fragment, out: &mut BatchBuilder) {
        let stdout = Member::new(STREAM_KEY, &Value::from(Stream::Stdout.as_str()));
        let stderr = Member::new(STREAM_KEY, &Value::from(Stream::Stderr.as_str()));
        let mut extra: Vec<Member> = Vec::with_capacity(2);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let Scratch { bytes, buffers, tape } = &mut *s;
            for (piece, truncated) in &self.records {
                let line = piece.get(&self.chunk, &self.merged);
                bytes.clear();
                bytes.extend_from_slice(line);
                bytes.resize(line.len() + simd_json::INPUT_PADDING, 0);
                let mut t: Tape<'_> = std::mem::replace(tape, Tape(Vec::new())).reset();
                let parsed = simd_json::fill_tape_padded(bytes, line.len(), buffers, &mut t).is_ok();
                let fields = if parsed { wrapper_fields(&t.0) } else { None };
                match fields {
                    Some((log, stream, time)) => {
                        let log = log.strip_suffix('\n').unwrap_or(log);
                        let log = log.strip_suffix('\r').unwrap_or(log);
                        extra.clear();
                        match stream {
                            Some("stdout") => extra.push(stdout.clone()),
                            Some("stderr") => extra.push(stderr.clone()),
                            Some(other) => extra.push(Member::new(STREAM_KEY, &Value::from(other))),
                            None => {}
                        }
                        if let Some(time) = time {
                            extra.push(Member::string(TIME_KEY, time));
                        }
                        decoder.decode_line(log.as_bytes(), *truncated, &extra, fragment, out);
                    }
                    None => decoder.decode_line(line, *truncated, &[], fragment, out),
                }
                *tape = t.reset();
            }
        });
    }
}

/// `log`, `stream` and `time` of a parsed wrapper; `None` unless the root
/// is an object with a string `log`.
fn wrapper_fields<'t>(nodes: &'t [Node<'t>]) -> Option<(&'t str, Option<&'t str>, Option<&'t str>)> {
    let Some(&Node::Object { len, .. }) = nodes.first() else {
        return None;
    };
    let (mut log, mut stream, mut time) = (None, None, None);
    let mut idx = 1;
    for _ in 0..len {
        let Some(Node::String(key)) = nodes.get(idx) else { return None };
        idx += 1;
        let value = nodes.get(idx)?;
        if let Node::String(v) = value {
            match *key {
                "log" => log = Some(*v),
                "stream" => stream = Some(*v),
                "time" => time = Some(*v),
                _ => {}
            }
        }
        idx += match value {
            Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
            _ => 1,
        };
    }
    Some((log?, stream, time))
}

/// The in-order half of docker decoding for one file: tells pieces from
/// whole lines and merges pieces per stream.
#[derive(Debug)]
pub struct DockerReader {
    partials: PartialLines,
    stats: ContainerStats,
}

impl DockerReader {
    /// Assembled `log` values are cut at `partial_max_bytes` (escaped).
    pub fn new(partial_max_bytes: usize) -> DockerReader {
        DockerReader {
            partials: PartialLines::new(partial_max_bytes),
            stats: ContainerStats::default(),
        }
    }

    /// Unwraps the lines of a chunk that starts at file offset
    /// `chunk_offset`.
    pub fn unwrap(&mut self, lines: &Lines, chunk_offset: u64, now: Instant) -> DockerBatch {
        let mut batch = DockerBatch {
            chunk: lines.chunk.clone(),
            merged: Vec::new(),
            records: Vec::with_capacity(lines.len()),
        };
        for (i, span) in lines.spans.iter().enumerate() {
            let line = lines.line(i);
            let Some(d) = split(line).filter(|_| !span.truncated) else {
                if !span.truncated {
                    self.stats.foreign += 1;
                }
                batch.records.push((Piece::of_chunk(&lines.chunk, line), span.truncated));
                continue;
            };
            if !d.complete {
                self.partials
                    .push(d.stream, d.log_raw, d.time, chunk_offset + span.start as u64, now, safe_cut);
                continue;
            }
            if !self.partials.has(d.stream) {
                batch.records.push((Piece::of_chunk(&lines.chunk, line), false));
                continue;
            }
            self.partials.push(d.stream, d.log_raw, d.time, 0, now, safe_cut);
            if let Some(p) = self.partials.take(d.stream) {
                self.stats.merged += 1;
                if p.overflowed {
                    self.stats.overflowed += 1;
                }
                batch
                    .records
                    .push((wrap(&mut batch.merged, d.stream, &p.buf, &p.time), p.overflowed));
            }
        }
        batch
    }

    /// Pieces older than `timeout` (all, when zero), as wrappers.
    pub fn take_expired(&mut self, now: Instant, timeout: Duration) -> Option<DockerBatch> {
        let expired = self.partials.take_expired(now, timeout);
        if expired.is_empty() {
            return None;
        }
        let mut batch = DockerBatch::default();
        for (stream, p) in expired {
            self.stats.timed_out += 1;
            batch.records.push((wrap(&mut batch.merged, stream, &p.buf, &p.time), p.overflowed));
        }
        Some(batch)
    }

    /// Where the oldest unfinished piece starts in the file.
    pub fn pending_start(&self) -> Option<u64> {
        self.partials.earliest_start()
    }

    /// Counters since the last call.
    pub(crate) fn take_stats(&mut self) -> ContainerStats {
        std::mem::take(&mut self.stats)
    }
}

/// Writes a wrapper around an escaped `log` value into `merged`.
fn wrap(merged: &mut Vec<u8>, stream: Stream, log_raw: &[u8], time: &[u8]) -> Piece {
    let start = merged.len();
    merged.extend_from_slice(LOG_PREFIX);
    merged.extend_from_slice(log_raw);
    merged.extend_from_slice(STREAM_MARK);
    merged.extend_from_slice(stream.as_str().as_bytes());
    merged.extend_from_slice(TIME_MARK);
    merged.extend_from_slice(time);
    merged.extend_from_slice(b"\"}");
    Piece {
        start: start as u32,
        len: (merged.len() - start) as u32,
        merged: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{decoded, lines};

    fn decode(batch: &DockerBatch) -> Vec<serde_json::Value> {
        decoded(|d, out| batch.decode(d, &Fragment::default(), out))
    }

    #[test]
    fn escaped_newline_is_told_from_escaped_backslash() {
        assert!(ends_with_escaped_newline(br"abc\n"));
        assert!(!ends_with_escaped_newline(br"abc\\n"));
        assert!(ends_with_escaped_newline(br"abc\\\n"));
        assert!(!ends_with_escaped_newline(b"abc"));
    }

    #[test]
    fn cut_never_splits_an_escape() {
        assert_eq!(safe_cut(br"abc\u00e9def", 6), 3);
        assert_eq!(safe_cut(br"abc\u00e9def", 9), 9);
        assert_eq!(safe_cut(br"ab\\cd", 3), 2);
        assert_eq!(safe_cut(br"ab\\cd", 4), 4);
    }

    #[test]
    fn pieces_merge_and_payload_is_unescaped_then_decoded() {
        let text = br#"{"log":"{\"msg\":\"a \\\"quoted\\\" ","stream":"stdout","time":"2024-01-01T00:00:00.1Z"}
{"log":"err line\n","stream":"stderr","time":"2024-01-01T00:00:00.2Z"}
{"log":"word\"}\n","stream":"stdout","time":"2024-01-01T00:00:00.3Z"}
"#;
        let mut r = DockerReader::new(1 << 20);
        let batch = r.unwrap(&lines(text), 0, Instant::now());
        let v = decode(&batch);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            serde_json::json!({"message":"err line","stream":"stderr","time":"2024-01-01T00:00:00.2Z"})
        );
        assert_eq!(
            v[1],
            serde_json::json!({"msg":"a \"quoted\" word","stream":"stdout","time":"2024-01-01T00:00:00.1Z"})
        );
        assert_eq!(r.take_stats().merged, 1);
    }

    /// One docker json-file line, `{"log":…,"stream":…,"time":…}`, with
    /// `gap(i)` written around its `i`th token (empty: docker's layout).
    fn docker_json(log: &str, stream: &str, time: &str, gap: impl Fn(usize) -> String) -> String {
        let tokens = [
            "{".to_string(),
            "\"log\"".into(),
            ":".into(),
            serde_json::to_string(log).unwrap(),
            ",".into(),
            "\"stream\"".into(),
            ":".into(),
            serde_json::to_string(stream).unwrap(),
            ",".into(),
            "\"time\"".into(),
            ":".into(),
            serde_json::to_string(time).unwrap(),
            "}".into(),
        ];
        let mut out = gap(0);
        for (i, t) in tokens.iter().enumerate() {
            out.push_str(t);
            out.push_str(&gap(i + 1));
        }
        out
    }

    fn unwrap_and_decode(text: &str) -> Vec<serde_json::Value> {
        let mut text = text.to_string();
        text.push('\n');
        let mut r = DockerReader::new(1 << 20);
        let mut events = decode(&r.unwrap(&lines(text.as_bytes()), 0, Instant::now()));
        if let Some(rest) = r.take_expired(Instant::now(), Duration::ZERO) {
            events.extend(decode(&rest));
        }
        events
    }

    #[test]
    fn a_log_whose_json_breaks_a_line_inside_stays_one_event_on_one_line() {
        // Found by the fuzzer: `decoded` fails on an event that spans lines.
        let events = unwrap_and_decode(r#"{"log":"{\"level\":\"info\"\n}","stream":"stdout","time":"2024-01-01T00:00:00Z"}"#);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["level"], "info");
        assert_eq!(events[0]["stream"], "stdout");
        let wrapped = unwrap_and_decode(r#"{"log":"not json\nsecond line\n","stream":"stderr","time":"2024-01-01T00:00:00Z"}"#);
        assert_eq!(wrapped[0]["message"], "not json\nsecond line", "text keeps its break, escaped");
    }

    #[test]
    fn spaced_docker_json_splits_like_the_compact_layout() {
        let compact = docker_json("{\"a\":1}\n", "stderr", "2024-01-01T00:00:00Z", |_| String::new());
        let spaced = docker_json("{\"a\":1}\n", "stderr", "2024-01-01T00:00:00Z", |_| " ".into());
        let (c, s) = (split(compact.as_bytes()).unwrap(), split(spaced.as_bytes()).unwrap());
        assert_eq!(c, s);
        assert_eq!(s.log_raw, br#"{\"a\":1}\n"#);
        assert!(s.complete);
        // Other key orders and extra keys are docker JSON too.
        let reordered = br#"{ "stream": "stdout", "attrs": {"x": [1, "}"]}, "log": "hi\n" }"#;
        let d = split(reordered).unwrap();
        assert_eq!((d.log_raw, d.stream, d.time), (&b"hi\\n"[..], Stream::Stdout, &b""[..]));
        // Not docker JSON: no string log, no known stream, not an object,
        // not one whole value.
        for line in [
            &br#"{ "log": 1, "stream": "stdout" }"#[..],
            br#"{ "log": "a\n", "stream": "other" }"#,
            br#"{ "log": "a\n" }"#,
            br#"[ "log", "stream" ]"#,
            br#"{ "log": "a\n", "stream": "stdout" } x"#,
            br#"{ "log": "a\n", "stream": "stdout""#,
            br#"{ "log": "a
", "stream": "stdout" }"#,
        ] {
            assert_eq!(split(line), None, "{}", String::from_utf8_lossy(line));
        }
    }

    proptest::proptest! {
        #[test]
        fn spaced_and_compact_docker_json_decode_to_the_same_event(
            log in "(\\PC|[\"\\\\\n\t{}:,])*",
            stderr in proptest::bool::ANY,
            time in "[0-9TZ:.\\-]{0,30}",
            gaps in proptest::collection::vec("[ \t]{0,3}", 14),
            newline in proptest::bool::ANY,
            cut in 0usize..=100,
        ) {
            let log = if newline { format!("{log}\n") } else { log };
            let stream = if stderr { "stderr" } else { "stdout" };
            let compact = docker_json(&log, stream, &time, |_| String::new());
            let spaced = docker_json(&log, stream, &time, |i| gaps[i].clone());
            let (c, s) = (split(compact.as_bytes()), split(spaced.as_bytes()));
            proptest::prop_assert!(c.is_some());
            proptest::prop_assert_eq!(c, s);
            proptest::prop_assert_eq!(unwrap_and_decode(&compact), unwrap_and_decode(&spaced));
            // The same line written as two pieces (docker's split of a long
            // line) merges to the same event in either layout.
            let at = log.char_indices().map(|(i, _)| i).nth(log.chars().count() * cut / 100).unwrap_or(log.len());
            let (a, b) = log.split_at(at);
            let pieces = |gap: &dyn Fn(usize) -> String| {
                format!("{}\n{}", docker_json(a, stream, &time, gap), docker_json(b, stream, &time, gap))
            };
            let compact_pieces = pieces(&|_| String::new());
            let spaced_pieces = pieces(&|i| gaps[i].clone());
            proptest::prop_assert_eq!(unwrap_and_decode(&compact_pieces), unwrap_and_decode(&spaced_pieces));
            proptest::prop_assert_eq!(unwrap_and_decode(&compact), unwrap_and_decode(&spaced));
        }
    }

    #[test]
    fn foreign_lines_are_kept() {
        let mut r = DockerReader::new(100);
        let v = decode(&r.unwrap(&lines(b"{\"other\":1}\nplain\n"), 0, Instant::now()));
        assert_eq!(v, vec![serde_json::json!({"other":1}), serde_json::json!({"message":"plain"})]);
    }
}
