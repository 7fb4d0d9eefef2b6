//! sluice events to an OTLP logs request, written straight to protobuf's
//! wire format from simd-json's tape of each event: the hot path of the
//! `otlp` sink. No `serde_json::Value` and no owned protobuf message is
//! made per event.
//!
//! The mapping is the one docs/otlp.md gives (the `otlp` source's in
//! reverse): `timestamp`, `level`, `message` or `body`, trace context and
//! `attributes` make the record; every other top-level key is an
//! attribute; `scope` is the instrumentation scope; `resource`, `release`,
//! `process`, `kubernetes` and `host` make the resource. Records are
//! grouped by resource (equal resources share one `ResourceLogs`) and then
//! by scope, in event order.
//!
//! An event simd-json cannot read (an integer over 64 bits), or with a
//! repeated key in one of its objects, is read with serde_json instead,
//! whose last value of a repeated key wins; text that is no JSON at all
//! becomes a record whose body is that text.

use std::collections::HashMap;

use simd_json::{Buffers, Node, StaticNode, Tape};

use super::logs::{parse_hex_into, parse_time_str, severity_number, RESOURCE_KEYS};

/// Deepest nesting simd-json is asked to read (as decode's limit).
const MAX_DEPTH: usize = 1024;

/// Top-level keys of an event that are its scope and resource; with the
/// record's own keys (`wire::RECORD_KEYS`, indexes 0 to 11) they are the
/// event's known keys (indexes 12 to 17). Every other key is an attribute.
#[cfg(test)]
const GROUP_KEYS: [&str; 6] = ["scope", "resource", "release", "process", "kubernetes", "host"];

/// The index of a known top-level key: its place in `RECORD_KEYS`, then
/// in `GROUP_KEYS` (a test holds the two in step). A `match` rather than a
/// search of the lists: it runs twice for every key of every event.
fn event_key(k: &str) -> Option<usize> {
    Some(match k {
        "timestamp" => TIMESTAMP,
        "observed_timestamp" => OBSERVED,
        "level" => LEVEL,
        "severity_number" => SEVERITY_NUMBER,
        "message" => MESSAGE,
        "body" => BODY,
        "event_name" => EVENT_NAME,
        "trace_id" => TRACE_ID,
        "span_id" => SPAN_ID,
        "trace_flags" => TRACE_FLAGS,
        "attributes" => ATTRIBUTES,
        "dropped_attributes_count" => DROPPED,
        "scope" => SCOPE,
        "resource" => RESOURCE,
        "release" => 14,
        "process" => 15,
        "kubernetes" => 16,
        "host" => HOST,
        _ => return None,
    })
}

const TIMESTAMP: usize = 0;
const OBSERVED: usize = 1;
const LEVEL: usize = 2;
const SEVERITY_NUMBER: usize = 3;
const MESSAGE: usize = 4;
const BODY: usize = 5;
const EVENT_NAME: usize = 6;
const TRACE_ID: usize = 7;
const SPAN_ID: usize = 8;
const TRACE_FLAGS: usize = 9;
const ATTRIBUTES: usize = 10;
const DROPPED: usize = 11;
const SCOPE: usize = 12;
const RESOURCE: usize = 13;
const HOST: usize = 17;

/// The metadata members that become resource attributes, in order.
const MEMBERS: [(&str, usize); 3] = [("release", 14), ("process", 15), ("kubernetes", 16)];

/// Records of one resource and scope.
struct ScopeGroup {
    /// The `InstrumentationScope` message (without tag and length).
    scope: Vec<u8>,
    /// Each record as field 2 of `ScopeLogs`: tag, length, message.
    records: Vec<u8>,
}

/// Records of one resource.
struct ResourceGroup {
    /// The `Resource` message (without tag and length).
    resource: Vec<u8>,
    scopes: Vec<ScopeGroup>,
}

/// Builds one `ExportLogsServiceRequest` from events.
pub(crate) struct LogsEncoder {
    /// The event being read, padded for simd-json.
    scratch: Vec<u8>,
    buffers: Buffers,
    /// The tape's storage between events.
    tape: Tape<'static>,
    groups: Vec<ResourceGroup>,
    /// A resource message to its index in `groups`.
    by_resource: HashMap<Vec<u8>, usize>,
    /// This event's resource, scope and record, before they are placed.
    resource: Vec<u8>,
    scope: Vec<u8>,
    record: Vec<u8>,
    /// Scratch for hex ids.
    hex: Vec<u8>,
    records: usize,
}

impl Default for LogsEncoder {
    fn default() -> Self {
        LogsEncoder {
            scratch: Vec::new(),
            buffers: Buffers::with_max_depth(4096, MAX_DEPTH),
            tape: Tape(Vec::new()),
            groups: Vec::new(),
            by_resource: HashMap::new(),
            resource: Vec::new(),
            scope: Vec::new(),
            record: Vec::new(),
            hex: Vec::new(),
            records: 0,
        }
    }
}

impl LogsEncoder {
    /// Adds one event (a JSON object; other JSON goes out as the body of a
    /// record, and text that is not JSON as a string body). `now` is the
    /// observed time of an event without `observed_timestamp`.
    pub(crate) fn push(&mut self, event: &[u8], now: u64) {
        if self.push_parsed(event, now) {
            return;
        }
        // What serde_json reads (repeated keys resolved, integers over 64
        // bits as doubles), written back as simd-json reads it.
        let text = match serde_json::from_slice::<serde_json::Value>(event) {
            Ok(v) => serde_json::to_vec(&v),
            Err(_) => serde_json::to_vec(&String::from_utf8_lossy(event)),
        };
        if !text.is_ok_and(|t| self.push_parsed(&t, now)) {
            // Unreachable in practice: serde_json's output is read back.
            self.push_parsed(b"null", now);
        }
    }

    /// [`LogsEncoder::push`] when simd-json reads the event and none of its
    /// objects repeats a key; false (nothing added) otherwise.
    fn push_parsed(&mut self, event: &[u8], now: u64) -> bool {
        let LogsEncoder {
            scratch,
            buffers,
            tape,
            resource,
            scope,
            record,
            hex,
            ..
        } = self;
        scratch.clear();
        scratch.extend_from_slice(event);
        scratch.resize(event.len() + simd_json::INPUT_PADDING, 0);
        let mut t: Tape<'_> = std::mem::replace(tape, Tape(Vec::new())).reset();
        let ok = simd_json::fill_tape_padded(scratch, event.len(), buffers, &mut t).is_ok() && !repeats_a_key(&t.0);
        if ok {
            encode_event(&t.0, now, record, scope, resource, hex);
        }
        *tape = t.reset();
        if ok {
            self.place();
        }
        ok
    }

    /// Files the record just encoded under its resource and scope.
    fn place(&mut self) {
        let g = match self.by_resource.get(&self.resource[..]) {
            Some(g) => *g,
            None => {
                self.groups.push(ResourceGroup {
                    resource: self.resource.clone(),
                    scopes: Vec::new(),
                });
                self.by_resource.insert(self.resource.clone(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let scopes = &mut self.groups[g].scopes;
        let s = match scopes.iter().position(|s| s.scope == self.scope) {
            Some(s) => s,
            None => {
                scopes.push(ScopeGroup {
                    scope: self.scope.clone(),
                    records: Vec::new(),
                });
                scopes.len() - 1
            }
        };
        let records = &mut scopes[s].records;
        records.push(0x12);
        varint(self.record.len() as u64, records);
        records.extend_from_slice(&self.record);
        self.records += 1;
    }

    /// Records added so far.
    pub(crate) fn len(&self) -> usize {
        self.records
    }

    /// The request's wire bytes, leaving the encoder empty.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        let sized = |len: usize| 1 + varint_len(len as u64) + len;
        let total: usize = self
            .groups
            .iter()
            .map(|g| {
                sized(g.resource.len())
                    + g.scopes
                        .iter()
                        .map(|s| sized(sized(s.scope.len()) + s.records.len()))
                        .sum::<usize>()
            })
            .map(sized)
            .sum();
        let mut out = Vec::with_capacity(total);
        for g in self.groups.drain(..) {
            let scopes: usize = g.scopes.iter().map(|s| sized(sized(s.scope.len()) + s.records.len())).sum();
            out.push(0x0a);
            varint((sized(g.resource.len()) + scopes) as u64, &mut out);
            bytes_field(1, &g.resource, &mut out);
            for s in g.scopes {
                out.push(0x12);
                varint((sized(s.scope.len()) + s.records.len()) as u64, &mut out);
                bytes_field(1, &s.scope, &mut out);
                out.extend_from_slice(&s.records);
            }
        }
        self.by_resource.clear();
        self.records = 0;
        out
    }
}

/// Whether any object of the tape has a key twice.
fn repeats_a_key(nodes: &[Node<'_>]) -> bool {
    for (i, n) in nodes.iter().enumerate() {
        let Node::Object { len, .. } = *n else { continue };
        if len < 2 {
            continue;
        }
        let mut keys: Vec<&str> = Vec::with_capacity(len);
        let mut idx = i + 1;
        for _ in 0..len {
            let Some(Node::String(k)) = nodes.get(idx) else { return true };
            if keys.contains(k) {
                return true;
            }
            keys.push(k);
            idx += 1 + nodes.get(idx + 1).map_or(1, count);
        }
    }
    false
}

/// How many nodes the value starting at `n` spans.
fn count(n: &Node<'_>) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// The members of the object at `nodes[0]`: (key, value's nodes).
fn entries<'t, 'i>(nodes: &'t [Node<'i>]) -> impl Iterator<Item = (&'i str, &'t [Node<'i>])> + 't {
    let len = match nodes.first() {
        Some(Node::Object { len, .. }) => *len,
        _ => 0,
    };
    let mut idx = 1;
    (0..len).map_while(move |_| {
        let Some(Node::String(k)) = nodes.get(idx) else { return None };
        let n = nodes.get(idx + 1).map_or(0, count);
        let value = nodes.get(idx + 1..idx + 1 + n)?;
        idx += 1 + n;
        Some((*k, value))
    })
}

fn as_str<'i>(v: Option<&[Node<'i>]>) -> Option<&'i str> {
    match v?.first()? {
        Node::String(s) => Some(*s),
        _ => None,
    }
}

/// serde_json's `as_i64`: an integer that fits.
fn as_i64(v: Option<&[Node<'_>]>) -> Option<i64> {
    match v?.first()? {
        Node::Static(StaticNode::I64(i)) => Some(*i),
        Node::Static(StaticNode::U64(u)) => i64::try_from(*u).ok(),
        _ => None,
    }
}

/// serde_json's `as_u64`: a non-negative integer.
fn as_u64(v: Option<&[Node<'_>]>) -> Option<u64> {
    match v?.first()? {
        Node::Static(StaticNode::I64(i)) => u64::try_from(*i).ok(),
        Node::Static(StaticNode::U64(u)) => Some(*u),
        _ => None,
    }
}

fn is_object(v: &[Node<'_>]) -> bool {
    matches!(v.first(), Some(Node::Object { .. }))
}

/// `v` when it is an object.
fn object<'t, 'i>(v: Option<&'t [Node<'i>]>) -> Option<&'t [Node<'i>]> {
    v.filter(|v| is_object(v))
}

/// An RFC 3339 time, or integer nanoseconds since the epoch.
fn time(v: Option<&[Node<'_>]>) -> Option<u64> {
    match v?.first()? {
        Node::String(s) => parse_time_str(s),
        _ => as_u64(v),
    }
}

/// Encodes one event (its tape) into `record`, `scope` and `resource`.
fn encode_event(nodes: &[Node<'_>], now: u64, record: &mut Vec<u8>, scope: &mut Vec<u8>, resource: &mut Vec<u8>, hex: &mut Vec<u8>) {
    let mut known: [Option<&[Node<'_>]>; 18] = [None; 18];
    let is_obj = matches!(nodes.first(), Some(Node::Object { .. }));
    for (k, v) in entries(nodes) {
        if let Some(i) = event_key(k) {
            known[i] = Some(v);
        }
    }
    record.clear();
    let time_unix = time(known[TIMESTAMP]).unwrap_or(0);
    if time_unix != 0 {
        fixed64_field(1, time_unix, record);
    }
    let level = as_str(known[LEVEL]).unwrap_or_default();
    let severity = match as_i64(known[SEVERITY_NUMBER]) {
        Some(n) => i32::try_from(n).unwrap_or(0),
        None => severity_number(level),
    };
    if severity != 0 {
        record.push(2 << 3);
        varint(severity as i64 as u64, record);
    }
    if !level.is_empty() {
        bytes_field(3, level.as_bytes(), record);
    }
    let body = match (known[MESSAGE], known[BODY]) {
        (Some(m), _) => Some(m),
        (None, Some(b)) => Some(b),
        (None, None) if is_obj => None,
        (None, None) => Some(nodes),
    };
    if let Some(b) = body {
        let m = begin(5, record);
        any_value(b, record);
        end(m, record);
    }
    if let Some(a) = object(known[ATTRIBUTES]) {
        for (k, v) in entries(a) {
            key_value(6, k, v, record);
        }
    }
    for (k, v) in entries(nodes) {
        let i = event_key(k);
        if i.is_none() || (i == Some(ATTRIBUTES) && !is_object(v)) {
            key_value(6, k, v, record);
        }
    }
    let dropped = as_u64(known[DROPPED]).and_then(|d| u32::try_from(d).ok()).unwrap_or(0);
    if dropped != 0 {
        record.push(7 << 3);
        varint(u64::from(dropped), record);
    }
    let flags = as_u64(known[TRACE_FLAGS]).and_then(|d| u32::try_from(d).ok()).unwrap_or(0);
    if flags != 0 {
        record.push((8 << 3) | 5);
        record.extend_from_slice(&flags.to_le_bytes());
    }
    for (i, tag) in [(TRACE_ID, 9), (SPAN_ID, 10)] {
        hex.clear();
        if as_str(known[i]).is_some_and(|s| parse_hex_into(s, hex)) && !hex.is_empty() {
            bytes_field(tag, hex, record);
        }
    }
    let observed = time(known[OBSERVED]).unwrap_or(now);
    if observed != 0 {
        fixed64_field(11, observed, record);
    }
    if let Some(name) = as_str(known[EVENT_NAME]).filter(|n| !n.is_empty()) {
        bytes_field(12, name.as_bytes(), record);
    }

    scope.clear();
    if let Some(s) = object(known[SCOPE]) {
        let mut fields: [Option<&[Node<'_>]>; 3] = [None; 3];
        for (k, v) in entries(s) {
            if let Some(i) = ["name", "version", "attributes"].iter().position(|x| *x == k) {
                fields[i] = Some(v);
            }
        }
        for (i, tag) in [(0, 1), (1, 2)] {
            if let Some(text) = as_str(fields[i]).filter(|t| !t.is_empty()) {
                bytes_field(tag, text.as_bytes(), scope);
            }
        }
        if let Some(a) = object(fields[2]) {
            for (k, v) in entries(a) {
                key_value(3, k, v, scope);
            }
        }
    }

    resource.clear();
    if let Some(r) = object(known[RESOURCE]) {
        for (k, v) in entries(r) {
            key_value(1, k, v, resource);
        }
    }
    let mut attribute = String::new();
    for (member, i) in MEMBERS {
        let Some(m) = object(known[i]) else { continue };
        for (k, v) in entries(m) {
            if member == "kubernetes" && k == "labels" && is_object(v) {
                for (label, lv) in entries(v) {
                    attribute.clear();
                    attribute.push_str("k8s.pod.label.");
                    attribute.push_str(label);
                    key_value(1, &attribute, lv, resource);
                }
                continue;
            }
            match RESOURCE_KEYS.iter().find(|(_, m2, k2)| *m2 == member && *k2 == k) {
                Some((name, _, _)) => key_value(1, name, v, resource),
                None => {
                    attribute.clear();
                    attribute.push_str("sluice.");
                    attribute.push_str(member);
                    attribute.push('.');
                    attribute.push_str(k);
                    key_value(1, &attribute, v, resource);
                }
            }
        }
    }
    if let Some(h) = known[HOST] {
        key_value(1, "host.name", h, resource);
    }
}

/// A `KeyValue` as field `tag`: the key and the value's `AnyValue`.
fn key_value(tag: u32, key: &str, v: &[Node<'_>], out: &mut Vec<u8>) {
    let m = begin(tag, out);
    bytes_field(1, key.as_bytes(), out);
    let inner = begin(2, out);
    any_value(v, out);
    end(inner, out);
    end(m, out);
}

/// The contents of an `AnyValue` for the JSON value at `v[0]` (the
/// mapping of `logs::json_to_value`).
fn any_value(v: &[Node<'_>], out: &mut Vec<u8>) {
    match v.first() {
        None | Some(Node::Static(StaticNode::Null)) => {}
        Some(Node::String(s)) => bytes_field(1, s.as_bytes(), out),
        Some(Node::Static(StaticNode::Bool(b))) => {
            out.push(2 << 3);
            out.push(u8::from(*b));
        }
        Some(Node::Static(StaticNode::I64(i))) => {
            out.push(3 << 3);
            varint(*i as u64, out);
        }
        Some(Node::Static(StaticNode::U64(u))) => match i64::try_from(*u) {
            Ok(i) => {
                out.push(3 << 3);
                varint(i as u64, out);
            }
            Err(_) => fixed64_field(4, (*u as f64).to_bits(), out),
        },
        Some(Node::Static(StaticNode::F64(d))) => fixed64_field(4, d.to_bits(), out),
        Some(Node::Array { len, .. }) => {
            let m = begin(5, out);
            let mut idx = 1;
            for _ in 0..*len {
                let n = v.get(idx).map_or(1, count);
                let item = begin(1, out);
                any_value(v.get(idx..idx + n).unwrap_or_default(), out);
                end(item, out);
                idx += n;
            }
            end(m, out);
        }
        Some(Node::Object { .. }) => {
            let m = begin(6, out);
            for (k, value) in entries(v) {
                key_value(1, k, value, out);
            }
            end(m, out);
        }
    }
}

/// Appends `v` as a varint.
#[inline]
pub(crate) fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field: tag, length, bytes.
#[inline]
fn bytes_field(tag: u32, b: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | 2), out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

fn fixed64_field(tag: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | 1), out);
    out.extend_from_slice(&v.to_le_bytes());
}

/// Starts a nested message as field `tag`, with one byte reserved for
/// its length; returns where its contents start.
#[inline]
fn begin(tag: u32, out: &mut Vec<u8>) -> usize {
    varint(u64::from(tag << 3 | 2), out);
    out.push(0);
    out.len()
}

/// Ends the nested message whose contents start at `start`: writes its
/// length, moving the contents when it takes more than the one byte.
#[inline]
fn end(start: usize, out: &mut Vec<u8>) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    out.splice(start - 1..start, prefix[..=n].iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::{AnyValue, ExportLogsServiceRequest, Value};
    use prost::Message as _;

    fn request(events: &[&str]) -> ExportLogsServiceRequest {
        let mut e = LogsEncoder::default();
        for ev in events {
            e.push(ev.as_bytes(), 7);
        }
        assert_eq!(e.len(), events.len());
        ExportLogsServiceRequest::decode(e.take().as_slice()).unwrap()
    }

    #[test]
    fn varint_lengths_match_the_bytes_written() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            varint(v, &mut out);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn long_nested_messages_get_their_whole_length() {
        let long = "x".repeat(20_000);
        let req = request(&[&format!(
            r#"{{"message":"{long}","attributes":{{"a":["{long}",{{"b":"{long}"}}]}}}}"#
        )]);
        let r = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(r.body.as_ref().unwrap().value, Some(Value::String(long.clone())));
        assert_eq!(r.attributes[0].key, "a");
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_as_serde_json_does() {
        let req = request(&[r#"{"message":"a","x":1,"x":2,"attributes":{"k":1,"k":"two"}}"#]);
        let r = &req.resource_logs[0].scope_logs[0].log_records[0];
        let keys: Vec<&str> = r.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["k", "x"]);
        assert_eq!(
            r.attributes[0].value,
            Some(AnyValue {
                value: Some(Value::String("two".into()))
            })
        );
        assert_eq!(
            r.attributes[1].value,
            Some(AnyValue {
                value: Some(Value::Int(2))
            })
        );
    }

    #[test]
    fn integers_over_64_bits_and_text_that_is_not_json_still_go_out() {
        let req = request(&[r#"{"n":123456789012345678901234567890}"#, "not json \u{1}"]);
        let records = &req.resource_logs[0].scope_logs[0].log_records;
        assert!(matches!(records[0].attributes[0].value.as_ref().unwrap().value, Some(Value::Double(d)) if d > 1e29));
        assert_eq!(
            records[1].body.as_ref().unwrap().value,
            Some(Value::String("not json \u{1}".into()))
        );
        assert_eq!(records[1].observed_time_unix_nano, 7);
    }

    #[test]
    fn event_key_numbers_the_record_keys_then_the_group_keys() {
        let all: Vec<&str> = crate::otlp::wire::RECORD_KEYS.iter().chain(GROUP_KEYS.iter()).copied().collect();
        for (i, k) in all.iter().enumerate() {
            assert_eq!(event_key(k), Some(i), "{k}");
        }
        assert_eq!(event_key("timestamps"), None);
        assert_eq!(MEMBERS.map(|(k, i)| (event_key(k), i)), MEMBERS.map(|(_, i)| (Some(i), i)));
    }
}
