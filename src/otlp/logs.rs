//! OTLP log records and sluice events, both ways, by one table
//! (docs/otlp.md). A record becomes one JSON object:
//!
//! - `timestamp` and `observed_timestamp` (RFC 3339, nanoseconds kept);
//! - `level` (the severity text, or the severity number's short name when
//!   the text is empty) and `severity_number`;
//! - `message` when the body is a string, else `body` (structured);
//! - `event_name`, `trace_id` and `span_id` (hex), `trace_flags`;
//! - `attributes` (an object), `scope` (`name`, `version`, `attributes`);
//! - the resource: the attributes sluice has metadata for go to
//!   `release`, `process`, `host` and `kubernetes` (see [`RESOURCE_KEYS`]),
//!   the rest to `resource`.
//!
//! The sink reads the same shape back; other top-level fields of an event
//! become attributes, so any sluice event can leave as an OTLP log.
//!
//! The requests the source serves and the sink sends are read and written
//! on the wire (`super::wire`, `super::encode`); what is here works on
//! prost's messages: resources and scopes (once per group, not per
//! record), OTLP/JSON, metrics, and the oracle the wire code is checked
//! against.

use base64::Engine as _;
use serde_json::{Map, Value as Json};

#[cfg(any(test, feature = "fuzzing"))]
use super::proto::ExportLogsServiceRequest;
use super::proto::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, Resource, Value};
#[cfg(test)]
use super::proto::{LogRecord, ResourceLogs, ScopeLogs};
use crate::json_text::escape_json_str;

/// Resource attributes that are sluice metadata: (attribute, member, key).
/// A `k8s.pod.label.<name>` attribute is `kubernetes.labels.<name>`, and an
/// attribute `sluice.<member>.<key>` is any other key of those members.
pub(crate) const RESOURCE_KEYS: &[(&str, &str, &str)] = &[
    ("service.version", "release", "version"),
    ("vcs.ref.head.revision", "release", "commit"),
    ("service.name", "process", "service"),
    ("process.pid", "process", "pid"),
    ("process.command_line", "process", "command"),
    ("sluice.process.type", "process", "type"),
    ("k8s.namespace.name", "kubernetes", "namespace"),
    ("k8s.pod.name", "kubernetes", "pod"),
    ("k8s.pod.uid", "kubernetes", "pod_uid"),
    ("k8s.container.name", "kubernetes", "container"),
    ("k8s.node.name", "kubernetes", "node"),
];

/// The metadata members resource attributes map onto (`host` is a string).
const MEMBERS: [&str; 3] = ["release", "process", "kubernetes"];
const POD_LABEL: &str = "k8s.pod.label.";
const HOST_NAME: &str = "host.name";

/// Writes every log record of `request` as one NDJSON line into `out`
/// (by its wire bytes, as the source reads a request). Returns how many
/// records it wrote.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn write_events(request: &ExportLogsServiceRequest, out: &mut Vec<u8>) -> usize {
    use prost::Message as _;
    super::wire::render_logs(&request.encode_to_vec(), &crate::enrich::Fragment::default(), out).unwrap_or(0)
}

/// How many log records `request` holds.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn record_count(request: &ExportLogsServiceRequest) -> usize {
    request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len())
        .sum()
}

fn is_empty_scope(s: &InstrumentationScope) -> bool {
    s.name.is_empty() && s.version.is_empty() && s.attributes.is_empty()
}

/// `,"scope":{…}` for a scope that is not empty, into `out` (cleared
/// first): what every event of the scope carries.
pub(crate) fn scope_member(scope: Option<&InstrumentationScope>, out: &mut Vec<u8>) {
    out.clear();
    if let Some(scope) = scope.filter(|s| !is_empty_scope(s)) {
        out.extend_from_slice(b",\"scope\":");
        write_scope(scope, out);
    }
}

fn write_scope(s: &InstrumentationScope, out: &mut Vec<u8>) {
    let mut o = Map::new();
    if !s.name.is_empty() {
        o.insert("name".into(), Json::from(s.name.as_str()));
    }
    if !s.version.is_empty() {
        o.insert("version".into(), Json::from(s.version.as_str()));
    }
    if !s.attributes.is_empty() {
        o.insert("attributes".into(), kvs_to_json(&s.attributes));
    }
    write_json(&Json::Object(o), out);
}

/// The members a resource adds to each of its events.
#[derive(Debug, Default)]
pub(crate) struct ResourceMembers {
    /// Each member preceded by a comma: rendered once per resource.
    pub(crate) rendered: Vec<u8>,
    /// The top-level keys among them (`release`, `host`, `resource`, …).
    pub(crate) keys: Vec<&'static str>,
}

/// The members a resource adds to each of its events.
pub(crate) fn resource_members(resource: Option<&Resource>) -> ResourceMembers {
    let mut done = ResourceMembers::default();
    let Some(resource) = resource else { return done };
    let out = &mut done.rendered;
    let mut members: [Map<String, Json>; 3] = Default::default();
    let mut labels = Map::new();
    let mut host = None;
    let mut rest = Map::new();
    for kv in &resource.attributes {
        let value = any_to_json(kv.value.as_ref());
        if let Some((_, member, key)) = RESOURCE_KEYS.iter().find(|(a, _, _)| *a == kv.key) {
            let m = MEMBERS.iter().position(|x| x == member).unwrap_or(0);
            members[m].insert((*key).into(), value);
        } else if let Some(label) = kv.key.strip_prefix(POD_LABEL) {
            labels.insert(label.into(), value);
        } else if kv.key == HOST_NAME && value.is_string() {
            host = Some(value);
        } else if let Some((member, key)) = sluice_key(&kv.key) {
            let m = MEMBERS.iter().position(|x| *x == member).unwrap_or(0);
            members[m].insert(key.into(), value);
        } else {
            rest.insert(kv.key.clone(), value);
        }
    }
    if !labels.is_empty() {
        members[2].insert("labels".into(), Json::Object(labels));
    }
    if !rest.is_empty() {
        out.extend_from_slice(b",\"resource\":");
        write_json(&Json::Object(rest), out);
        done.keys.push("resource");
    }
    for (name, m) in MEMBERS.iter().zip(members) {
        if !m.is_empty() {
            out.push(b',');
            write_str(name, out);
            out.push(b':');
            write_json(&Json::Object(m), out);
            done.keys.push(name);
        }
    }
    if let Some(h) = host {
        out.extend_from_slice(b",\"host\":");
        write_json(&h, out);
        done.keys.push("host");
    }
    done
}

/// `sluice.<member>.<key>` for a metadata member without its own
/// semantic-convention attribute.
fn sluice_key(attribute: &str) -> Option<(&str, &str)> {
    let rest = attribute.strip_prefix("sluice.")?;
    let (member, key) = rest.split_once('.')?;
    MEMBERS.contains(&member).then_some((member, key))
}

/// The OTLP short name of a severity number (1–24), or `None`.
pub(crate) fn severity_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => return None,
    })
}

/// The severity number of a level name (`warn`, `WARNING`, `Error`, …), or 0.
pub(crate) fn severity_number(level: &str) -> i32 {
    match level.to_ascii_lowercase().as_str() {
        "trace" => 1,
        "debug" => 5,
        "info" | "information" | "notice" => 9,
        "warn" | "warning" => 13,
        "error" | "err" => 17,
        "fatal" | "critical" | "crit" | "emergency" | "emerg" | "alert" | "panic" => 21,
        _ => 0,
    }
}

pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    escape_json_str(s, out);
    out.push(b'"');
}

fn write_json(v: &Json, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail, and a Value always serialises.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// An attribute list as a JSON object (a repeated key keeps its last value).
pub(crate) fn kvs_to_json(kvs: &[KeyValue]) -> Json {
    Json::Object(kvs.iter().map(|kv| (kv.key.clone(), any_to_json(kv.value.as_ref()))).collect())
}

fn any_to_json(v: Option<&AnyValue>) -> Json {
    v.and_then(|v| v.value.as_ref()).map_or(Json::Null, value_to_json)
}

/// An OTLP value as JSON: integers stay integers and doubles keep a
/// fraction or exponent (so they come back as doubles); bytes become
/// base64 text and a non-finite double its name, the two lossy cases.
pub(crate) fn value_to_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::from(s.as_str()),
        Value::Bool(b) => Json::from(*b),
        Value::Int(i) => Json::from(*i),
        Value::Double(d) => serde_json::Number::from_f64(*d).map_or_else(|| Json::from(d.to_string()), Json::Number),
        Value::Array(a) => Json::Array(a.values.iter().map(|v| any_to_json(Some(v))).collect()),
        Value::KvList(l) => kvs_to_json(&l.values),
        Value::Bytes(b) => Json::from(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// JSON as an OTLP value: the inverse of [`value_to_json`].
pub(crate) fn json_to_value(j: &Json) -> AnyValue {
    let value = match j {
        Json::Null => None,
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::Number(n) => Some(match n.as_i64() {
            Some(i) if !n.is_f64() => Value::Int(i),
            _ => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Json::String(s) => Some(Value::String(s.clone())),
        Json::Array(a) => Some(Value::Array(ArrayValue {
            values: a.iter().map(json_to_value).collect(),
        })),
        Json::Object(o) => Some(Value::KvList(KeyValueList { values: json_to_kvs(o) })),
    };
    AnyValue { value }
}

fn json_to_kvs(o: &Map<String, Json>) -> Vec<KeyValue> {
    o.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(json_to_value(v)),
        })
        .collect()
}

/// Groups sluice events into one export request (the `otlp` sink's
/// [`super::encode::LogsEncoder`], read back with prost): one
/// `ResourceLogs` per distinct resource, one `ScopeLogs` per scope within
/// it, records in event order. `now` stands in for a missing observed time.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Default)]
pub(crate) struct RequestBuilder {
    encoder: super::encode::LogsEncoder,
}

#[cfg(any(test, feature = "fuzzing"))]
impl RequestBuilder {
    /// Adds one event (a JSON object). An event that is not an object
    /// goes out as a record whose body is the value.
    pub(crate) fn push(&mut self, event: &Json, now: u64) {
        let text = serde_json::to_vec(event).unwrap_or_default();
        self.encoder.push(&text, now);
    }

    /// Records added so far.
    pub(crate) fn len(&self) -> usize {
        self.encoder.len()
    }

    /// The request, leaving the builder empty.
    pub(crate) fn take(&mut self) -> ExportLogsServiceRequest {
        use prost::Message as _;
        ExportLogsServiceRequest::decode(self.encoder.take().as_slice()).unwrap_or_default()
    }
}

/// The event members a resource is made of.
pub(crate) const RESOURCE_MEMBERS: [&str; 5] = ["resource", "release", "process", "kubernetes", "host"];

/// The text of the members an event's resource is made of: events with the
/// same key share a resource.
pub(crate) fn resource_key(o: &Map<String, Json>) -> String {
    let mut key = Vec::new();
    for member in RESOURCE_MEMBERS {
        if let Some(v) = o.get(member) {
            key.extend_from_slice(member.as_bytes());
            write_json(v, &mut key);
        }
    }
    String::from_utf8(key).unwrap_or_default()
}

/// The scope of an event (its `scope` member), empty when it has none.
pub(crate) fn event_scope(o: &Map<String, Json>) -> InstrumentationScope {
    match o.get("scope") {
        Some(Json::Object(s)) => InstrumentationScope {
            name: s.get("name").and_then(Json::as_str).unwrap_or_default().to_owned(),
            version: s.get("version").and_then(Json::as_str).unwrap_or_default().to_owned(),
            attributes: match s.get("attributes") {
                Some(Json::Object(a)) => json_to_kvs(a),
                _ => Vec::new(),
            },
            dropped_attributes_count: 0,
        },
        _ => InstrumentationScope::default(),
    }
}

/// The resource of an event: its metadata members and `resource`.
pub(crate) fn event_resource(o: &Map<String, Json>) -> Resource {
    let mut attributes = Vec::new();
    let mut push = |key: String, v: &Json| {
        attributes.push(KeyValue {
            key,
            value: Some(json_to_value(v)),
        })
    };
    if let Some(Json::Object(rest)) = o.get("resource") {
        for (k, v) in rest {
            push(k.clone(), v);
        }
    }
    for member in MEMBERS {
        let Some(Json::Object(m)) = o.get(member) else { continue };
        for (k, v) in m {
            if member == "kubernetes" && k == "labels" {
                if let Json::Object(labels) = v {
                    for (l, lv) in labels {
                        push(format!("{POD_LABEL}{l}"), lv);
                    }
                    continue;
                }
            }
            match RESOURCE_KEYS.iter().find(|(_, m2, k2)| *m2 == member && k2 == k) {
                Some((attribute, _, _)) => push((*attribute).to_owned(), v),
                None => push(format!("sluice.{member}.{k}"), v),
            }
        }
    }
    if let Some(h) = o.get("host") {
        push(HOST_NAME.to_owned(), h);
    }
    Resource {
        attributes,
        dropped_attributes_count: 0,
    }
}

/// An RFC 3339 time as nanoseconds since the epoch (`None` before it).
pub(crate) fn parse_time_str(s: &str) -> Option<u64> {
    let t: jiff::Timestamp = s.parse().ok()?;
    u64::try_from(t.as_nanosecond()).ok()
}

/// Hex digits as bytes; `None` for an odd length or a non-hex digit.
pub(crate) fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 2);
    parse_hex_into(s, &mut out).then_some(out)
}

/// Appends hex digits as bytes to `out`; false (with `out` partly
/// written) for an odd length or a non-hex digit.
pub(crate) fn parse_hex_into(s: &str, out: &mut Vec<u8>) -> bool {
    if s.len() % 2 != 0 {
        return false;
    }
    for pair in s.as_bytes().chunks_exact(2) {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => return false,
        }
    }
    true
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The mapping of records to events over prost's owned messages: the
/// oracle that [`super::wire::render_logs`] is checked against (unit
/// tests and the `otlp` fuzz target). Not used to serve requests.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod reference {
    use std::fmt::Write as _;

    use super::{resource_members, scope_member, severity_name, value_to_json, write_json, write_str};
    use crate::otlp::proto::{AnyValue, ExportLogsServiceRequest, KeyValue, LogRecord, Value};
    use crate::otlp::wire::write_hex;

    /// Writes every log record of `request` as one NDJSON line into `out`.
    /// Returns how many records it wrote.
    pub(crate) fn write_events(request: &ExportLogsServiceRequest, out: &mut Vec<u8>) -> usize {
        let mut written = 0;
        let mut scope_part = Vec::new();
        for rl in &request.resource_logs {
            let resource_part = resource_members(rl.resource.as_ref()).rendered;
            for sl in &rl.scope_logs {
                scope_member(sl.scope.as_ref(), &mut scope_part);
                for record in &sl.log_records {
                    let mut empty = !write_record(record, out);
                    for part in [&scope_part[..], &resource_part[..]] {
                        if let Some(rest) = part.strip_prefix(b",") {
                            out.extend_from_slice(if empty { rest } else { part });
                            empty = false;
                        }
                    }
                    out.extend_from_slice(b"}\n");
                    written += 1;
                }
            }
        }
        written
    }

    /// The record's own members, from `{` up to (not including) the closing
    /// `}`. Returns whether it wrote any.
    fn write_record(r: &LogRecord, out: &mut Vec<u8>) -> bool {
        out.push(b'{');
        let mut comma = false;
        let mut key = |out: &mut Vec<u8>, k: &str| {
            if comma {
                out.push(b',');
            }
            comma = true;
            write_str(k, out);
            out.push(b':');
        };
        if r.time_unix_nano != 0 {
            key(out, "timestamp");
            write_time(r.time_unix_nano, out);
        }
        if r.observed_time_unix_nano != 0 {
            key(out, "observed_timestamp");
            write_time(r.observed_time_unix_nano, out);
        }
        if !r.severity_text.is_empty() {
            key(out, "level");
            write_str(&r.severity_text, out);
        } else if let Some(name) = severity_name(r.severity_number) {
            key(out, "level");
            write_str(name, out);
        }
        if r.severity_number != 0 {
            key(out, "severity_number");
            out.extend_from_slice(itoa::Buffer::new().format(r.severity_number).as_bytes());
        }
        match r.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Value::String(s)) => {
                key(out, "message");
                write_str(s, out);
            }
            Some(v) => {
                key(out, "body");
                write_value(v, out);
            }
            None => {}
        }
        if !r.event_name.is_empty() {
            key(out, "event_name");
            write_str(&r.event_name, out);
        }
        if !r.trace_id.is_empty() {
            key(out, "trace_id");
            write_hex(&r.trace_id, out);
        }
        if !r.span_id.is_empty() {
            key(out, "span_id");
            write_hex(&r.span_id, out);
        }
        if r.flags != 0 {
            key(out, "trace_flags");
            out.extend_from_slice(itoa::Buffer::new().format(r.flags).as_bytes());
        }
        if !r.attributes.is_empty() {
            key(out, "attributes");
            write_object(&r.attributes, out);
        }
        if r.dropped_attributes_count != 0 {
            key(out, "dropped_attributes_count");
            out.extend_from_slice(itoa::Buffer::new().format(r.dropped_attributes_count).as_bytes());
        }
        comma
    }

    fn write_time(nanos: u64, out: &mut Vec<u8>) {
        match jiff::Timestamp::from_nanosecond(i128::from(nanos)) {
            Ok(t) => {
                let mut s = String::new();
                let _ = write!(s, "{t}");
                write_str(&s, out);
            }
            Err(_) => out.extend_from_slice(itoa::Buffer::new().format(nanos).as_bytes()),
        }
    }

    /// Writes a value as [`value_to_json`] maps it, without building it first.
    fn write_value(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::String(s) => write_str(s, out),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Value::Double(d) if d.is_finite() => {
                let mut b = ryu::Buffer::new();
                out.extend_from_slice(b.format_finite(*d).as_bytes());
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, v) in a.values.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_any(Some(v), out);
                }
                out.push(b']');
            }
            Value::KvList(l) => write_object(&l.values, out),
            Value::Double(_) | Value::Bytes(_) => write_json(&value_to_json(v), out),
        }
    }

    fn write_any(v: Option<&AnyValue>, out: &mut Vec<u8>) {
        match v.and_then(|v| v.value.as_ref()) {
            Some(v) => write_value(v, out),
            None => out.extend_from_slice(b"null"),
        }
    }

    /// Writes an attribute list as a JSON object (a repeated key is written
    /// twice; readers keep the last, as [`kvs_to_json`] does).
    fn write_object(kvs: &[KeyValue], out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, kv) in kvs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&kv.key, out);
            out.push(b':');
            write_any(kv.value.as_ref(), out);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    fn sample() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", Value::String("checkout".into())),
                        kv("service.version", Value::String("1.4.2".into())),
                        kv("process.pid", Value::Int(4242)),
                        kv("k8s.namespace.name", Value::String("shop".into())),
                        kv("k8s.pod.label.app", Value::String("web".into())),
                        kv("host.name", Value::String("node-1".into())),
                        kv("cloud.region", Value::String("eu-west-1".into())),
                    ],
                    dropped_attributes_count: 0,
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app.orders".into(),
                        version: "2".into(),
                        ..Default::default()
                    }),
                    log_records: vec![
                        LogRecord {
                            time_unix_nano: 1_780_000_000_123_456_789,
                            observed_time_unix_nano: 1_780_000_000_223_456_789,
                            severity_number: 17,
                            severity_text: "ERROR".into(),
                            body: Some(AnyValue {
                                value: Some(Value::String("payment \"declined\"".into())),
                            }),
                            attributes: vec![
                                kv("order.id", Value::Int(77)),
                                kv("ratio", Value::Double(1.0)),
                                kv("ok", Value::Bool(false)),
                                kv(
                                    "tags",
                                    Value::Array(ArrayValue {
                                        values: vec![AnyValue {
                                            value: Some(Value::String("a".into())),
                                        }],
                                    }),
                                ),
                            ],
                            flags: 1,
                            trace_id: vec![0xab; 16],
                            span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
                            ..Default::default()
                        },
                        LogRecord {
                            severity_number: 9,
                            body: Some(AnyValue {
                                value: Some(Value::KvList(KeyValueList {
                                    values: vec![kv("k", Value::String("v".into()))],
                                })),
                            }),
                            observed_time_unix_nano: 5,
                            ..Default::default()
                        },
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn events(req: &ExportLogsServiceRequest) -> Vec<Json> {
        let mut out = Vec::new();
        assert_eq!(write_events(req, &mut out), record_count(req));
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn a_record_maps_onto_the_documented_event_shape() {
        let got = events(&sample());
        assert_eq!(got.len(), 2);
        let e = &got[0];
        assert_eq!(e["timestamp"], "2026-05-28T20:26:40.123456789Z");
        assert_eq!(e["level"], "ERROR");
        assert_eq!(e["severity_number"], 17);
        assert_eq!(e["message"], "payment \"declined\"");
        assert_eq!(e["trace_id"], "abababababababababababababababab");
        assert_eq!(e["span_id"], "0102030405060708");
        assert_eq!(e["trace_flags"], 1);
        assert_eq!(e["attributes"]["order.id"], 77);
        assert_eq!(e["attributes"]["ratio"].as_f64(), Some(1.0));
        assert!(e["attributes"]["ratio"].is_f64());
        assert_eq!(e["scope"], serde_json::json!({"name": "app.orders", "version": "2"}));
        assert_eq!(e["release"], serde_json::json!({"version": "1.4.2"}));
        assert_eq!(e["process"], serde_json::json!({"service": "checkout", "pid": 4242}));
        assert_eq!(e["kubernetes"], serde_json::json!({"namespace": "shop", "labels": {"app": "web"}}));
        assert_eq!(e["host"], "node-1");
        assert_eq!(e["resource"], serde_json::json!({"cloud.region": "eu-west-1"}));
        // Severity text missing: the number's name; a structured body.
        assert_eq!(got[1]["level"], "INFO");
        assert_eq!(got[1]["body"], serde_json::json!({"k": "v"}));
        assert!(got[1].get("timestamp").is_none());
    }

    #[test]
    fn events_made_from_records_go_back_to_the_same_records() {
        let req = sample();
        let mut b = RequestBuilder::default();
        for e in events(&req) {
            b.push(&e, 999);
        }
        assert_eq!(b.len(), 2);
        let mut back = b.take();
        // The one lossy field: an empty severity text comes back as the
        // number's name.
        back.resource_logs[0].scope_logs[0].log_records[1].severity_text.clear();
        let norm = |r: &ExportLogsServiceRequest| {
            let mut r = r.clone();
            for rl in &mut r.resource_logs {
                if let Some(res) = &mut rl.resource {
                    res.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            r
        };
        assert_eq!(norm(&back), norm(&req));
    }

    #[test]
    fn plain_events_group_by_resource_and_keep_their_fields_as_attributes() {
        let mut b = RequestBuilder::default();
        for line in [
            r#"{"msg":"a","level":"warn","status":500,"release":{"version":"1"}}"#,
            r#"{"msg":"b","release":{"version":"2"}}"#,
            r#"{"msg":"c","release":{"version":"1"}}"#,
        ] {
            b.push(&serde_json::from_str(line).unwrap(), 7);
        }
        let req = b.take();
        assert_eq!(req.resource_logs.len(), 2);
        let first = &req.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].severity_number, 13);
        assert_eq!(first[0].observed_time_unix_nano, 7);
        assert!(first[0].attributes.iter().any(|kv| kv.key == "status"));
        assert_eq!(
            req.resource_logs[1].resource.as_ref().unwrap().attributes[0],
            kv("service.version", Value::String("2".into()))
        );
    }

    #[test]
    fn a_record_with_no_fields_of_its_own_is_still_a_json_object() {
        let mut req = sample();
        req.resource_logs[0].scope_logs[0].log_records = vec![LogRecord::default()];
        let got = events(&req);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["scope"]["name"], "app.orders");
        assert_eq!(got[0]["host"], "node-1");
    }
}
