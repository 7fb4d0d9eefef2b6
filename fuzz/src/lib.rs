//! What the fuzz targets share: reading parameters off the front of an
//! input, the field set and metadata the decoders run with, and the checks
//! every decoded batch must pass.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sluice::decode::cri::CriReader;
use sluice::decode::docker::DockerReader;
use sluice::decode::Decoder;
use sluice::enrich::{Fragment, SourceContext};
use sluice::event::{Batch, BatchBuilder, FieldPath, FieldSet, FieldValueRef};
use sluice::framing::{LineFramer, Lines, OverflowPolicy};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Field paths the decoders extract: top-level, nested, and the wrapped
/// line's `message`.
pub const FIELDS: &[&str] = &["level", "status", "duration_ms", "http.status", "message", "a.b.c"];

/// Parameters taken off the front of an input, then the rest as data.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data` from the start.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// The next byte, or 0 when the input is spent.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A size in `1..=max` from the next byte.
    pub fn size(&mut self, max: usize) -> usize {
        usize::from(self.byte()) % max.max(1) + 1
    }

    /// An overflow policy from the next byte.
    pub fn policy(&mut self) -> OverflowPolicy {
        if self.byte() & 1 == 0 {
            OverflowPolicy::Truncate
        } else {
            OverflowPolicy::Drop
        }
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// The field set of [`FIELDS`].
pub fn field_set() -> Arc<FieldSet> {
    let mut set = FieldSet::new();
    for p in FIELDS {
        if let Ok(path) = FieldPath::parse(p) {
            set.add(path);
        }
    }
    Arc::new(set)
}

/// Source metadata spliced into every event: a string, a number and an
/// object, one of them (`level`) a key events often have themselves.
pub fn metadata() -> Map<String, Value> {
    let Value::Object(meta) = serde_json::json!({
        "host": "node-1",
        "level": "default",
        "release": {"version": "1.2.3", "commit": "abc\"def"},
    }) else {
        unreachable!("a JSON object literal")
    };
    meta
}

/// The splice of [`metadata`].
pub fn fragment() -> Fragment {
    Fragment::from_map(&metadata())
}

/// A batch builder for [`field_set`].
pub fn builder() -> BatchBuilder {
    BatchBuilder::with_capacity(field_set(), 4096, 16)
}

/// A batch builder that extracts no field: events whose values nobody
/// reads take the decoder's scan path instead of simd-json's tape.
pub fn bare_builder() -> BatchBuilder {
    BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 4096, 16)
}

/// Builds `out` into a batch of a test source.
pub fn build(out: BatchBuilder) -> Batch {
    let ctx = Arc::new(SourceContext::new("fuzz".into(), "file", String::new(), Map::new()));
    out.build(ctx, SystemTime::UNIX_EPOCH)
}

/// Frames `data`, handed over in pieces of `piece` bytes, with a
/// [`LineFramer`]; ends the input and returns every run of lines.
pub fn frame_lines(data: &[u8], piece: usize, max_line: usize, policy: OverflowPolicy) -> Vec<Lines> {
    let mut framer = LineFramer::with_read_chunk(max_line, policy, piece);
    let mut out = Vec::new();
    for p in data.chunks(piece.max(1)) {
        framer.extend(p);
        out.extend(std::iter::from_fn(|| framer.take_lines()));
    }
    out.extend(std::iter::from_fn(|| framer.finish()));
    out
}

/// Every event is one JSON object on one line, and every field value can be
/// read; returns the events parsed.
pub fn check_batch(batch: &Batch) -> Vec<Map<String, Value>> {
    let mut events = Vec::with_capacity(batch.len());
    for (i, e) in batch.events().enumerate() {
        assert!(!e.contains(&b'\n'), "event {i} spans lines: {:?}", String::from_utf8_lossy(e));
        match serde_json::from_slice::<Value>(e) {
            Ok(Value::Object(m)) => events.push(m),
            other => panic!("event {i} is not a JSON object ({other:?}): {:?}", String::from_utf8_lossy(e)),
        }
        for f in 0..batch.fields().len() {
            let _ = batch.value(i, f);
        }
    }
    events
}

/// The value the decoder should have extracted at `path` of `event`.
pub fn expected_value<'v>(event: &'v Map<String, Value>, path: &FieldPath) -> FieldValueRef<'v> {
    let mut segments = path.segments().iter();
    let Some(first) = segments.next() else {
        return FieldValueRef::Missing;
    };
    let mut v = match event.get(first.as_str()) {
        Some(v) => v,
        None => return FieldValueRef::Missing,
    };
    for s in segments {
        v = match v.as_object().and_then(|o| o.get(s.as_str())) {
            Some(v) => v,
            None => return FieldValueRef::Missing,
        };
    }
    match v {
        Value::Null => FieldValueRef::Null,
        Value::Bool(b) => FieldValueRef::Bool(*b),
        Value::Number(n) => n.as_f64().map_or(FieldValueRef::Missing, FieldValueRef::Number),
        Value::String(s) => FieldValueRef::Str(s),
        Value::Array(_) | Value::Object(_) => FieldValueRef::Composite,
    }
}

/// Two extracted values are the same. Numbers may differ in the last bit:
/// simd-json does not round numbers of more than 19 significant digits
/// exactly as serde_json does (found by this target:
/// `200222222222222221.5` reads as 2.002222222222222e17, serde_json gives
/// 2.0022222222222224e17); the event's bytes are unchanged either way.
pub fn same_value(a: FieldValueRef<'_>, b: FieldValueRef<'_>) -> bool {
    match (a, b) {
        (FieldValueRef::Missing, FieldValueRef::Missing)
        | (FieldValueRef::Null, FieldValueRef::Null)
        | (FieldValueRef::Composite, FieldValueRef::Composite) => true,
        (FieldValueRef::Bool(x), FieldValueRef::Bool(y)) => x == y,
        (FieldValueRef::Number(x), FieldValueRef::Number(y)) => x == y || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON,
        (FieldValueRef::Str(x), FieldValueRef::Str(y)) => x == y,
        _ => false,
    }
}

/// JSON without a key twice in any object (where "which one wins" is not
/// defined, so extraction is not compared).
pub fn unique_keys(json: &[u8]) -> bool {
    serde_json::from_slice::<UniqueKeys>(json).is_ok()
}

struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k) {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// The container readers, CRI and docker, as the container fuzz targets
/// drive them.
pub trait ContainerReader {
    /// Unwraps a chunk of lines at `offset` and decodes its records.
    fn unwrap_decode(
        &mut self,
        lines: &Lines,
        offset: u64,
        now: Instant,
        decoder: &mut Decoder,
        fragment: &Fragment,
        out: &mut BatchBuilder,
    );
    /// Decodes every unfinished partial line as expired.
    fn expire_decode(&mut self, now: Instant, decoder: &mut Decoder, fragment: &Fragment, out: &mut BatchBuilder);
    /// Where the oldest unfinished partial line starts.
    fn pending_start(&self) -> Option<u64>;
}

/// Both readers have the same methods on batches of their own type.
macro_rules! container_reader {
    ($reader:ty) => {
        impl ContainerReader for $reader {
            fn unwrap_decode(
                &mut self,
                lines: &Lines,
                offset: u64,
                now: Instant,
                decoder: &mut Decoder,
                fragment: &Fragment,
                out: &mut BatchBuilder,
            ) {
                self.unwrap(lines, offset, now).decode(decoder, fragment, out);
            }
            fn expire_decode(&mut self, now: Instant, decoder: &mut Decoder, fragment: &Fragment, out: &mut BatchBuilder) {
                if let Some(b) = self.take_expired(now, Duration::ZERO) {
                    b.decode(decoder, fragment, out);
                }
            }
            fn pending_start(&self) -> Option<u64> {
                <$reader>::pending_start(self)
            }
        }
    };
}

container_reader!(CriReader);
container_reader!(DockerReader);

/// One container target run: frames the input, unwraps and merges with a
/// reader from `new_reader(partial_max_bytes)`, expires unfinished pieces
/// now and then and at the end, and checks the events and the pending
/// position.
pub fn run_container<R: ContainerReader>(data: &[u8], new_reader: impl FnOnce(usize) -> R) {
    let mut input = Input::new(data);
    let piece = input.size(128);
    let max_line = input.size(128);
    let policy = input.policy();
    let partial_max = input.size(96);
    let expire_every = input.size(4);
    let data = input.rest();

    let now = Instant::now();
    let fragment = fragment();
    let mut reader = new_reader(partial_max);
    let mut decoder = Decoder::new();
    let mut out = builder();
    let mut offset = 0u64;
    for (n, lines) in frame_lines(data, piece, max_line, policy).iter().enumerate() {
        reader.unwrap_decode(lines, offset, now, &mut decoder, &fragment, &mut out);
        offset += lines.chunk.len() as u64;
        if n % expire_every == 0 {
            reader.expire_decode(now, &mut decoder, &fragment, &mut out);
        }
        if let Some(start) = reader.pending_start() {
            assert!(start < offset, "a pending piece starts at {start}, past what was read ({offset})");
        }
    }
    reader.expire_decode(now, &mut decoder, &fragment, &mut out);
    assert_eq!(reader.pending_start(), None, "nothing pending after every piece expired");
    check_batch(&build(out));
}

/// A scratch directory for this fuzzing process, made once: under
/// `SLUICE_FUZZ_SCRATCH` (scripts/fuzz sets it and removes it afterwards),
/// else in memory where the system has /dev/shm.
pub fn scratch_dir(name: &str) -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("SLUICE_FUZZ_SCRATCH").map_or_else(|| std::path::PathBuf::from("/dev/shm"), std::path::PathBuf::from);
        let base = if base.is_dir() { base.to_owned() } else { std::env::temp_dir() };
        let dir = base.join(format!("sluice-fuzz-{name}-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create the scratch directory {}: {e}", dir.display());
        }
        dir
    })
}

/// The frames of `runs` with their truncated flags, and how many were
/// dropped.
pub fn framed(runs: &[Lines]) -> (Vec<(&[u8], bool)>, u64) {
    let mut frames = Vec::new();
    let mut dropped = 0;
    for lines in runs {
        dropped += lines.dropped;
        for (i, span) in lines.spans.iter().enumerate() {
            frames.push((lines.line(i), span.truncated));
        }
    }
    (frames, dropped)
}

/// What framing `messages` must give under a `max` limit and `policy`:
/// each message, cut to the limit and flagged, or dropped and counted.
pub fn limited<'a>(messages: impl IntoIterator<Item = &'a [u8]>, max: usize, policy: OverflowPolicy) -> (Vec<(&'a [u8], bool)>, u64) {
    let mut frames = Vec::new();
    let mut dropped = 0;
    for m in messages {
        if m.len() <= max {
            frames.push((m, false));
        } else if policy == OverflowPolicy::Truncate {
            frames.push((&m[..max], true));
        } else {
            dropped += 1;
        }
    }
    (frames, dropped)
}
