//! The multiline stage of one stream source: per stream (plain lines, a
//! container's stdout, its stderr) at most one open group, carried across
//! chunks. It runs in order, on the thread that reads the stream, between
//! the container unwrap and the decode pool, and regroups a batch of
//! records into a batch of events.
//!
//! Zero copy where it can: a line that no later line joins leaves as the
//! span of the read chunk it came in. Only a group of several lines, and a
//! line held open at the end of a chunk, are copied.

use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::Compiled;
use super::rules::{Begin, GroupState, Verdict};
use crate::decode::cri::{CriBatch, Record};
use crate::decode::partial::{Piece, Stream};
use crate::framing::Lines;

/// Why a held event left the stage, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// The next line did not continue it.
    Start,
    /// A custom rule's closing line (`continue_past`, `halt_with`).
    EndPattern,
    /// It would have grown past `max_lines`.
    MaxLines,
    /// It would have grown past `max_bytes`.
    MaxBytes,
    /// No line came for `timeout`.
    Timeout,
    /// The stream ended (end of input, a finished file, shutdown).
    EndOfStream,
}

impl Flush {
    /// Every reason, in [`Flush::index`] order.
    pub(crate) const ALL: [Flush; 6] = [
        Flush::Start,
        Flush::EndPattern,
        Flush::MaxLines,
        Flush::MaxBytes,
        Flush::Timeout,
        Flush::EndOfStream,
    ];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Flush::Start => "start",
            Flush::EndPattern => "end_pattern",
            Flush::MaxLines => "max_lines",
            Flush::MaxBytes => "max_bytes",
            Flush::Timeout => "timeout",
            Flush::EndOfStream => "end_of_stream",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The flag on the event, for a group cut by a bound.
    fn cut(self) -> Option<&'static str> {
        match self {
            Flush::MaxLines => Some("max_lines"),
            Flush::MaxBytes => Some("max_bytes"),
            _ => None,
        }
    }
}

/// Counters since the last [`Multiline::take_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MultilineStats {
    /// Events made of more than one line.
    pub(crate) groups: u64,
    /// Lines that joined a group (not counting each group's first).
    pub(crate) joined: u64,
    /// Held events (groups and single lines) that left, by [`Flush`].
    pub(crate) flushes: [u64; 6],
}

/// How a line is judged: plain text, or a JSON event's chosen field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Json,
}

/// An open group. Invariant: `head` is set only while the group is one
/// line of the batch being regrouped; otherwise its text (lines joined by
/// `\n`) is in `text`, the first `committed` bytes of which are lines that
/// certainly belong (the rest joined as `Maybe`).
#[derive(Debug)]
struct Group {
    head: Option<Record>,
    kind: Kind,
    text: Vec<u8>,
    time: Vec<u8>,
    /// The first event as read (field mode), to re-serialise with the
    /// joined field.
    json: Vec<u8>,
    committed: usize,
    committed_lines: usize,
    lines: usize,
    state: GroupState,
    /// File offset of the first line: a checkpoint stays at or before it.
    offset: u64,
    /// When the last line joined.
    last: Instant,
    truncated: bool,
    stream: Option<Stream>,
}

/// The stage for one source stream.
#[derive(Debug)]
pub(crate) struct Multiline {
    cfg: Arc<Compiled>,
    /// Open groups: plain (or foreign) lines, stdout, stderr.
    open: [Option<Group>; 3],
    stats: MultilineStats,
}

fn slot(stream: Option<Stream>) -> usize {
    match stream {
        None => 0,
        Some(Stream::Stdout) => 1,
        Some(Stream::Stderr) => 2,
    }
}

impl Multiline {
    /// A stage with nothing open.
    pub(crate) fn new(cfg: Arc<Compiled>) -> Multiline {
        Multiline {
            cfg,
            open: [None, None, None],
            stats: MultilineStats::default(),
        }
    }

    /// The records of framed lines (no container format) that start at
    /// file offset `chunk_offset` (0 where offsets mean nothing).
    pub(crate) fn records_of(lines: &Lines, chunk_offset: u64) -> CriBatch {
        let records = lines
            .spans
            .iter()
            .map(|s| Record {
                payload: Piece {
                    start: s.start,
                    len: s.len,
                    merged: false,
                },
                time: Piece::default(),
                stream: None,
                truncated: s.truncated,
                offset: chunk_offset + s.start as u64,
                breaks: lines.may_hold_breaks,
                cut: None,
            })
            .collect();
        CriBatch {
            chunk: lines.chunk.clone(),
            merged: Vec::new(),
            records,
        }
    }

    /// Regroups a batch: events that are complete leave in the returned
    /// batch (same chunk), open groups stay for the next batch.
    pub(crate) fn regroup(&mut self, batch: CriBatch, now: Instant) -> CriBatch {
        let CriBatch {
            chunk,
            mut merged,
            records,
        } = batch;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            self.push(r, &chunk, &mut merged, &mut out, now);
        }
        // What stays open is copied: the next batch has another chunk.
        for g in self.open.iter_mut().flatten() {
            materialise(g, &chunk, &merged, self.cfg.field.as_deref());
        }
        CriBatch {
            chunk,
            merged,
            records: out,
        }
    }

    fn push(&mut self, r: Record, chunk: &[u8], merged: &mut Vec<u8>, out: &mut Vec<Record>, now: Instant) {
        // A payload in `merged` (a line assembled from pieces: rare) is
        // copied, so that `merged` can grow while the line is judged.
        let payload = if r.payload.merged {
            std::borrow::Cow::Owned(r.payload.get(chunk, merged).to_vec())
        } else {
            std::borrow::Cow::Borrowed(r.payload.get(chunk, &[]))
        };
        let judged = judge_text(&payload, self.cfg.field.as_deref());
        let i = slot(r.stream);
        if let Some(mut g) = self.open[i].take() {
            let joined = match &judged {
                Some((kind, text)) if *kind == g.kind => {
                    let (v, state) = self.cfg.rules.next(g.state, text.as_ref());
                    // A JSON event never waits on a maybe.
                    let v = if v == Verdict::Maybe && g.kind == Kind::Json {
                        Verdict::Break
                    } else {
                        v
                    };
                    (v != Verdict::Break).then_some((v, state, text))
                }
                _ => None,
            };
            let Some((v, state, text)) = joined else {
                self.emit(g, merged, out, Flush::Start);
                return self.begin(r, judged, out, now);
            };
            let bound = if g.lines + 1 > self.cfg.max_lines {
                Some(Flush::MaxLines)
            } else if group_len(&g, chunk, merged) + 1 + text.len() > self.cfg.max_bytes {
                Some(Flush::MaxBytes)
            } else {
                None
            };
            if let Some(reason) = bound {
                self.emit(g, merged, out, reason);
                return self.begin(r, judged, out, now);
            }
            materialise(&mut g, chunk, merged, self.cfg.field.as_deref());
            g.text.push(b'\n');
            g.text.extend_from_slice(text);
            g.lines += 1;
            g.truncated |= r.truncated;
            g.state = state;
            g.last = now;
            if v != Verdict::Maybe {
                g.committed = g.text.len();
                g.committed_lines = g.lines;
            }
            if v == Verdict::JoinLast {
                self.emit(g, merged, out, Flush::EndPattern);
            } else {
                self.open[i] = Some(g);
            }
            return;
        }
        self.begin(r, judged, out, now);
    }

    /// A line that no group holds: alone, or the head of a new group.
    fn begin(&mut self, r: Record, judged: Option<(Kind, std::borrow::Cow<'_, [u8]>)>, out: &mut Vec<Record>, now: Instant) {
        let begin = match &judged {
            Some((_, text)) => self.cfg.rules.begin(text.as_ref()),
            None => Begin::Alone,
        };
        match begin {
            Begin::Alone => out.push(r),
            Begin::Open(state) => {
                self.open[slot(r.stream)] = Some(Group {
                    head: Some(r),
                    kind: judged.map_or(Kind::Text, |(k, _)| k),
                    text: Vec::new(),
                    time: Vec::new(),
                    json: Vec::new(),
                    committed: 0,
                    committed_lines: 1,
                    lines: 1,
                    state,
                    offset: r.offset,
                    last: now,
                    truncated: r.truncated,
                    stream: r.stream,
                })
            }
        }
    }

    /// Sends a group: its certain lines as one event, then any lines that
    /// joined only as `Maybe` each on its own (unless a bound cut it: then
    /// all of it, flagged).
    fn emit(&mut self, g: Group, merged: &mut Vec<u8>, out: &mut Vec<Record>, reason: Flush) {
        self.stats.flushes[reason.index()] += 1;
        let cut = reason.cut();
        if let Some(r) = g.head {
            out.push(r);
            return;
        }
        let whole = cut.is_some();
        let (keep, keep_lines) = if whole {
            (g.text.len(), g.lines)
        } else {
            (g.committed, g.committed_lines)
        };
        if keep_lines > 1 {
            self.stats.groups += 1;
            self.stats.joined += keep_lines as u64 - 1;
        }
        let text = &g.text[..keep];
        let payload = match g.kind {
            Kind::Json if keep_lines > 1 => {
                let json = rewrite_field(&g.json, self.cfg.field.as_deref().unwrap_or_default(), text);
                Piece::append(merged, json.as_deref().unwrap_or(&g.json))
            }
            Kind::Json => Piece::append(merged, &g.json),
            Kind::Text => Piece::append(merged, text),
        };
        let time = Piece::append(merged, &g.time);
        out.push(Record {
            payload,
            time,
            stream: g.stream,
            truncated: g.truncated,
            offset: g.offset,
            breaks: keep_lines > 1,
            cut,
        });
        if keep < g.text.len() {
            // The maybe-lines (blank lines, for the presets) after a
            // complete group.
            for line in g.text[keep + 1..].split(|&b| b == b'\n') {
                let payload = Piece::append(merged, line);
                out.push(Record {
                    payload,
                    time,
                    stream: g.stream,
                    truncated: false,
                    offset: g.offset,
                    breaks: false,
                    cut: None,
                });
            }
        }
    }

    /// Groups no line joined for the timeout (all of them, as the end of
    /// the stream, with `end`), as a batch of their own.
    pub(crate) fn take_expired(&mut self, now: Instant, end: bool) -> Option<CriBatch> {
        let timeout = self.cfg.timeout;
        let mut batch = CriBatch::default();
        for i in 0..self.open.len() {
            let expired = self.open[i]
                .as_ref()
                .is_some_and(|g| end || now.saturating_duration_since(g.last) >= timeout);
            if expired {
                if let Some(g) = self.open[i].take() {
                    let reason = if end { Flush::EndOfStream } else { Flush::Timeout };
                    self.emit(g, &mut batch.merged, &mut batch.records, reason);
                }
            }
        }
        batch.records.sort_by_key(|r| r.offset);
        (!batch.records.is_empty()).then_some(batch)
    }

    /// Where the earliest open group starts in the file: a checkpoint must
    /// not pass it.
    pub(crate) fn pending_start(&self) -> Option<u64> {
        self.open.iter().flatten().map(|g| g.offset).min()
    }

    /// Whether a group is open.
    pub(crate) fn is_open(&self) -> bool {
        self.open.iter().any(Option::is_some)
    }

    /// How long until the first open group times out (`None`: none open).
    pub(crate) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.open
            .iter()
            .flatten()
            .map(|g| (g.last + self.cfg.timeout).saturating_duration_since(now))
            .min()
    }

    /// Counters since the last call.
    pub(crate) fn take_stats(&mut self) -> MultilineStats {
        std::mem::take(&mut self.stats)
    }
}

/// The text a line is judged by: the line itself, or a JSON event's field
/// (`None`: an event that never joins: JSON without a chosen field, a
/// field that is missing, not a string, or already several lines).
fn judge_text<'a>(payload: &'a [u8], field: Option<&str>) -> Option<(Kind, std::borrow::Cow<'a, [u8]>)> {
    if payload.first() != Some(&b'{') {
        return Some((Kind::Text, std::borrow::Cow::Borrowed(payload)));
    }
    let field = field?;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(payload) else {
        // Not JSON after all: plain text.
        return Some((Kind::Text, std::borrow::Cow::Borrowed(payload)));
    };
    match map.get(field) {
        Some(Value::String(s)) if !s.contains('\n') => Some((Kind::Json, std::borrow::Cow::Owned(s.clone().into_bytes()))),
        _ => None,
    }
}

/// Bytes of the group as it stands.
fn group_len(g: &Group, chunk: &[u8], merged: &[u8]) -> usize {
    match &g.head {
        Some(r) => r.payload.get(chunk, merged).len(),
        None => g.text.len(),
    }
}

/// Copies a head still in the batch into the group's own buffers.
fn materialise(g: &mut Group, chunk: &[u8], merged: &[u8], field: Option<&str>) {
    let Some(r) = g.head.take() else { return };
    let payload = r.payload.get(chunk, merged);
    g.text.clear();
    match g.kind {
        Kind::Text => g.text.extend_from_slice(payload),
        Kind::Json => {
            g.json = payload.to_vec();
            if let Some((_, t)) = judge_text(payload, field) {
                g.text.extend_from_slice(&t);
            }
        }
    }
    g.committed = g.text.len();
    g.time = r.time.get(chunk, merged).to_vec();
}

/// The first event of a JSON group with `field` set to the joined text.
fn rewrite_field(json: &[u8], field: &str, text: &[u8]) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(json) else {
        return None;
    };
    map.insert(field.to_owned(), Value::String(String::from_utf8_lossy(text).into_owned()));
    serde_json::to_vec(&Value::Object(map)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::cri::CriReader;
    use crate::decode::test_support::{decoded, lines};
    use crate::enrich::Fragment;
    use crate::multiline::MultilineConfig;

    fn stage(cfg: &str) -> Multiline {
        let v: toml::Value = toml::from_str(&format!("m = {cfg}")).unwrap();
        let c: MultilineConfig = serde_json::from_value(serde_json::to_value(&v["m"]).unwrap()).unwrap();
        Multiline::new(c.compile().unwrap())
    }

    fn events(batch: &CriBatch) -> Vec<serde_json::Value> {
        decoded(|d, out| batch.decode(d, &Fragment::default(), out))
    }

    fn messages(batch: &CriBatch) -> Vec<String> {
        events(batch)
            .iter()
            .map(|e| e["message"].as_str().unwrap_or("<json>").to_owned())
            .collect()
    }

    /// Feeds `text` in chunks of `per` lines, then ends the stream.
    fn run(m: &mut Multiline, text: &str, per: usize) -> Vec<String> {
        let all: Vec<&str> = text.split_inclusive('\n').collect();
        let mut out = Vec::new();
        let now = Instant::now();
        let mut offset = 0u64;
        for part in all.chunks(per.max(1)) {
            let chunk = part.concat();
            let batch = Multiline::records_of(&lines(chunk.as_bytes()), offset);
            offset += chunk.len() as u64;
            out.extend(messages(&m.regroup(batch, now)));
        }
        if let Some(b) = m.take_expired(now, true) {
            out.extend(messages(&b));
        }
        out
    }

    const MIXED: &str = "2024-01-01 start\njava.lang.RuntimeException: boom\n\tat A.b(A.java:1)\n\tat A.main(A.java:2)\n2024-01-01 next\n{\"level\":\"info\"}\nlast\n";

    #[test]
    fn a_trace_is_one_event_whatever_the_chunking() {
        for per in [1, 2, 3, 100] {
            let mut m = stage("\"java\"");
            let got = run(&mut m, MIXED, per);
            assert_eq!(
                got,
                vec![
                    "2024-01-01 start",
                    "java.lang.RuntimeException: boom\n\tat A.b(A.java:1)\n\tat A.main(A.java:2)",
                    "2024-01-01 next",
                    "<json>",
                    "last"
                ],
                "{per} lines per chunk"
            );
            let s = m.take_stats();
            assert_eq!((s.groups, s.joined), (1, 2));
        }
    }

    #[test]
    fn single_lines_leave_as_spans_of_the_chunk() {
        let mut m = stage("\"auto\"");
        let batch = m.regroup(Multiline::records_of(&lines(b"a\nb\nc\n"), 0), Instant::now());
        assert_eq!(batch.records.len(), 2, "the last line waits for the next");
        assert!(batch.records.iter().all(|r| !r.payload.merged));
        assert!(batch.merged.is_empty());
    }

    #[test]
    fn an_open_group_holds_back_the_checkpoint_until_it_leaves() {
        let mut m = stage("\"java\"");
        let text = b"one\nError: x\n\tat f\n";
        let _ = m.regroup(Multiline::records_of(&lines(text), 1000), Instant::now());
        assert_eq!(m.pending_start(), Some(1004), "at the group's first line");
        let b = m.regroup(
            Multiline::records_of(&lines(b"\tat g\nnext\n"), 1000 + text.len() as u64),
            Instant::now(),
        );
        assert_eq!(messages(&b), vec!["Error: x\n\tat f\n\tat g"]);
        assert_eq!(m.pending_start(), Some(1000 + text.len() as u64 + 6), "now at `next`");
    }

    #[test]
    fn timeout_flushes_an_open_group_without_more_input() {
        let mut m = stage("{ preset = \"java\", timeout = \"50ms\" }");
        let t0 = Instant::now();
        let b = m.regroup(Multiline::records_of(&lines(b"Error: x\n\tat f\n"), 0), t0);
        assert!(b.records.is_empty());
        assert!(m.take_expired(t0 + Duration::from_millis(10), false).is_none());
        assert_eq!(m.next_timeout(t0 + Duration::from_millis(10)), Some(Duration::from_millis(40)));
        let late = m.take_expired(t0 + Duration::from_millis(60), false).unwrap();
        assert_eq!(messages(&late), vec!["Error: x\n\tat f"]);
        assert!(!m.is_open());
        assert_eq!(m.take_stats().flushes[Flush::Timeout.index()], 1);
    }

    #[test]
    fn bounds_cut_a_group_and_flag_it() {
        let mut m = stage("{ preset = \"java\", max_lines = 3 }");
        let batch = m.regroup(
            Multiline::records_of(&lines(b"E\n\tat 1\n\tat 2\n\tat 3\n\tat 4\nx\n"), 0),
            Instant::now(),
        );
        let ev = events(&batch);
        assert_eq!(ev[0]["message"], "E\n\tat 1\n\tat 2");
        assert_eq!(ev[0]["multiline_cut"], "max_lines");
        assert_eq!(ev[1]["message"], "\tat 3\n\tat 4");
        assert!(ev[1].get("multiline_cut").is_none());

        let mut m = stage("{ preset = \"java\", max_bytes = 12 }");
        let batch = m.regroup(Multiline::records_of(&lines(b"E\n\tat 1\n\tat 2\nx\n"), 0), Instant::now());
        let ev = events(&batch);
        assert_eq!(ev[0]["message"], "E\n\tat 1");
        assert_eq!(ev[0]["multiline_cut"], "max_bytes");
        assert_eq!(ev[1]["message"], "\tat 2");
    }

    #[test]
    fn continue_until_start_joins_everything_up_to_the_next_start() {
        let mut m = stage("{ start = \"^\\\\d{4}-\" }");
        let got = run(&mut m, "orphan\n2024- a\n  more\nstill more\n2024- b\n2024- c\nc2\n", 2);
        assert_eq!(got, vec!["orphan", "2024- a\n  more\nstill more", "2024- b", "2024- c\nc2"]);
    }

    #[test]
    fn continue_through_and_continue_past() {
        let mut m = stage("{ start = \"^[^\\\\s]\", condition = \"^\\\\s\", mode = \"continue_through\" }");
        assert_eq!(run(&mut m, "a\n b\n c\nd\ne\n", 1), vec!["a\n b\n c", "d", "e"]);
        let mut m = stage("{ start = \"\\\\\\\\$\", condition = \"\\\\\\\\$\", mode = \"continue_past\" }");
        assert_eq!(run(&mut m, "x\na \\\nb \\\nc\nd\n", 2), vec!["x", "a \\\nb \\\nc", "d"]);
    }

    #[test]
    fn halt_before_and_halt_with() {
        let mut m = stage("{ start = \"^BEGIN\", condition = \"^BEGIN\", mode = \"halt_before\" }");
        assert_eq!(
            run(&mut m, "pre\nBEGIN 1\nx\nBEGIN 2\ny\n", 1),
            vec!["pre", "BEGIN 1\nx", "BEGIN 2\ny"]
        );
        let mut m = stage("{ start = \"^BEGIN\", condition = \"^END\", mode = \"halt_with\" }");
        assert_eq!(run(&mut m, "BEGIN\nx\nEND\nafter\n", 1), vec!["BEGIN\nx\nEND", "after"]);
        assert_eq!(m.take_stats().flushes[Flush::EndPattern.index()], 1);
    }

    #[test]
    fn json_events_join_only_through_the_chosen_field() {
        let text = "{\"message\":\"Error: x\",\"level\":\"error\"}\n{\"message\":\"\\tat f\"}\n{\"stack\":\"Error: y\\n\\tat g\"}\n{\"message\":\"\\tat h\"}\n";
        let mut m = stage("{ preset = \"java\", field = \"message\" }");
        let all: Vec<serde_json::Value> = {
            let now = Instant::now();
            let mut b = m.regroup(Multiline::records_of(&lines(text.as_bytes()), 0), now);
            let mut v = events(&b);
            b = m.take_expired(now, true).unwrap();
            v.extend(events(&b));
            v
        };
        assert_eq!(all[0], serde_json::json!({"message": "Error: x\n\tat f", "level": "error"}));
        assert_eq!(
            all[1],
            serde_json::json!({"stack": "Error: y\n\tat g"}),
            "a trace already in one field stays as it is"
        );
        assert_eq!(all[2], serde_json::json!({"message": "\tat h"}));
        // Without a field, JSON events never join.
        let mut m = stage("\"java\"");
        assert_eq!(run(&mut m, "Error: z\n{\"message\":\"\\tat f\"}\n", 1), vec!["Error: z", "\tat f"]);
    }

    #[test]
    fn container_streams_group_apart_and_keep_the_first_time() {
        let cri = "2024-01-01T00:00:00.000000001Z stderr F Error: boom\n\
2024-01-01T00:00:00.000000002Z stdout F out 1\n\
2024-01-01T00:00:00.000000003Z stderr P \tat a.\n\
2024-01-01T00:00:00.000000004Z stderr F b(A.java:1)\n\
2024-01-01T00:00:00.000000005Z stdout F out 2\n\
2024-01-01T00:00:00.000000006Z stderr F after\n";
        let mut r = CriReader::new(1 << 20);
        let mut m = stage("\"java\"");
        let now = Instant::now();
        let b = m.regroup(r.unwrap(&lines(cri.as_bytes()), 0, now), now);
        let mut ev = events(&b);
        ev.extend(events(&m.take_expired(now, true).unwrap()));
        let stderr: Vec<_> = ev.iter().filter(|e| e["stream"] == "stderr").collect();
        assert_eq!(stderr[0]["message"], "Error: boom\n\tat a.b(A.java:1)");
        assert_eq!(stderr[0]["time"], "2024-01-01T00:00:00.000000001Z");
        assert_eq!(stderr[1]["message"], "after");
        let stdout: Vec<_> = ev
            .iter()
            .filter(|e| e["stream"] == "stdout")
            .map(|e| e["message"].clone())
            .collect();
        assert_eq!(stdout, vec!["out 1", "out 2"]);
    }
}
