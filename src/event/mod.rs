//! Events move through sluice in batches: one contiguous NDJSON buffer per
//! batch with an index of where each event ends, plus the few fields the
//! pipeline asked the decoder to extract. Sinks that write NDJSON (stdout, S3)
//! hand the buffer to the kernel in one write; sinks that need per-event
//! structure (Loki, Kafka) slice it by index.

mod ack;
mod fields;

pub use ack::{AckGroup, AckOutcome};
pub(crate) use ack::{AckReceiver, AckWindow, Acknowledger, Completion};
pub(crate) use fields::FieldValue;
pub use fields::{FieldPath, FieldSet};

use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::enrich::SourceContext;
use crate::recycle::Pool;

/// Output buffers of batches the sinks are done with, for the next batch.
static BATCH_BUFFERS: Pool<Vec<u8>> = Pool::new();

/// What the events of a batch are. A metric batch holds one JSON object
/// per metric sample, in the schema of `crate::metrics::sample` (see
/// docs/metrics.md): queues, disk buffers, acknowledgements and JSON sinks
/// carry it like a log batch; metric sinks read the samples back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventKind {
    /// Log events (the default).
    #[default]
    Log,
    /// Metric samples.
    Metric,
}

impl EventKind {
    /// `logs` or `metrics`, as messages name them.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Log => "logs",
            EventKind::Metric => "metrics",
        }
    }
}

/// A batch of decoded, enriched events from one stream (one file, one
/// connection, stdin).
///
/// Invariants: `ends` is strictly increasing, and every event is one JSON
/// object followed by `\n`. A batch of its own bytes has
/// `ends.last() == data.len()`, event `i` being `data[ends[i - 1]..ends[i]]`.
/// A selection of another batch's events ([`Selector`]) shares that
/// batch's bytes: event `i` is the `ends[i] - ends[i - 1]` bytes at
/// `starts[i]` of them (or of its own buffer, for an event a transform
/// changed), and `ends` is where each event ends in the NDJSON the
/// selection joins when a sink asks for it whole ([`Batch::ndjson`]).
/// `values.len() == ends.len() * fields.len()`: row `i` holds the extracted
/// fields of event `i`.
#[derive(Debug)]
pub struct Batch {
    data: Bytes,
    ends: Vec<u32>,
    /// Set for a selection of another batch's events.
    selection: Option<Box<Selection>>,
    values: Vec<FieldValue>,
    strings: String,
    fields: Arc<FieldSet>,
    /// Where the events came from, and the metadata shared by all of them.
    pub(crate) source: Arc<SourceContext>,
    /// When the source read the bytes of this batch.
    pub(crate) received_at: SystemTime,
    /// Set when the batch must be acknowledged back to its source.
    ack: Option<Acknowledger>,
    /// Logs or metric samples.
    kind: EventKind,
}

impl Batch {
    /// Whether the events are logs or metric samples.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// The batch, marked as holding events of `kind`.
    pub fn with_kind(mut self, kind: EventKind) -> Batch {
        self.kind = kind;
        self
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the batch carries no events.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of NDJSON this batch holds.
    pub fn byte_len(&self) -> usize {
        self.ends.last().map_or(0, |&e| e as usize)
    }

    /// Memory the batch holds: its NDJSON (for a selection, the whole
    /// buffer it keeps alive), its event ends and its extracted values (its
    /// weight in queue budgets, so that a budget bounds memory and not only
    /// event bytes).
    pub(crate) fn memory_len(&self) -> usize {
        let selection = self
            .selection
            .as_ref()
            .map_or(0, |s| std::mem::size_of_val(&s.starts[..]) + s.own.len());
        self.data.len() + std::mem::size_of_val(&self.ends[..]) + selection + std::mem::size_of_val(&self.values[..]) + self.strings.len()
    }

    /// The whole batch as NDJSON: every event followed by `\n`. A selection
    /// joins its events the first time this is asked for.
    pub(crate) fn ndjson(&self) -> &Bytes {
        match &self.selection {
            None => &self.data,
            Some(selection) => selection.joined.get_or_init(|| {
                let mut out = BATCH_BUFFERS.take(self.byte_len()).unwrap_or_default();
                out.clear();
                for i in 0..self.len() {
                    let (buffer, at) = self.locate(i);
                    out.extend_from_slice(&buffer[at]);
                }
                Bytes::from(out)
            }),
        }
    }

    /// Which buffer event `i` is in, and where, with its newline.
    #[inline]
    fn locate(&self, i: usize) -> (&Bytes, std::ops::Range<usize>) {
        let at = self.ndjson_range(i);
        match &self.selection {
            None => (&self.data, at),
            Some(selection) => {
                let start = selection.starts[i];
                let buffer = if start & OWN != 0 { &selection.own } else { &self.data };
                let start = (start & !OWN) as usize;
                (buffer, start..start + at.len())
            }
        }
    }

    /// Where event `i` is in [`Batch::ndjson`], with its newline.
    pub(crate) fn ndjson_range(&self, i: usize) -> std::ops::Range<usize> {
        (if i == 0 { 0 } else { self.ends[i - 1] as usize })..self.ends[i] as usize
    }

    /// Event `i` as a JSON object, without its trailing newline.
    pub(crate) fn event(&self, i: usize) -> &[u8] {
        let (buffer, at) = self.locate(i);
        &buffer[at.start..at.end - 1]
    }

    /// Event `i` as a `Bytes` slice of the batch buffer (no copy).
    pub(crate) fn event_bytes(&self, i: usize) -> Bytes {
        let (buffer, at) = self.locate(i);
        buffer.slice(at.start..at.end - 1)
    }

    /// Iterates over the events as JSON objects.
    pub fn events(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(move |i| self.event(i))
    }

    /// The extracted value of `field` (an index into the pipeline's
    /// [`FieldSet`]) for event `i`.
    pub fn value(&self, i: usize, field: usize) -> FieldValueRef<'_> {
        // A batch decoded before a reload added fields has fewer of them
        // than the sink that reads it asked for: those are missing.
        let n = self.fields.len();
        if field >= n {
            return FieldValueRef::Missing;
        }
        self.values[i * n + field].as_ref(&self.strings)
    }

    /// The field set the values were extracted for.
    pub fn fields(&self) -> &Arc<FieldSet> {
        &self.fields
    }

    /// The batch, acknowledged back to its source through `ack` once every
    /// sink is done with it. Set before the batch is shared.
    pub fn with_ack(mut self, ack: Option<Acknowledger>) -> Batch {
        self.ack = ack;
        self
    }

    /// How the batch is acknowledged to its source, if it is.
    pub fn acknowledger(&self) -> Option<&Acknowledger> {
        self.ack.as_ref()
    }

    /// A builder for a batch of some of this batch's events (a transform's
    /// output), with room for `events` of them.
    pub(crate) fn part_builder(&self, events: usize) -> BatchBuilder {
        let bytes = self.byte_len() / self.len().max(1) * events;
        BatchBuilder::with_capacity(self.fields.clone(), bytes, events)
    }

    /// A builder for a selection of this batch's events, with room for
    /// `events` of them: a transform output whose events are mostly
    /// unchanged shares this batch's bytes instead of copying them.
    pub(crate) fn selector(&self, events: usize) -> Selector<'_> {
        Selector {
            starts: Vec::with_capacity(events),
            ends: Vec::with_capacity(events),
            values: Vec::with_capacity(events * self.fields.len()),
            strings: String::new(),
            own: Vec::new(),
            own_start: 0,
            end: 0,
            from: self,
        }
    }

    /// A batch of the events `picks` of this one, unchanged and in that
    /// order, that shares this batch's bytes ([`Batch::selector`]).
    #[cfg(test)]
    pub(crate) fn select(&self, picks: impl ExactSizeIterator<Item = usize>) -> Batch {
        let mut s = self.selector(picks.len());
        for i in picks {
            s.keep(self, i..i + 1);
        }
        s.build()
    }

    /// Finishes a batch built from some of this batch's events: same
    /// source, same read time, acknowledged through the same acknowledger
    /// (which then waits for the sinks of every part).
    pub(crate) fn part(&self, builder: BatchBuilder) -> Batch {
        builder.build(self.source.clone(), self.received_at).with_ack(self.ack.clone())
    }

    /// Tells the source that this sink is done with the batch.
    pub(crate) fn acknowledge(&self, outcome: AckOutcome) {
        if let Some(ack) = &self.ack {
            ack.complete(outcome);
        }
    }

    /// Appends the extracted values of events `range` to `values`, their
    /// strings to `strings`.
    fn copy_values(&self, range: std::ops::Range<usize>, values: &mut Vec<FieldValue>, strings: &mut String) {
        let n = self.fields.len();
        for v in &self.values[range.start * n..range.end * n] {
            values.push(FieldValue::store(v.as_ref(&self.strings), strings));
        }
    }

    /// The event ends, extracted values and their string arena, for the disk
    /// buffer to persist a batch as it is.
    pub(crate) fn raw_parts(&self) -> (&[u32], &[FieldValue], &str) {
        (&self.ends, &self.values, &self.strings)
    }

    /// Rebuilds a batch from parts a disk buffer persisted. `None` when the
    /// parts break a [`Batch`] invariant (the record is then treated as
    /// corrupt), so a damaged record can never make an accessor panic.
    pub(crate) fn from_raw_parts(parts: RawParts, source: Arc<SourceContext>, received_at: SystemTime) -> Option<Batch> {
        let RawParts {
            data,
            ends,
            values,
            strings,
            fields,
        } = parts;
        let mut prev = 0u32;
        for &end in &ends {
            if end <= prev || end as usize > data.len() || data[end as usize - 1] != b'\n' {
                return None;
            }
            prev = end;
        }
        if prev as usize != data.len() || values.len() != ends.len() * fields.len() {
            return None;
        }
        let str_ok = |start: u32, len: u32| {
            let (start, end) = (start as usize, start as usize + len as usize);
            end <= strings.len() && strings.is_char_boundary(start) && strings.is_char_boundary(end)
        };
        if !values.iter().all(|v| match *v {
            FieldValue::Str(start, len) => str_ok(start, len),
            _ => true,
        }) {
            return None;
        }
        Some(Batch {
            data,
            ends,
            selection: None,
            values,
            strings,
            fields,
            source,
            received_at,
            ack: None,
            kind: EventKind::Log,
        })
    }
}

impl Drop for Batch {
    /// Hands the output buffer (and a selection's joined NDJSON) back for
    /// the next batch when no sink still holds a view of it.
    fn drop(&mut self) {
        let joined = self.selection.as_mut().and_then(|s| s.joined.take());
        for buffer in [Some(std::mem::take(&mut self.data)), joined].into_iter().flatten() {
            if let Ok(buffer) = buffer.try_into_mut() {
                BATCH_BUFFERS.give(buffer.into());
            }
        }
    }
}

/// What a selection of another batch's events adds to a [`Batch`].
#[derive(Debug)]
struct Selection {
    /// Where each event starts in the batch's `data`, or, with [`OWN`]
    /// set, in `own`.
    starts: Vec<u32>,
    /// The events a transform changed, each followed by `\n`.
    own: Bytes,
    /// The events joined, once a sink asked for them so.
    joined: OnceLock<Bytes>,
}

/// The bit of a selection's start that says the event is in its own
/// buffer (batches are far below 2 GiB).
const OWN: u32 = 1 << 31;

/// Builds a selection of a batch's events ([`Batch::selector`]), through
/// [`PartWriter`]: events kept unchanged share the batch's bytes; an event
/// a transform changed is written into the selection's own buffer.
#[derive(Debug)]
pub(crate) struct Selector<'b> {
    from: &'b Batch,
    starts: Vec<u32>,
    ends: Vec<u32>,
    values: Vec<FieldValue>,
    strings: String,
    own: Vec<u8>,
    /// Where the changed event being written starts in `own`.
    own_start: usize,
    /// Where the last event ends in the selection's NDJSON.
    end: u32,
}

/// Where a transform output's events are written: a batch of copies
/// ([`BatchBuilder`]) or a selection of the decoded batch ([`Selector`]).
pub(crate) trait PartWriter {
    /// Appends the unchanged events `range` of `from`, the batch the
    /// output is of, with their values.
    fn keep(&mut self, from: &Batch, range: std::ops::Range<usize>);
    /// The buffer a changed event's text is written into.
    fn buffer(&mut self) -> &mut Vec<u8>;
    /// Records an extracted value of the changed event being written.
    fn push_value(&mut self, v: FieldValueRef<'_>);
    /// Ends the changed event being written. The caller must have pushed
    /// exactly one value per field for it.
    fn finish_event(&mut self);
}

impl PartWriter for BatchBuilder {
    fn keep(&mut self, from: &Batch, range: std::ops::Range<usize>) {
        self.push_events_of(from, range);
    }
    fn buffer(&mut self) -> &mut Vec<u8> {
        BatchBuilder::buffer(self)
    }
    fn push_value(&mut self, v: FieldValueRef<'_>) {
        BatchBuilder::push_value(self, v);
    }
    fn finish_event(&mut self) {
        BatchBuilder::finish_event(self);
    }
}

impl PartWriter for Selector<'_> {
    /// `from` is the batch the selector was made of.
    fn keep(&mut self, _from: &Batch, range: std::ops::Range<usize>) {
        let from = self.from;
        if from.selection.is_none() {
            // Events of the decoded batch: each starts where the one
            // before it ends.
            let mut start = if range.start == 0 { 0 } else { from.ends[range.start - 1] };
            self.starts.reserve(range.len());
            self.ends.reserve(range.len());
            for &end in &from.ends[range.clone()] {
                self.starts.push(start);
                self.end += end - start;
                self.ends.push(self.end);
                start = end;
            }
            from.copy_values(range, &mut self.values, &mut self.strings);
            return;
        }
        for i in range.clone() {
            let (buffer, at) = from.locate(i);
            let start = match from.selection.as_ref() {
                // Selecting from a selection: its own events are copied.
                Some(s) if std::ptr::eq(buffer, &s.own) => {
                    let start = self.own.len() as u32 | OWN;
                    self.own.extend_from_slice(&buffer[at.clone()]);
                    self.own_start = self.own.len();
                    start
                }
                _ => at.start as u32,
            };
            self.starts.push(start);
            self.end += at.len() as u32;
            self.ends.push(self.end);
        }
        from.copy_values(range, &mut self.values, &mut self.strings);
    }

    fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.own
    }

    fn push_value(&mut self, v: FieldValueRef<'_>) {
        self.values.push(FieldValue::store(v, &mut self.strings));
    }

    fn finish_event(&mut self) {
        self.own.push(b'\n');
        self.starts.push(self.own_start as u32 | OWN);
        self.end += (self.own.len() - self.own_start) as u32;
        self.ends.push(self.end);
        self.own_start = self.own.len();
        debug_assert_eq!(self.values.len(), self.ends.len() * self.from.fields.len());
    }
}

impl Selector<'_> {
    /// The selection, with the batch's source, read time, kind and
    /// acknowledger, like [`Batch::part`].
    pub(crate) fn build(self) -> Batch {
        let from = self.from;
        Batch {
            data: from.data.clone(),
            ends: self.ends,
            selection: Some(Box::new(Selection {
                starts: self.starts,
                own: Bytes::from(self.own),
                joined: OnceLock::new(),
            })),
            values: self.values,
            strings: self.strings,
            fields: from.fields.clone(),
            source: from.source.clone(),
            received_at: from.received_at,
            ack: from.ack.clone(),
            kind: from.kind,
        }
    }
}

/// The parts of a [`Batch`] without its source, as a disk buffer reads them
/// back. [`Batch::from_raw_parts`] checks them.
#[derive(Debug)]
pub(crate) struct RawParts {
    /// The NDJSON bytes.
    pub(crate) data: Bytes,
    /// End offset of each event (after its newline).
    pub(crate) ends: Vec<u32>,
    /// Extracted values, `ends.len() * fields.len()` of them.
    pub(crate) values: Vec<FieldValue>,
    /// Arena the string values point into.
    pub(crate) strings: String,
    /// The field set the values belong to.
    pub(crate) fields: Arc<FieldSet>,
}

/// A borrowed view of one extracted value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValueRef<'a> {
    /// The event has no such field.
    Missing,
    /// JSON `null`.
    Null,
    /// JSON `true` or `false`.
    Bool(bool),
    /// Any JSON number.
    Number(f64),
    /// A JSON string, unescaped.
    Str(&'a str),
    /// An object or array, not extracted further.
    Composite,
}

impl<'a> FieldValueRef<'a> {
    /// The value as text, the way labels and keys render it. Missing, null
    /// and composite values have no text.
    pub(crate) fn render(&self, out: &mut String) -> bool {
        match *self {
            FieldValueRef::Str(s) => out.push_str(s),
            FieldValueRef::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            FieldValueRef::Number(n) => {
                if n.fract() == 0.0 && n.abs() < 1e15 {
                    out.push_str(itoa::Buffer::new().format(n as i64));
                } else {
                    out.push_str(ryu::Buffer::new().format(n));
                }
            }
            FieldValueRef::Missing | FieldValueRef::Null | FieldValueRef::Composite => return false,
        }
        true
    }

    /// The value as a number, when it is one or a string holding one.
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            FieldValueRef::Number(n) => Some(n),
            FieldValueRef::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Builds one [`Batch`]: the decoder appends events and their field values.
#[derive(Debug)]
pub struct BatchBuilder {
    data: Vec<u8>,
    ends: Vec<u32>,
    values: Vec<FieldValue>,
    strings: String,
    fields: Arc<FieldSet>,
}

impl BatchBuilder {
    /// A builder sized for about `bytes` of output.
    pub fn with_capacity(fields: Arc<FieldSet>, bytes: usize, events: usize) -> Self {
        BatchBuilder {
            data: BATCH_BUFFERS.take(bytes).unwrap_or_else(|| Vec::with_capacity(bytes)),
            ends: Vec::with_capacity(events),
            values: Vec::with_capacity(events * fields.len()),
            strings: String::new(),
            fields,
        }
    }

    /// The output buffer the decoder writes the current event into.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    /// Ends the current event: appends the newline and records the boundary.
    /// The caller must have pushed exactly `fields.len()` values for it.
    pub(crate) fn finish_event(&mut self) {
        self.data.push(b'\n');
        self.ends.push(self.data.len() as u32);
        debug_assert_eq!(self.values.len(), self.ends.len() * self.fields.len());
    }

    /// Records an extracted value for the current event.
    pub(crate) fn push_value(&mut self, v: FieldValueRef<'_>) {
        self.values.push(FieldValue::store(v, &mut self.strings));
    }

    /// Appends events `range` of `from` as they are: their bytes (a copy,
    /// never a re-serialisation, in one piece) and their extracted values.
    /// `from` must have this builder's field set.
    pub(crate) fn push_events_of(&mut self, from: &Batch, range: std::ops::Range<usize>) {
        debug_assert!(Arc::ptr_eq(&self.fields, &from.fields));
        let Some(last) = range.end.checked_sub(1).filter(|_| !range.is_empty()) else {
            return;
        };
        let start = if range.start == 0 { 0 } else { from.ends[range.start - 1] as usize };
        let shift = self.data.len() as i64 - start as i64;
        self.data.extend_from_slice(&from.ndjson()[start..from.ends[last] as usize]);
        self.ends
            .extend(from.ends[range.clone()].iter().map(|&e| (e as i64 + shift) as u32));
        from.copy_values(range, &mut self.values, &mut self.strings);
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when no event was added.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The field set this builder extracts.
    pub(crate) fn fields(&self) -> &Arc<FieldSet> {
        &self.fields
    }

    /// Finishes the batch.
    pub fn build(self, source: Arc<SourceContext>, received_at: SystemTime) -> Batch {
        Batch {
            data: Bytes::from(self.data),
            ends: self.ends,
            selection: None,
            values: self.values,
            strings: self.strings,
            fields: self.fields,
            source,
            received_at,
            ack: None,
            kind: EventKind::Log,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `events`, with the field `level` extracted from each.
    fn batch(events: &[&str]) -> Batch {
        let mut fields = FieldSet::new();
        fields.add(FieldPath::parse("level").unwrap());
        let mut b = BatchBuilder::with_capacity(Arc::new(fields), 64, events.len());
        for e in events {
            b.buffer().extend_from_slice(e.as_bytes());
            let level = serde_json::from_str::<serde_json::Value>(e).unwrap()["level"]
                .as_str()
                .map(str::to_owned);
            b.push_value(level.as_deref().map_or(FieldValueRef::Missing, FieldValueRef::Str));
            b.finish_event();
        }
        let ctx = Arc::new(SourceContext::new("app".into(), "stdin", String::new(), serde_json::Map::new()));
        b.build(ctx, SystemTime::UNIX_EPOCH).with_kind(EventKind::Metric)
    }

    fn texts(b: &Batch) -> Vec<String> {
        b.events().map(|e| String::from_utf8(e.to_vec()).unwrap()).collect()
    }

    #[test]
    fn a_selection_shares_the_bytes_and_reads_like_a_batch_of_copies() {
        let all = [
            "{\"level\":\"info\",\"n\":0}",
            "{\"level\":\"error\",\"n\":1}",
            "{\"n\":2}",
            "{\"level\":\"warn\",\"n\":3}",
        ];
        let b = batch(&all);
        let picks = [3, 1, 2];
        let s = b.select(picks.iter().copied());
        assert_eq!(s.len(), 3);
        assert_eq!(texts(&s), picks.iter().map(|&i| all[i].to_owned()).collect::<Vec<_>>());
        assert_eq!(s.kind(), EventKind::Metric);
        // No copy of the events: they are the batch's bytes.
        assert_eq!(s.event(0).as_ptr(), b.event(3).as_ptr());
        assert_eq!(s.event_bytes(1).as_ptr(), b.event(1).as_ptr());
        // The NDJSON a sink writes whole, its byte count and event ranges.
        let joined: String = picks.iter().map(|&i| format!("{}\n", all[i])).collect();
        assert_eq!(s.ndjson().as_ref(), joined.as_bytes());
        assert_eq!(s.byte_len(), joined.len());
        for i in 0..s.len() {
            assert_eq!(&s.ndjson()[s.ndjson_range(i)], format!("{}\n", all[picks[i]]).as_bytes());
        }
        // The extracted values follow their events.
        assert_eq!(s.value(0, 0), FieldValueRef::Str("warn"));
        assert_eq!(s.value(1, 0), FieldValueRef::Str("error"));
        assert_eq!(s.value(2, 0), FieldValueRef::Missing);
        // Its memory is the whole buffer it keeps alive.
        assert!(s.memory_len() >= b.byte_len());
        // A selection of a selection, and a copy from one, read alike.
        let ss = s.select([2, 0].into_iter());
        assert_eq!(texts(&ss), vec![all[2].to_owned(), all[3].to_owned()]);
        assert_eq!(ss.ndjson().as_ref(), format!("{}\n{}\n", all[2], all[3]).as_bytes());
        let mut copy = s.part_builder(2);
        copy.push_events_of(&s, 1..3);
        let copy = s.part(copy);
        assert_eq!(texts(&copy), vec![all[1].to_owned(), all[2].to_owned()]);
        assert_eq!(copy.value(0, 0), FieldValueRef::Str("error"));
        // What a disk buffer persists rebuilds the same batch.
        let (ends, values, strings) = s.raw_parts();
        let back = Batch::from_raw_parts(
            RawParts {
                data: s.ndjson().clone(),
                ends: ends.to_vec(),
                values: values.to_vec(),
                strings: strings.to_owned(),
                fields: s.fields().clone(),
            },
            s.source.clone(),
            s.received_at,
        )
        .expect("a selection's parts keep the invariants");
        assert_eq!(texts(&back), texts(&s));
        assert_eq!(back.value(0, 0), FieldValueRef::Str("warn"));
    }

    #[test]
    fn a_selection_holds_changed_events_in_its_own_buffer_beside_shared_ones() {
        let all = [
            "{\"level\":\"info\",\"n\":0}",
            "{\"level\":\"error\",\"n\":1}",
            "{\"level\":\"warn\",\"n\":2}",
        ];
        let b = batch(&all);
        let mut s = b.selector(4);
        s.keep(&b, 0..1);
        s.buffer().extend_from_slice(b"{\"level\":\"debug\",\"n\":1}");
        s.push_value(FieldValueRef::Str("debug"));
        s.finish_event();
        s.keep(&b, 2..3);
        s.buffer().extend_from_slice(b"{\"n\":9}");
        s.push_value(FieldValueRef::Missing);
        s.finish_event();
        let s = s.build();
        let want = [all[0], "{\"level\":\"debug\",\"n\":1}", all[2], "{\"n\":9}"];
        assert_eq!(texts(&s), want);
        assert_eq!(s.event(0).as_ptr(), b.event(0).as_ptr());
        assert_eq!(s.event(2).as_ptr(), b.event(2).as_ptr());
        assert_eq!(&s.event_bytes(1)[..], want[1].as_bytes());
        let joined: String = want.iter().map(|e| format!("{e}\n")).collect();
        assert_eq!(s.ndjson().as_ref(), joined.as_bytes());
        assert_eq!(s.byte_len(), joined.len());
        let values: Vec<_> = (0..4).map(|i| s.value(i, 0)).collect();
        assert_eq!(
            values,
            [
                FieldValueRef::Str("info"),
                FieldValueRef::Str("debug"),
                FieldValueRef::Str("warn"),
                FieldValueRef::Missing
            ]
        );
        // Selected again, its own events are copied and the shared ones
        // still point into the first batch.
        let ss = s.select([3, 2, 1].into_iter());
        assert_eq!(texts(&ss), [want[3], want[2], want[1]]);
        assert_eq!(ss.event(1).as_ptr(), b.event(2).as_ptr());
        assert_eq!(ss.value(2, 0), FieldValueRef::Str("debug"));
        assert_eq!(ss.ndjson().as_ref(), format!("{}\n{}\n{}\n", want[3], want[2], want[1]).as_bytes());
    }

    #[test]
    fn an_empty_selection_is_an_empty_batch() {
        let b = batch(&["{\"level\":\"info\"}"]);
        let s = b.select(std::iter::empty());
        assert!(s.is_empty());
        assert_eq!(s.byte_len(), 0);
        assert!(s.ndjson().is_empty());
    }
}
