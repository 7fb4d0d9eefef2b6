//! Protobuf's wire format, read in place and written directly: the hot
//! paths of the `otlp` source and sink.
//!
//! Reading: [`render_logs`] turns an `ExportLogsServiceRequest` (the same
//! message as `LogsData`) into event JSON straight from the request's
//! bytes, with no owned messages (prost's `decode` makes a `String` of
//! every key and value and a `Vec` of every attribute list). It accepts
//! and refuses what prost's decoding of the messages in [`super::proto`]
//! does, and its events are the ones [`super::logs`] documents; the `otlp`
//! fuzz target checks both against prost. Unknown fields are skipped
//! (groups too); a known field with the wrong wire type, a length past
//! the end of its message, a varint over 64 bits, a string that is not
//! UTF-8, or messages nested deeper than prost's limit of 100 is an error.
//! Where protobuf merges a singular message field that appears twice (two
//! `body` fields, an `AnyValue` with two values), the request is read
//! again from prost's own canonical encoding: rare, and then slow.
//!
//! Writing: [`Writer`] appends fields to a `Vec<u8>`; a nested message is
//! written after a reserved length, which is filled in (and the message
//! moved, when its length needs more than the reserved byte) once it ends.

use base64::Engine as _;
use prost::Message as _;

use super::logs::{resource_members, scope_member, severity_name, ResourceMembers};
use super::proto;
use crate::enrich::{Fragment, Member};
use crate::json_text::escape_json_str;

/// prost's recursion limit: how deep messages may nest below the request.
const RECURSION_LIMIT: u32 = 100;

/// Why a request is not a valid OTLP logs request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum WireError {
    /// A field or length runs past the end of its message.
    #[error("truncated input in {0}")]
    Truncated(&'static str),
    /// A varint longer than 10 bytes or over 64 bits.
    #[error("a varint over 64 bits in {0}")]
    Varint(&'static str),
    /// A field key with field number 0, wire type 6 or 7, or over 32 bits.
    #[error("an invalid field key in {0}")]
    Key(&'static str),
    /// A known field with another wire type than its type's.
    #[error("{0}.{1} has the wrong wire type")]
    WireType(&'static str, &'static str),
    /// A string field that is not UTF-8.
    #[error("{0}.{1} is not UTF-8")]
    NotUtf8(&'static str, &'static str),
    /// Messages nested deeper than prost's recursion limit.
    #[error("messages nested more than {RECURSION_LIMIT} deep")]
    TooDeep,
    /// A group's end without its start, or with another field number.
    #[error("a group end tag without its start in {0}")]
    Group(&'static str),
    /// What prost said of a request the reader handed to it.
    #[error("{0}")]
    Prost(String),
    /// A singular message field (or a value of a oneof) appears twice:
    /// protobuf merges them. Never shown: the request is read again from
    /// prost's canonical encoding.
    #[error("{0}.{1} appears twice")]
    Repeated(&'static str, &'static str),
}

/// One field's value, as the wire has it.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
    /// A group, skipped (no OTLP field is one).
    Group,
}

/// The fields of one message, in wire order.
///
/// `depth` is prost's recursion budget left for the message's contents:
/// a nested message, or an unknown field to skip, needs it above 0.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
    depth: u32,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], message: &'static str, depth: u32) -> Fields<'a> {
        Fields {
            buf,
            pos: 0,
            message,
            depth,
        }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError::Truncated(self.message));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The tenth byte holds the 64th bit only.
                if i == 9 && b >= 2 {
                    break;
                }
                return Ok(value);
            }
        }
        Err(WireError::Varint(self.message))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], WireError> {
        let rest = self.buf.len() - self.pos;
        if n > rest as u64 {
            return Err(WireError::Truncated(self.message));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// The next field and its value, or `None` at the end of the message.
    #[inline]
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let (tag, wire_type) = self.key()?;
        let value = match wire_type {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default())),
            2 => {
                let n = self.varint()?;
                Wire::Len(self.take(n)?)
            }
            3 => {
                self.skip_group(tag, self.depth)?;
                Wire::Group
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default())),
            _ => return Err(WireError::Group(self.message)),
        };
        Ok(Some((tag, value)))
    }

    fn key(&mut self) -> Result<(u32, u64), WireError> {
        let key = self.varint()?;
        let wire_type = key & 7;
        if key > u64::from(u32::MAX) || wire_type > 5 || key >> 3 == 0 {
            return Err(WireError::Key(self.message));
        }
        Ok(((key >> 3) as u32, wire_type))
    }

    /// Skips a group up to its end tag, as prost does (each level of
    /// nesting spends one of the recursion budget).
    fn skip_group(&mut self, tag: u32, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(WireError::TooDeep);
        }
        loop {
            let (inner, wire_type) = self.key()?;
            match wire_type {
                4 if inner == tag => return Ok(()),
                4 => return Err(WireError::Group(self.message)),
                3 => self.skip_group(inner, depth - 1)?,
                _ if depth - 1 == 0 => return Err(WireError::TooDeep),
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let n = self.varint()?;
                    self.take(n)?;
                }
                _ => {
                    self.take(4)?;
                }
            }
        }
    }

    /// An unknown field, skipped: prost needs recursion budget for it.
    fn unknown(&self) -> Result<(), WireError> {
        if self.depth == 0 {
            return Err(WireError::TooDeep);
        }
        Ok(())
    }

    /// The recursion budget of a nested message's contents.
    fn nested(&self) -> Result<u32, WireError> {
        self.depth.checked_sub(1).ok_or(WireError::TooDeep)
    }

    fn wrong(&self, field: &'static str) -> WireError {
        WireError::WireType(self.message, field)
    }

    fn utf8(&self, b: &'a [u8], field: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(b).map_err(|_| WireError::NotUtf8(self.message, field))
    }
}

/// An `AnyValue`, located (its nested messages not read yet).
#[derive(Debug, Clone, Copy)]
enum AnyRef<'a> {
    /// No value set.
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// An `ArrayValue`'s bytes and the recursion budget of its contents.
    Array(&'a [u8], u32),
    /// A `KeyValueList`'s bytes and the recursion budget of its contents.
    KvList(&'a [u8], u32),
    Bytes(&'a [u8]),
}

/// Reads an `AnyValue` whose contents have `depth` of recursion budget.
fn any_value(b: &[u8], depth: u32) -> Result<AnyRef<'_>, WireError> {
    let mut f = Fields::new(b, "AnyValue", depth);
    let mut value = AnyRef::Empty;
    while let Some((tag, w)) = f.next()? {
        let v = match (tag, w) {
            (1, Wire::Len(s)) => AnyRef::Str(f.utf8(s, "string_value")?),
            (2, Wire::Varint(v)) => AnyRef::Bool(v != 0),
            (3, Wire::Varint(v)) => AnyRef::Int(v as i64),
            (4, Wire::Fixed64(v)) => AnyRef::Double(f64::from_bits(v)),
            (5, Wire::Len(s)) => AnyRef::Array(s, f.nested()?),
            (6, Wire::Len(s)) => AnyRef::KvList(s, f.nested()?),
            (7, Wire::Len(s)) => AnyRef::Bytes(s),
            (1..=7, _) => return Err(f.wrong("value")),
            _ => {
                f.unknown()?;
                continue;
            }
        };
        if !matches!(value, AnyRef::Empty) {
            return Err(WireError::Repeated("AnyValue", "value"));
        }
        value = v;
    }
    Ok(value)
}

/// Writes an `AnyValue` as JSON (the mapping of `logs::value_to_json`).
fn write_any(v: AnyRef<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    match v {
        AnyRef::Empty => out.extend_from_slice(b"null"),
        AnyRef::Str(s) => write_str(s, out),
        AnyRef::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        AnyRef::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        AnyRef::Double(d) => write_double(d, out),
        AnyRef::Bytes(b) => {
            out.push(b'"');
            let mut s = String::new();
            base64::engine::general_purpose::STANDARD.encode_string(b, &mut s);
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        AnyRef::Array(b, depth) => {
            out.push(b'[');
            let mut f = Fields::new(b, "ArrayValue", depth);
            let mut first = true;
            while let Some((tag, w)) = f.next()? {
                match (tag, w) {
                    (1, Wire::Len(v)) => {
                        let inner = f.nested()?;
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        write_any(any_value(v, inner)?, out)?;
                    }
                    (1, _) => return Err(f.wrong("values")),
                    _ => f.unknown()?,
                }
            }
            out.push(b']');
        }
        AnyRef::KvList(b, depth) => write_object(b, "KeyValueList", 1, depth, out)?,
    }
    Ok(())
}

/// A double as `logs::value_to_json` writes it: finite ones keep a
/// fraction or an exponent, the others are their names as strings.
fn write_double(d: f64, out: &mut Vec<u8>) {
    if d.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(d).as_bytes());
    } else if d.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if d > 0.0 {
        out.extend_from_slice(b"\"inf\"");
    } else {
        out.extend_from_slice(b"\"-inf\"");
    }
}

/// Writes the `KeyValue`s of field `tag` of a message as one JSON object
/// (a repeated key is written twice, as `logs::write_events` does).
fn write_object(b: &[u8], message: &'static str, tag: u32, depth: u32, out: &mut Vec<u8>) -> Result<(), WireError> {
    out.push(b'{');
    let mut f = Fields::new(b, message, depth);
    let mut first = true;
    while let Some((t, w)) = f.next()? {
        match (t, w) {
            (t, Wire::Len(kv)) if t == tag => {
                let inner = f.nested()?;
                if !first {
                    out.push(b',');
                }
                first = false;
                write_key_value(kv, inner, out)?;
            }
            (t, _) if t == tag => return Err(f.wrong("attributes")),
            _ => f.unknown()?,
        }
    }
    out.push(b'}');
    Ok(())
}

/// `"key":value` of one `KeyValue`.
fn write_key_value(b: &[u8], depth: u32, out: &mut Vec<u8>) -> Result<(), WireError> {
    let mut f = Fields::new(b, "KeyValue", depth);
    let mut key = "";
    let mut value: Option<(&[u8], u32)> = None;
    while let Some((tag, w)) = f.next()? {
        match (tag, w) {
            (1, Wire::Len(s)) => key = f.utf8(s, "key")?,
            (2, Wire::Len(v)) => {
                if value.replace((v, f.nested()?)).is_some() {
                    return Err(WireError::Repeated("KeyValue", "value"));
                }
            }
            (1, _) => return Err(f.wrong("key")),
            (2, _) => return Err(f.wrong("value")),
            _ => f.unknown()?,
        }
    }
    write_str(key, out);
    out.push(b':');
    match value {
        Some((v, depth)) => write_any(any_value(v, depth)?, out),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    escape_json_str(s, out);
    out.push(b'"');
}

/// Bytes as a quoted string of lowercase hex digits.
pub(crate) fn write_hex(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out.push(b'"');
}

/// Nanoseconds since the epoch as a quoted RFC 3339 time in UTC, with as
/// many fraction digits as it needs (none for a whole second): what
/// `jiff::Timestamp`'s `Display` writes, without its allocation.
pub(crate) fn write_time(nanos: u64, out: &mut Vec<u8>) {
    let secs = nanos / 1_000_000_000;
    let frac = (nanos % 1_000_000_000) as u32;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut b = [0u8; 32];
    let two = |b: &mut [u8], v: u64| {
        b[0] = b'0' + (v / 10) as u8;
        b[1] = b'0' + (v % 10) as u8;
    };
    b[0] = b'"';
    let y = year as u64;
    b[1] = b'0' + (y / 1000 % 10) as u8;
    b[2] = b'0' + (y / 100 % 10) as u8;
    two(&mut b[3..], y % 100);
    b[5] = b'-';
    two(&mut b[6..], month as u64);
    b[8] = b'-';
    two(&mut b[9..], day as u64);
    b[11] = b'T';
    two(&mut b[12..], rem / 3600);
    b[14] = b':';
    two(&mut b[15..], rem / 60 % 60);
    b[17] = b':';
    two(&mut b[18..], rem % 60);
    let mut n = 20;
    if frac != 0 {
        b[n] = b'.';
        let mut digits = 9;
        let mut f = frac;
        while f % 10 == 0 {
            f /= 10;
            digits -= 1;
        }
        for i in (0..digits).rev() {
            b[n + 1 + i] = b'0' + (f % 10) as u8;
            f /= 10;
        }
        n += 1 + digits;
    }
    b[n] = b'Z';
    b[n + 1] = b'"';
    out.extend_from_slice(&b[..n + 2]);
}

/// The top-level keys a log record's own members may have, in the order
/// they are written; bit `i` of a record's key mask is `RECORD_KEYS[i]`.
pub(crate) const RECORD_KEYS: [&str; 12] = [
    "timestamp",
    "observed_timestamp",
    "level",
    "severity_number",
    "message",
    "body",
    "event_name",
    "trace_id",
    "span_id",
    "trace_flags",
    "attributes",
    "dropped_attributes_count",
];

/// Writes `"key":` (after a comma unless it is the first) and marks the
/// key in `mask`.
#[inline]
fn member(out: &mut Vec<u8>, mask: &mut u32, key: usize) {
    if *mask != 0 {
        out.push(b',');
    }
    *mask |= 1 << key;
    out.push(b'"');
    out.extend_from_slice(RECORD_KEYS[key].as_bytes());
    out.extend_from_slice(b"\":");
}

/// Writes a log record's own members after `{` (no closing brace) and
/// returns which of [`RECORD_KEYS`] it wrote.
fn write_record(b: &[u8], depth: u32, out: &mut Vec<u8>) -> Result<u32, WireError> {
    let mut f = Fields::new(b, "LogRecord", depth);
    let (mut time, mut observed, mut severity, mut dropped, mut flags) = (0u64, 0u64, 0i32, 0u32, 0u32);
    let (mut severity_text, mut event_name) = ("", "");
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    let mut body: Option<(&[u8], u32)> = None;
    let mut attributes = false;
    while let Some((tag, w)) = f.next()? {
        match (tag, w) {
            (1, Wire::Fixed64(v)) => time = v,
            (11, Wire::Fixed64(v)) => observed = v,
            (2, Wire::Varint(v)) => severity = v as i32,
            (3, Wire::Len(s)) => severity_text = f.utf8(s, "severity_text")?,
            (5, Wire::Len(s)) => {
                if body.replace((s, f.nested()?)).is_some() {
                    return Err(WireError::Repeated("LogRecord", "body"));
                }
            }
            (6, Wire::Len(_)) => {
                f.nested()?;
                attributes = true;
            }
            (7, Wire::Varint(v)) => dropped = v as u32,
            (8, Wire::Fixed32(v)) => flags = v,
            (9, Wire::Len(s)) => trace_id = s,
            (10, Wire::Len(s)) => span_id = s,
            (12, Wire::Len(s)) => event_name = f.utf8(s, "event_name")?,
            (1..=3 | 5..=12, _) => return Err(f.wrong(record_field(tag))),
            _ => f.unknown()?,
        }
    }
    let mut mask = 0u32;
    out.push(b'{');
    if time != 0 {
        member(out, &mut mask, 0);
        write_time(time, out);
    }
    if observed != 0 {
        member(out, &mut mask, 1);
        write_time(observed, out);
    }
    if !severity_text.is_empty() {
        member(out, &mut mask, 2);
        write_str(severity_text, out);
    } else if let Some(name) = severity_name(severity) {
        member(out, &mut mask, 2);
        write_str(name, out);
    }
    if severity != 0 {
        member(out, &mut mask, 3);
        out.extend_from_slice(itoa::Buffer::new().format(severity).as_bytes());
    }
    if let Some((s, depth)) = body {
        match any_value(s, depth)? {
            AnyRef::Empty => {}
            AnyRef::Str(s) => {
                member(out, &mut mask, 4);
                write_str(s, out);
            }
            v => {
                member(out, &mut mask, 5);
                write_any(v, out)?;
            }
        }
    }
    if !event_name.is_empty() {
        member(out, &mut mask, 6);
        write_str(event_name, out);
    }
    if !trace_id.is_empty() {
        member(out, &mut mask, 7);
        write_hex(trace_id, out);
    }
    if !span_id.is_empty() {
        member(out, &mut mask, 8);
        write_hex(span_id, out);
    }
    if flags != 0 {
        member(out, &mut mask, 9);
        out.extend_from_slice(itoa::Buffer::new().format(flags).as_bytes());
    }
    if attributes {
        member(out, &mut mask, 10);
        write_object(b, "LogRecord", 6, depth, out)?;
    }
    if dropped != 0 {
        member(out, &mut mask, 11);
        out.extend_from_slice(itoa::Buffer::new().format(dropped).as_bytes());
    }
    Ok(mask)
}

fn record_field(tag: u32) -> &'static str {
    match tag {
        1 => "time_unix_nano",
        2 => "severity_number",
        3 => "severity_text",
        5 => "body",
        6 => "attributes",
        7 => "dropped_attributes_count",
        8 => "flags",
        9 => "trace_id",
        10 => "span_id",
        11 => "observed_time_unix_nano",
        _ => "event_name",
    }
}

/// Checks the attribute lists of a `Resource` or an `InstrumentationScope`
/// at the recursion budget the request gives them (prost then decodes it
/// owned: once per resource or scope, not per record).
fn check_attributes(b: &[u8], message: &'static str, depth: u32, scratch: &mut Vec<u8>) -> Result<(), WireError> {
    let mut f = Fields::new(b, message, depth);
    while let Some((tag, w)) = f.next()? {
        match (message, tag, w) {
            ("Resource", 1, Wire::Len(_)) | ("InstrumentationScope", 3, Wire::Len(_)) => {}
            ("Resource", 2, Wire::Varint(_)) | ("InstrumentationScope", 4, Wire::Varint(_)) => {}
            ("InstrumentationScope", 1 | 2, Wire::Len(s)) => {
                f.utf8(s, "name")?;
            }
            ("Resource", 1 | 2, _) | ("InstrumentationScope", 1..=4, _) => return Err(f.wrong("attributes")),
            _ => f.unknown()?,
        }
    }
    scratch.clear();
    let tag = if message == "Resource" { 1 } else { 3 };
    write_object(b, message, tag, depth, scratch)
}

/// The members of a fragment an event gets: those whose key it lacks.
struct Splice<'f> {
    members: &'f [Member],
    /// Per member, the bit of [`RECORD_KEYS`] its key is, if any.
    record_bit: Vec<Option<u32>>,
}

impl<'f> Splice<'f> {
    fn new(fragment: &'f Fragment) -> Splice<'f> {
        let members = fragment.members();
        Splice {
            members,
            record_bit: members
                .iter()
                .map(|m| RECORD_KEYS.iter().position(|k| *k == m.key()).map(|i| i as u32))
                .collect(),
        }
    }

    /// The members that events of a scope and resource may get: those
    /// whose key is none of the scope's and resource's members.
    fn for_group(&self, scope: bool, resource: &ResourceMembers, into: &mut Vec<usize>) {
        into.clear();
        for (i, m) in self.members.iter().enumerate() {
            let key = m.key();
            // `keys` are 'static and a member's key is not: `contains`
            // would not take it.
            #[allow(clippy::manual_contains)]
            let taken = (scope && key == "scope") || resource.keys.iter().any(|k| *k == key);
            if !taken {
                into.push(i);
            }
        }
    }
}

/// Renders every log record of an export request (protobuf) as one line
/// of event JSON (the mapping of docs/otlp.md), with `fragment`'s members
/// spliced in as decode splices them (a member whose key the event has is
/// left out). Returns the number of records. On an error `out` is left as
/// it was.
///
/// Every line is one JSON object of valid UTF-8 with no raw line break:
/// what [`crate::decode::Decoder::decode_rendered`] asks of the lines it
/// takes without parsing them.
pub(crate) fn render_logs(request: &[u8], fragment: &Fragment, out: &mut Vec<u8>) -> Result<usize, WireError> {
    let start = out.len();
    let result = match render(request, fragment, out) {
        Err(WireError::Repeated(..)) => {
            out.truncate(start);
            match proto::ExportLogsServiceRequest::decode(request) {
                Ok(r) => render(&r.encode_to_vec(), fragment, out),
                Err(e) => Err(WireError::Prost(e.to_string())),
            }
        }
        r => r,
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn render(request: &[u8], fragment: &Fragment, out: &mut Vec<u8>) -> Result<usize, WireError> {
    let splice = Splice::new(fragment);
    let mut group = Vec::new();
    let mut scope_part = Vec::new();
    let mut scratch = Vec::new();
    let mut records = 0;
    let mut f = Fields::new(request, "ExportLogsServiceRequest", RECURSION_LIMIT);
    while let Some((tag, w)) = f.next()? {
        let rl = match (tag, w) {
            (1, Wire::Len(rl)) => rl,
            (1, _) => return Err(f.wrong("resource_logs")),
            _ => {
                f.unknown()?;
                continue;
            }
        };
        let depth = f.nested()?;
        let members = match head(rl, "ResourceLogs", depth)? {
            Some((s, depth)) => {
                check_attributes(s, "Resource", depth, &mut scratch)?;
                let owned = proto::Resource::decode(s).map_err(|e| WireError::Prost(e.to_string()))?;
                resource_members(Some(&owned))
            }
            None => ResourceMembers::default(),
        };
        // Second pass: the records of each scope.
        let mut r = Fields::new(rl, "ResourceLogs", depth);
        while let Some((tag, w)) = r.next()? {
            let (2, Wire::Len(sl)) = (tag, w) else { continue };
            records += render_scope(sl, depth - 1, &members, &splice, (&mut group, &mut scope_part, &mut scratch), out)?;
        }
    }
    Ok(records)
}

/// The first pass over a `ResourceLogs` or a `ScopeLogs` (the same
/// shape: field 1 its resource or scope, 2 the repeated children, 3
/// `schema_url`): field 1 with the recursion budget of its contents, and a
/// check of the rest.
fn head<'a>(b: &'a [u8], message: &'static str, depth: u32) -> Result<Option<(&'a [u8], u32)>, WireError> {
    let mut f = Fields::new(b, message, depth);
    let mut first = None;
    while let Some((tag, w)) = f.next()? {
        match (tag, w) {
            (1, Wire::Len(s)) => {
                if first.replace((s, f.nested()?)).is_some() {
                    return Err(WireError::Repeated(message, "resource or scope"));
                }
            }
            (2, Wire::Len(_)) => {
                f.nested()?;
            }
            (3, Wire::Len(s)) => {
                f.utf8(s, "schema_url")?;
            }
            (1..=3, _) => return Err(f.wrong("a field")),
            _ => f.unknown()?,
        }
    }
    Ok(first)
}

/// Renders the records of one `ScopeLogs`.
fn render_scope(
    sl: &[u8],
    depth: u32,
    resource: &ResourceMembers,
    splice: &Splice<'_>,
    (group, scope_part, scratch): (&mut Vec<usize>, &mut Vec<u8>, &mut Vec<u8>),
    out: &mut Vec<u8>,
) -> Result<usize, WireError> {
    match head(sl, "ScopeLogs", depth)? {
        Some((b, depth)) => {
            check_attributes(b, "InstrumentationScope", depth, scratch)?;
            let owned = proto::InstrumentationScope::decode(b).map_err(|e| WireError::Prost(e.to_string()))?;
            scope_member(Some(&owned), scope_part);
        }
        None => scope_part.clear(),
    }
    splice.for_group(!scope_part.is_empty(), resource, group);
    let mut records = 0;
    let mut s = Fields::new(sl, "ScopeLogs", depth);
    while let Some((tag, w)) = s.next()? {
        let (2, Wire::Len(record)) = (tag, w) else { continue };
        let mask = write_record(record, depth - 1, out)?;
        let mut empty = mask == 0;
        for part in [&scope_part[..], &resource.rendered[..]] {
            if let Some(rest) = part.strip_prefix(b",") {
                out.extend_from_slice(if empty { rest } else { part });
                empty = false;
            }
        }
        for &i in group.iter() {
            if splice.record_bit[i].is_some_and(|bit| mask & (1 << bit) != 0) {
                continue;
            }
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(splice.members[i].rendered());
            empty = false;
        }
        out.extend_from_slice(b"}\n");
        records += 1;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::logs::reference;
    use crate::otlp::proto::{
        AnyValue, ArrayValue, ExportLogsServiceRequest, InstrumentationScope, KeyValue, KeyValueList, LogRecord, Resource, ResourceLogs,
        ScopeLogs, Value,
    };

    fn any(v: Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: any(v),
        }
    }

    /// A request with every kind of value, nested lists and maps, an
    /// empty record and an empty scope.
    fn request() -> ExportLogsServiceRequest {
        let nested = Value::KvList(KeyValueList {
            values: vec![
                kv(
                    "list",
                    Value::Array(ArrayValue {
                        values: vec![
                            AnyValue { value: None },
                            AnyValue {
                                value: Some(Value::Bytes(vec![0, 255, 7])),
                            },
                            AnyValue {
                                value: Some(Value::Double(f64::NAN)),
                            },
                            AnyValue {
                                value: Some(Value::Double(-f64::INFINITY)),
                            },
                            AnyValue {
                                value: Some(Value::Double(2.5e-300)),
                            },
                        ],
                    }),
                ),
                KeyValue {
                    key: "none".into(),
                    value: None,
                },
                kv(
                    "deeper",
                    Value::KvList(KeyValueList {
                        values: vec![kv("x", Value::Int(-1))],
                    }),
                ),
            ],
        });
        ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs {
                    resource: Some(Resource {
                        attributes: vec![
                            kv("service.name", Value::String("checkout".into())),
                            kv("k8s.pod.label.app", Value::String("web".into())),
                            kv("sluice.release.channel", Value::String("beta".into())),
                            kv("host.name", Value::String("node-1".into())),
                            kv("cloud.region", Value::String("eu\n\"west\"".into())),
                        ],
                        dropped_attributes_count: 2,
                    }),
                    scope_logs: vec![
                        ScopeLogs {
                            scope: Some(InstrumentationScope {
                                name: "app".into(),
                                version: "1".into(),
                                attributes: vec![kv("lib", Value::Bool(true))],
                                dropped_attributes_count: 0,
                            }),
                            log_records: vec![
                                LogRecord {
                                    time_unix_nano: 1_780_000_000_123_456_789,
                                    observed_time_unix_nano: 1_780_000_001_000_000_000,
                                    severity_number: 13,
                                    severity_text: String::new(),
                                    body: any(Value::String("caf\u{e9} \u{1} \u{2028}".into())),
                                    attributes: vec![kv("n", Value::Int(i64::MIN)), kv("n", Value::Double(1.0)), kv("m", nested.clone())],
                                    dropped_attributes_count: 3,
                                    flags: 257,
                                    trace_id: vec![0xab; 16],
                                    span_id: vec![1, 2, 3],
                                    event_name: "ev".into(),
                                },
                                LogRecord::default(),
                                LogRecord {
                                    severity_number: -5,
                                    body: any(nested),
                                    ..Default::default()
                                },
                            ],
                            schema_url: "https://x".into(),
                        },
                        ScopeLogs {
                            scope: Some(InstrumentationScope::default()),
                            log_records: vec![LogRecord {
                                severity_number: 99,
                                body: Some(AnyValue { value: None }),
                                ..Default::default()
                            }],
                            schema_url: String::new(),
                        },
                    ],
                    schema_url: String::new(),
                },
                ResourceLogs {
                    resource: None,
                    scope_logs: vec![ScopeLogs {
                        scope: None,
                        log_records: vec![LogRecord {
                            observed_time_unix_nano: 1,
                            ..Default::default()
                        }],
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                },
            ],
        }
    }

    fn render_plain(bytes: &[u8]) -> Result<String, WireError> {
        let mut out = Vec::new();
        render_logs(bytes, &Fragment::default(), &mut out).map(|_| String::from_utf8(out).unwrap())
    }

    fn expected(r: &ExportLogsServiceRequest) -> String {
        let mut want = Vec::new();
        reference::write_events(r, &mut want);
        String::from_utf8(want).unwrap()
    }

    /// Field `tag` with wire type `wt` and `payload` (already encoded).
    fn field(tag: u32, wt: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        super::super::encode::varint(u64::from(tag << 3 | u32::from(wt)), &mut out);
        if wt == 2 {
            super::super::encode::varint(payload.len() as u64, &mut out);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn events_from_the_wire_are_those_of_prosts_messages() {
        let r = request();
        let got = render_plain(&r.encode_to_vec()).unwrap();
        assert_eq!(got, expected(&r));
        for line in got.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v.is_object(), "{line}");
        }
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let unknown: Vec<u8> = [
            field(99, 0, &[0x96, 0x01]),
            field(98, 1, &[1; 8]),
            field(97, 2, b"junk \xff"),
            field(96, 5, &[2; 4]),
            // A group holding a varint and a nested group.
            [
                field(95, 3, &[]),
                field(1, 0, &[5]),
                field(2, 3, &[]),
                field(2, 4, &[]),
                field(95, 4, &[]),
            ]
            .concat(),
        ]
        .concat();
        let record = LogRecord {
            severity_text: "INFO".into(),
            body: any(Value::KvList(KeyValueList {
                values: vec![kv(
                    "k",
                    Value::Array(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(Value::Int(1)),
                        }],
                    }),
                )],
            })),
            attributes: vec![kv("a", Value::Bool(false))],
            ..Default::default()
        };
        let plain = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("r", Value::Int(1))],
                    dropped_attributes_count: 0,
                }),
                scope_logs: vec![ScopeLogs {
                    scope: None,
                    log_records: vec![record.clone()],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        // Every message of the request, with the unknown fields around its own.
        let any_value = [unknown.clone(), field(3, 0, &[1]), unknown.clone()].concat();
        let array = [unknown.clone(), field(1, 2, &any_value), unknown.clone()].concat();
        let key_value = [
            field(1, 2, b"k"),
            unknown.clone(),
            field(2, 2, &[field(5, 2, &array), unknown.clone()].concat()),
        ]
        .concat();
        let body = [field(6, 2, &[field(1, 2, &key_value), unknown.clone()].concat()), unknown.clone()].concat();
        let attr = [
            field(1, 2, b"a"),
            field(2, 2, &[field(2, 0, &[0]), unknown.clone()].concat()),
            unknown.clone(),
        ]
        .concat();
        let rec = [
            unknown.clone(),
            field(3, 2, b"INFO"),
            field(5, 2, &body),
            field(6, 2, &attr),
            unknown.clone(),
        ]
        .concat();
        let res = [
            field(1, 2, &[field(1, 2, b"r"), field(2, 2, &field(3, 0, &[1]))].concat()),
            unknown.clone(),
        ]
        .concat();
        let sl = [unknown.clone(), field(2, 2, &rec)].concat();
        let rl = [field(1, 2, &res), unknown.clone(), field(2, 2, &sl)].concat();
        let req = [unknown.clone(), field(1, 2, &rl), unknown].concat();
        assert_eq!(ExportLogsServiceRequest::decode(req.as_slice()).unwrap(), plain);
        assert_eq!(render_plain(&req).unwrap(), expected(&plain));
    }

    #[test]
    fn fields_repeated_on_the_wire_merge_as_prost_merges_them() {
        // Two bodies (kvlists: merged), a severity text twice (the last
        // wins), and an AnyValue with two values (the last wins).
        let kvlist = |k: &[u8]| field(6, 2, &field(1, 2, &[field(1, 2, k), field(2, 2, &field(3, 0, &[7]))].concat()));
        let two_values = [field(1, 2, b"first"), field(3, 0, &[9])].concat();
        let rec = [
            field(3, 2, b"WARN"),
            field(5, 2, &kvlist(b"a")),
            field(3, 2, b"ERROR"),
            field(5, 2, &kvlist(b"b")),
            field(6, 2, &[field(1, 2, b"x"), field(2, 2, &two_values)].concat()),
        ]
        .concat();
        let req = field(1, 2, &field(2, 2, &field(2, 2, &rec)));
        let decoded = ExportLogsServiceRequest::decode(req.as_slice()).unwrap();
        let got = render_plain(&req).unwrap();
        assert_eq!(got, expected(&decoded));
        assert_eq!(got, "{\"level\":\"ERROR\",\"body\":{\"a\":7,\"b\":7},\"attributes\":{\"x\":9}}\n");
    }

    #[test]
    fn strings_that_are_not_utf8_are_refused_by_field() {
        let rec = field(3, 2, b"IN\xffFO");
        let req = field(1, 2, &field(2, 2, &field(2, 2, &rec)));
        assert!(ExportLogsServiceRequest::decode(req.as_slice()).is_err());
        assert_eq!(render_plain(&req), Err(WireError::NotUtf8("LogRecord", "severity_text")));
        let attr = field(6, 2, &[field(1, 2, b"k\xc3"), field(2, 2, &[])].concat());
        let req = field(1, 2, &field(2, 2, &field(2, 2, &attr)));
        assert_eq!(render_plain(&req), Err(WireError::NotUtf8("KeyValue", "key")));
    }

    #[test]
    fn wrong_wire_types_and_bad_keys_are_refused() {
        for rec in [
            field(1, 0, &[1]),
            field(5, 0, &[1]),
            field(3, 5, &[0; 4]),
            field(0, 0, &[1]),
            vec![0x0e, 0],
        ] {
            let req = field(1, 2, &field(2, 2, &field(2, 2, &rec)));
            assert!(ExportLogsServiceRequest::decode(req.as_slice()).is_err(), "{rec:?}");
            assert!(render_plain(&req).is_err(), "{rec:?}");
        }
        // A group end without its start, and a varint of eleven bytes.
        assert!(render_plain(&field(7, 4, &[])).is_err());
        assert_eq!(
            render_plain(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(WireError::Varint("ExportLogsServiceRequest"))
        );
    }

    #[test]
    fn every_truncation_is_an_error_or_the_same_as_prost_never_a_panic() {
        let bytes = request().encode_to_vec();
        for n in 0..bytes.len() {
            let cut = &bytes[..n];
            let mut out = b"kept".to_vec();
            let mine = render_logs(cut, &Fragment::default(), &mut out);
            match ExportLogsServiceRequest::decode(cut) {
                Ok(r) => {
                    assert!(mine.is_ok(), "{n}: {mine:?}");
                    assert_eq!(String::from_utf8_lossy(&out[4..]), expected(&r), "{n}");
                }
                Err(_) => {
                    assert!(mine.is_err(), "{n}");
                    assert_eq!(out, b"kept", "an error leaves the output as it was");
                }
            }
        }
    }

    #[test]
    fn nesting_is_refused_exactly_where_prost_refuses_it() {
        for depth in 40..56 {
            let mut value = AnyValue {
                value: Some(Value::Int(1)),
            };
            for _ in 0..depth {
                value = AnyValue {
                    value: Some(Value::Array(ArrayValue { values: vec![value] })),
                };
            }
            let record = LogRecord {
                body: Some(value),
                ..Default::default()
            };
            let req = field(1, 2, &field(2, 2, &field(2, 2, &record.encode_to_vec())));
            let prost = ExportLogsServiceRequest::decode(req.as_slice());
            let mine = render_plain(&req);
            assert_eq!(prost.is_ok(), mine.is_ok(), "{depth}: {mine:?}");
            if let Err(e) = mine {
                assert_eq!(e, WireError::TooDeep);
            }
        }
    }

    #[test]
    fn times_are_written_as_jiff_writes_them() {
        let mut n: u64 = 1;
        for i in 0..2000u64 {
            n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            for nanos in [
                n,
                n / 1000 * 1000,
                n / 1_000_000_000 * 1_000_000_000,
                i,
                i * 86_400_000_000_000,
                u64::MAX,
            ] {
                let mut got = Vec::new();
                write_time(nanos, &mut got);
                let want = format!("\"{}\"", jiff::Timestamp::from_nanosecond(i128::from(nanos)).unwrap());
                assert_eq!(String::from_utf8(got).unwrap(), want, "{nanos}");
            }
        }
    }

    #[test]
    fn the_sources_members_are_spliced_where_the_event_lacks_their_key() {
        let meta = serde_json::json!({"level": "meta", "host": "h", "scope": 1, "env": "prod"});
        let fragment = Fragment::from_map(meta.as_object().unwrap());
        let mut out = Vec::new();
        render_logs(&request().encode_to_vec(), &fragment, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        // The first record has its level, a scope and a host: only env.
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["scope"]["name"], "app");
        assert_eq!(lines[0]["host"], "node-1");
        assert_eq!(lines[0]["env"], "prod");
        // The last record has none of them.
        let last = lines.last().unwrap();
        assert_eq!(last["level"], "meta");
        assert_eq!(last["host"], "h");
        assert_eq!(last["scope"], 1);
        let text = String::from_utf8(out).unwrap();
        assert!(text
            .lines()
            .last()
            .unwrap()
            .starts_with("{\"observed_timestamp\":\"1970-01-01T00:00:00.000000001Z\",\"level\":\"meta\","));
    }
}
