//! Turns journalctl's export output into batches of JSON lines, keeping the
//! cursor of the last entry each batch covers.

use std::ops::Range;

use super::entry::{field, RenderOptions, Renderer};
use super::export::{parse_entry, FieldSpan, Skip, Step};
use super::library::{Journal, JournalError, Kept};
use crate::framing::LineSpan;

/// What one call to [`EntryReader::read`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReadStats {
    /// Bytes of the input consumed (whole entries, and skipped bytes of a
    /// cut one); the rest is the start of an entry still arriving.
    pub(crate) consumed: usize,
    /// The `__CURSOR` of the last entry consumed, as a span of the input.
    pub(crate) last_cursor: Option<Range<usize>>,
    /// Entries rendered.
    pub(crate) rendered: u64,
    /// Entries of an excluded unit.
    pub(crate) excluded: u64,
    /// Entries cut at `max_entry_bytes`.
    pub(crate) truncated: u64,
    /// Entries libsystemd could not read the fields of, skipped.
    pub(crate) unreadable: u64,
}

/// The parsing state carried from one read to the next.
#[derive(Debug)]
pub(crate) struct EntryReader {
    max_entry: usize,
    exclude_units: Vec<Vec<u8>>,
    opts: RenderOptions,
    fields: Vec<FieldSpan>,
    renderer: Renderer,
    /// Discarding the rest of a cut entry.
    skipping: Option<Skip>,
}

impl EntryReader {
    /// A reader that keeps entries up to `max_entry` bytes whole and leaves
    /// out those of `exclude_units`.
    pub(crate) fn new(max_entry: usize, exclude_units: Vec<Vec<u8>>, opts: RenderOptions) -> EntryReader {
        EntryReader {
            max_entry,
            exclude_units,
            opts,
            fields: Vec::new(),
            renderer: Renderer::default(),
            skipping: None,
        }
    }

    /// Renders each whole entry at the front of `input` as one line of
    /// `out` (a span each in `spans`). The caller drops `consumed` bytes
    /// of the input and calls again with more; a partial entry is never
    /// longer than `max_entry` bytes.
    pub(crate) fn read(&mut self, input: &[u8], out: &mut Vec<u8>, spans: &mut Vec<LineSpan>) -> ReadStats {
        let mut st = ReadStats::default();
        let mut pos = 0;
        loop {
            if let Some(skip) = &mut self.skipping {
                let (n, done) = skip.advance(&input[pos..]);
                pos += n;
                if !done {
                    break;
                }
                self.skipping = None;
            }
            let rest = &input[pos..];
            let (kept, next, truncated) = match parse_entry(rest, self.max_entry, &mut self.fields) {
                Step::NeedMore => break,
                Step::Entry { end } => (end, end, false),
                Step::Cut { kept, resume } => {
                    self.skipping = Some(Skip::default());
                    (kept, resume, true)
                }
            };
            let entry = &rest[..kept];
            let fields = std::mem::take(&mut self.fields);
            if let Some(c) = self.render(entry, &fields, truncated, out, spans, &mut st) {
                st.last_cursor = Some(pos + c.start..pos + c.end);
            }
            self.fields = fields;
            pos += next;
        }
        st.consumed = pos;
        st
    }

    /// Renders one entry (`fields` are spans of `buf`) into `out` unless
    /// its unit is excluded, counting it in `st`; returns the span of its
    /// `__CURSOR` value in `buf`.
    fn render(
        &mut self,
        buf: &[u8],
        fields: &[FieldSpan],
        truncated: bool,
        out: &mut Vec<u8>,
        spans: &mut Vec<LineSpan>,
        st: &mut ReadStats,
    ) -> Option<Range<usize>> {
        if fields.is_empty() {
            return None;
        }
        let cursor = fields.iter().find(|f| &buf[f.key.clone()] == b"__CURSOR").map(|c| c.value.clone());
        let unit = field(buf, fields, b"_SYSTEMD_UNIT");
        if unit.is_some_and(|u| self.exclude_units.iter().any(|x| x == u)) {
            st.excluded += 1;
        } else {
            let start = out.len();
            self.renderer.render(buf, fields, truncated, self.opts, out);
            spans.push(LineSpan {
                start: start as u32,
                len: (out.len() - start) as u32,
                // The line is a whole JSON object that says it was cut
                // (`journald_truncated`); a cut line would be wrapped as text.
                truncated: false,
            });
            st.rendered += 1;
            st.truncated += u64::from(truncated);
        }
        cursor
    }

    /// Renders the entries libsystemd gave (see [`RawEntries`]) into `out`
    /// as [`read`](Self::read) does exported ones.
    pub(crate) fn render_raw(&mut self, raw: &RawEntries, out: &mut Vec<u8>, spans: &mut Vec<LineSpan>) -> ReadStats {
        let mut st = ReadStats {
            unreadable: raw.unreadable,
            ..ReadStats::default()
        };
        let mut from = 0;
        for &(to, truncated) in &raw.entries {
            self.render(&raw.buf, &raw.fields[from..to as usize], truncated, out, spans, &mut st);
            from = to as usize;
        }
        st
    }
}

/// Entries as libsystemd gave them, before rendering: the reader thread
/// fills it, the source's task renders it, so that the two share the work
/// on two cores.
#[derive(Debug, Default)]
pub(crate) struct RawEntries {
    /// The entries' `KEY=value` fields, one after another.
    pub(crate) buf: Vec<u8>,
    /// Every entry's fields, as spans of `buf`.
    pub(crate) fields: Vec<FieldSpan>,
    /// Per entry: where its fields end in `fields`, and whether some were
    /// left out at `max_entry_bytes`.
    pub(crate) entries: Vec<(u32, bool)>,
    /// The last entry's cursor.
    pub(crate) cursor: Option<String>,
    /// Entries skipped because their fields could not be read.
    pub(crate) unreadable: u64,
}

impl RawEntries {
    /// Appends the journal's current entry; `max_entry` bounds it as
    /// [`EntryReader`] bounds an exported one. An entry whose fields
    /// cannot be read is counted and skipped: its cursor and why.
    pub(crate) fn push(&mut self, journal: &mut Journal, max_entry: usize) -> Result<Option<(String, std::io::Error)>, JournalError> {
        let (cursor, kept) = journal.read_entry(max_entry, &mut self.buf, &mut self.fields)?;
        let skipped = match kept {
            Kept::Whole | Kept::Cut => {
                self.entries.push((self.fields.len() as u32, matches!(kept, Kept::Cut)));
                None
            }
            Kept::Nothing(error) => {
                self.unreadable += 1;
                Some((cursor.clone(), error))
            }
        };
        // The checkpoint moves past a skipped entry too.
        self.cursor = Some(cursor);
        Ok(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize, unit: &str) -> Vec<u8> {
        format!("__CURSOR=c{i}\nMESSAGE=m{i}\n_SYSTEMD_UNIT={unit}\n\n").into_bytes()
    }

    #[test]
    fn entries_split_across_reads_arrive_once_in_order_with_the_last_cursor() {
        let mut input = Vec::new();
        for i in 0..50 {
            input.extend(entry(i, if i % 5 == 0 { "noisy.service" } else { "app.service" }));
        }
        let mut r = EntryReader::new(1 << 16, vec![b"noisy.service".to_vec()], RenderOptions { host: true });
        let (mut out, mut spans) = (Vec::new(), Vec::new());
        let mut buf = Vec::new();
        let mut cursors = Vec::new();
        for piece in input.chunks(13) {
            buf.extend_from_slice(piece);
            let st = r.read(&buf, &mut out, &mut spans);
            if let Some(c) = st.last_cursor {
                cursors.push(String::from_utf8(buf[c].to_vec()).unwrap());
            }
            buf.drain(..st.consumed);
        }
        assert!(buf.is_empty());
        let messages: Vec<String> = spans
            .iter()
            .map(|s| {
                let v: serde_json::Value = serde_json::from_slice(&out[s.start as usize..(s.start + s.len) as usize]).unwrap();
                v["message"].as_str().unwrap().to_owned()
            })
            .collect();
        let want: Vec<String> = (0..50).filter(|i| i % 5 != 0).map(|i| format!("m{i}")).collect();
        assert_eq!(messages, want);
        assert_eq!(
            cursors.last().map(String::as_str),
            Some("c49"),
            "an excluded entry still moves the cursor"
        );
    }
}
