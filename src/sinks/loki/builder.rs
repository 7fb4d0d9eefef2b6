//! Turns batches of events into Loki pushes: each event's label set, time
//! and structured metadata, entries grouped into streams, pushes cut at
//! `batch.max_events` / `batch.max_bytes`. No I/O here; the sink sends
//! what this builds, and the benchmarks measure it.

use bytes::Bytes;
use std::collections::HashMap;
use std::time::{Instant, UNIX_EPOCH};

use super::config::{Compression, Encoding, LokiConfig, TimestampFormat};
use super::encode::{self, EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp};
use super::timestamp;
use crate::event::{Batch, FieldSet};
use crate::sinks::template::{BoundTemplate, Template};

/// Where a label's value comes from.
#[derive(Debug, Clone)]
enum LabelValue {
    /// The source's name (the default `source` label).
    SourceName,
    /// A template over event fields and metadata.
    Template(BoundTemplate),
}

/// Per-event plan computed in the first pass over a batch.
#[derive(Debug, Clone, Copy)]
struct EventPlan {
    /// Index into the batch's distinct label sets.
    key: u32,
    ts: i64,
    /// Range of this event's pairs in `meta_ranges`.
    meta_start: u32,
    meta_len: u32,
}

/// The push being filled.
#[derive(Default)]
struct Pending {
    req: PushRequest,
    /// Stream label sets as JSON objects (JSON encoding only), parallel to
    /// `req.streams`.
    stream_json: Vec<String>,
    /// Label text → index in `req.streams`.
    index: HashMap<String, usize>,
    events: usize,
    bytes: usize,
    /// Ids of the batches with events in this push, each once.
    parts: Vec<u64>,
    opened: Option<Instant>,
}

/// A push ready to encode and send.
#[derive(Debug)]
pub struct Push {
    req: PushRequest,
    stream_json: Vec<String>,
    events: usize,
    bytes: usize,
    parts: Vec<u64>,
}

impl Push {
    /// Entries in the push.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Line bytes in the push, before compression.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the batch ids out (the sink acknowledges through them).
    pub(crate) fn take_parts(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.parts)
    }

    /// Orders each stream's entries by time and encodes the body: snappy
    /// protobuf, or JSON (gzip at `gzip_level` when asked).
    pub fn encode(mut self, encoding: Encoding, compression: Compression, gzip_level: u32) -> Result<Vec<u8>, String> {
        encode::order_entries(&mut self.req.streams);
        match (encoding, compression) {
            (Encoding::Protobuf, _) => encode::encode_protobuf(&self.req).map_err(|e| e.to_string()),
            (Encoding::Json, Compression::Gzip) => {
                encode::gzip(&encode::encode_json(&self.req, &self.stream_json), gzip_level).map_err(|e| e.to_string())
            }
            (Encoding::Json, _) => Ok(encode::encode_json(&self.req, &self.stream_json)),
        }
    }
}

/// Builds pushes from batches.
pub struct PushBuilder {
    labels: Vec<(String, LabelValue)>,
    /// True when some label depends on the event, not only on the batch.
    per_event_labels: bool,
    metadata: Vec<(Bytes, Option<usize>)>,
    ts_column: Option<usize>,
    ts_format: TimestampFormat,
    json: bool,
    max_bytes: usize,
    max_events: usize,
    pending: Pending,
    // Scratch, reused across batches.
    plan: Vec<EventPlan>,
    keys: Vec<String>,
    key_json: Vec<String>,
    key_index: HashMap<String, u32>,
    key_to_stream: Vec<Option<usize>>,
    meta_arena: String,
    meta_ranges: Vec<(u32, u32, u32)>,
}

impl PushBuilder {
    /// A builder for `cfg`, reading event fields from the columns of
    /// `fields` (the pipeline's field set, which holds
    /// `cfg.fields_needed()`).
    pub fn new(cfg: &LokiConfig, fields: &FieldSet) -> PushBuilder {
        let mut labels: Vec<(String, LabelValue)> = cfg
            .labels
            .iter()
            .map(|(k, t)| (k.clone(), LabelValue::Template(t.bind(fields))))
            .collect();
        if cfg.default_labels {
            if !cfg.labels.contains_key("source") {
                labels.push(("source".into(), LabelValue::SourceName));
            }
            if !cfg.labels.contains_key("host") {
                if let Ok(t) = Template::parse("{{ host }}") {
                    labels.push(("host".into(), LabelValue::Template(t.bind(fields))));
                }
            }
        }
        // Loki sorts label names; so do we, so one label set has one text.
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        let per_event_labels = labels
            .iter()
            .any(|(_, v)| matches!(v, LabelValue::Template(t) if !t.template().is_literal()));
        let metadata = cfg
            .metadata_fields()
            .into_iter()
            .map(|(name, path)| (Bytes::from(name), fields.index_of(&path)))
            .collect();
        PushBuilder {
            labels,
            per_event_labels,
            metadata,
            ts_column: cfg.timestamp_path().and_then(|p| fields.index_of(&p)),
            ts_format: cfg.timestamp_format,
            json: cfg.encoding == Encoding::Json,
            max_bytes: cfg.batch.max_bytes.0 as usize,
            max_events: cfg.batch.max_events,
            pending: Pending::default(),
            plan: Vec::new(),
            keys: Vec::new(),
            key_json: Vec::new(),
            key_index: HashMap::new(),
            key_to_stream: Vec::new(),
            meta_arena: String::new(),
            meta_ranges: Vec::new(),
        }
    }

    /// When the oldest entry of the pending push arrived.
    pub(crate) fn opened(&self) -> Option<Instant> {
        self.pending.opened
    }

    /// Adds a batch's events (the batch known as `id`), appending the
    /// pushes that fill to `out`. Returns how many pushes the batch's
    /// events went into (the pending one included).
    pub fn add(&mut self, batch: &Batch, id: u64, out: &mut Vec<Push>) -> usize {
        self.plan_batch(batch);
        let arena = Bytes::from(std::mem::take(&mut self.meta_arena).into_bytes());
        self.key_to_stream.clear();
        self.key_to_stream.resize(self.keys.len(), None);
        let mut pushes = 0;
        let mut in_pending = false;
        for i in 0..batch.len() {
            let line = batch.event_bytes(i);
            let full =
                self.pending.events >= self.max_events || (self.pending.events > 0 && self.pending.bytes + line.len() > self.max_bytes);
            if full {
                out.extend(self.seal());
                self.key_to_stream.iter_mut().for_each(|s| *s = None);
                in_pending = false;
            }
            if !in_pending {
                pushes += 1;
                self.pending.parts.push(id);
                self.pending.opened.get_or_insert_with(Instant::now);
                in_pending = true;
            }
            let p = self.plan[i];
            let stream = match self.key_to_stream[p.key as usize] {
                Some(s) => s,
                None => {
                    let s = self.stream_for(p.key as usize);
                    self.key_to_stream[p.key as usize] = Some(s);
                    s
                }
            };
            let structured_metadata = self.meta_ranges[p.meta_start as usize..(p.meta_start + p.meta_len) as usize]
                .iter()
                .map(|&(m, start, end)| LabelPairAdapter {
                    name: self.metadata[m as usize].0.clone(),
                    value: arena.slice(start as usize..end as usize),
                })
                .collect();
            self.pending.bytes += line.len();
            self.pending.events += 1;
            self.pending.req.streams[stream].entries.push(EntryAdapter {
                timestamp: Some(Timestamp::from_nanos(p.ts)),
                line,
                structured_metadata,
            });
        }
        if self.pending.events >= self.max_events || self.pending.bytes >= self.max_bytes {
            out.extend(self.seal());
        }
        pushes
    }

    /// Closes the pending push, if it holds anything.
    pub fn seal(&mut self) -> Option<Push> {
        if self.pending.events == 0 {
            self.pending.opened = None;
            return None;
        }
        let p = std::mem::take(&mut self.pending);
        Some(Push {
            req: p.req,
            stream_json: p.stream_json,
            events: p.events,
            bytes: p.bytes,
            parts: p.parts,
        })
    }

    /// The pending push's stream for the batch's label set `key`.
    fn stream_for(&mut self, key: usize) -> usize {
        if let Some(&s) = self.pending.index.get(self.keys[key].as_str()) {
            return s;
        }
        let s = self.pending.req.streams.len();
        self.pending.req.streams.push(StreamAdapter {
            labels: self.keys[key].clone(),
            entries: Vec::new(),
        });
        if self.json {
            self.pending.stream_json.push(self.key_json[key].clone());
        }
        self.pending.index.insert(self.keys[key].clone(), s);
        s
    }

    /// First pass: every event's label set, time and structured metadata.
    fn plan_batch(&mut self, batch: &Batch) {
        self.plan.clear();
        self.keys.clear();
        self.key_json.clear();
        self.key_index.clear();
        self.meta_ranges.clear();
        self.meta_arena.clear();
        let received = batch.received_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
        let mut text = String::with_capacity(128);
        let mut value = String::with_capacity(64);
        let mut shared_key = None;
        for i in 0..batch.len() {
            let key = match shared_key {
                Some(k) => k,
                None => {
                    text.clear();
                    self.label_text(batch, i, &mut text, &mut value, None);
                    let k = match self.key_index.get(text.as_str()) {
                        Some(&k) => k,
                        None => {
                            let k = self.keys.len() as u32;
                            self.key_index.insert(text.clone(), k);
                            self.keys.push(text.clone());
                            if self.json {
                                let mut json = String::new();
                                self.label_text(batch, i, &mut String::new(), &mut value, Some(&mut json));
                                self.key_json.push(json);
                            }
                            k
                        }
                    };
                    if !self.per_event_labels {
                        shared_key = Some(k);
                    }
                    k
                }
            };
            let ts = self
                .ts_column
                .and_then(|c| timestamp::event_nanos(batch.value(i, c), self.ts_format))
                .unwrap_or(received);
            let meta_start = self.meta_ranges.len() as u32;
            for (m, (_, column)) in self.metadata.iter().enumerate() {
                let Some(c) = column else { continue };
                let start = self.meta_arena.len();
                if batch.value(i, *c).render(&mut self.meta_arena) && self.meta_arena.len() > start {
                    self.meta_ranges.push((m as u32, start as u32, self.meta_arena.len() as u32));
                }
            }
            self.plan.push(EventPlan {
                key,
                ts,
                meta_start,
                meta_len: self.meta_ranges.len() as u32 - meta_start,
            });
        }
    }

    /// Renders event `i`'s label set as LogQL text (`{a="x", b="y"}`) and,
    /// when asked, as a JSON object. Labels that render empty are left
    /// out; with none left, the source name is the label.
    fn label_text(&self, batch: &Batch, i: usize, out: &mut String, value: &mut String, mut json: Option<&mut String>) {
        out.push('{');
        if let Some(j) = json.as_deref_mut() {
            j.push('{');
        }
        let mut first = true;
        for (name, lv) in &self.labels {
            value.clear();
            match lv {
                LabelValue::SourceName => value.push_str(&batch.source.source),
                LabelValue::Template(t) => t.render(batch, i, value),
            }
            if value.is_empty() {
                continue;
            }
            push_label(out, json.as_deref_mut(), first, name, value);
            first = false;
        }
        if first {
            push_label(out, json.as_deref_mut(), true, "source", &batch.source.source);
        }
        out.push('}');
        if let Some(j) = json {
            j.push('}');
        }
    }
}

fn push_label(out: &mut String, json: Option<&mut String>, first: bool, name: &str, value: &str) {
    if !first {
        out.push_str(", ");
    }
    out.push_str(name);
    out.push('=');
    encode::quote_label_value(out, value);
    if let Some(j) = json {
        if !first {
            j.push(',');
        }
        // Serialising a str cannot fail.
        j.push_str(&serde_json::to_string(name).unwrap_or_default());
        j.push(':');
        j.push_str(&serde_json::to_string(value).unwrap_or_default());
    }
}
