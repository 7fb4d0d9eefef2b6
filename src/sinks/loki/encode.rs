//! Loki's push wire formats.
//!
//! - Protobuf (`Content-Type: application/x-protobuf`): a
//!   `logproto.PushRequest`, compressed as one raw snappy block (not the
//!   framed snappy stream). The messages below are hand-written prost
//!   structs with Loki's field numbers; `line` and the structured metadata
//!   are `bytes` on our side (the same wire type as protobuf `string`), so
//!   an entry's line is a slice of the batch buffer, never a copy.
//! - JSON (`Content-Type: application/json`, optionally gzip):
//!   `{"streams":[{"stream":{…},"values":[["<unix ns>","<line>",{…}]]}]}`.

use bytes::Bytes;
use std::io::Write;

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PushRequest {
    /// One per label set.
    #[prost(message, repeated, tag = "1")]
    pub(crate) streams: Vec<StreamAdapter>,
}

/// `logproto.StreamAdapter`: a label set and its entries.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StreamAdapter {
    /// The labels as LogQL text: `{host="a", service="b"}`.
    #[prost(string, tag = "1")]
    pub(crate) labels: String,
    /// Entries, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub(crate) entries: Vec<EntryAdapter>,
}

/// `logproto.EntryAdapter`: one log line.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EntryAdapter {
    /// When the event happened.
    #[prost(message, optional, tag = "1")]
    pub(crate) timestamp: Option<Timestamp>,
    /// The line (UTF-8; `string` on Loki's side).
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) line: Bytes,
    /// High-cardinality fields kept beside the line, not indexed.
    #[prost(message, repeated, tag = "3")]
    pub(crate) structured_metadata: Vec<LabelPairAdapter>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub(crate) struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub(crate) seconds: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    #[prost(int32, tag = "2")]
    pub(crate) nanos: i32,
}

impl Timestamp {
    /// From nanoseconds since the epoch (negative times included).
    pub(crate) fn from_nanos(ns: i64) -> Timestamp {
        Timestamp {
            seconds: ns.div_euclid(1_000_000_000),
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }
    }

    /// Nanoseconds since the epoch.
    pub(crate) fn as_nanos(&self) -> i64 {
        self.seconds.saturating_mul(1_000_000_000).saturating_add(self.nanos as i64)
    }
}

/// `logproto.LabelPairAdapter`: one structured metadata pair.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LabelPairAdapter {
    /// The name (UTF-8).
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) name: Bytes,
    /// The value (UTF-8).
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) value: Bytes,
}

impl EntryAdapter {
    /// The entry's time in nanoseconds (0 when unset).
    pub(crate) fn nanos(&self) -> i64 {
        self.timestamp.map_or(0, |t| t.as_nanos())
    }
}

/// Sorts each stream's entries by time (stable: equal times keep their
/// arrival order), skipping streams already in order.
pub(crate) fn order_entries(streams: &mut [StreamAdapter]) {
    for s in streams {
        if !s.entries.is_sorted_by_key(EntryAdapter::nanos) {
            s.entries.sort_by_key(EntryAdapter::nanos);
        }
    }
}

/// Encodes a push as protobuf and compresses it as one raw snappy block.
pub(crate) fn encode_protobuf(req: &PushRequest) -> Result<Vec<u8>, snap::Error> {
    use prost::Message;
    let raw = req.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw)
}

/// Encodes a push in Loki's JSON form. `stream_labels[i]` is stream `i`'s
/// label set as a JSON object, rendered when the stream was opened.
pub(crate) fn encode_json(req: &PushRequest, stream_labels: &[String]) -> Vec<u8> {
    let size: usize = req
        .streams
        .iter()
        .map(|s| s.entries.iter().map(|e| e.line.len() + 40).sum::<usize>() + 64)
        .sum();
    let mut out = Vec::with_capacity(size + 32);
    out.extend_from_slice(b"{\"streams\":[");
    for (si, s) in req.streams.iter().enumerate() {
        if si > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"stream\":");
        out.extend_from_slice(stream_labels.get(si).map_or("{}", String::as_str).as_bytes());
        out.extend_from_slice(b",\"values\":[");
        for (ei, e) in s.entries.iter().enumerate() {
            if ei > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"[\"");
            out.extend_from_slice(itoa::Buffer::new().format(e.nanos()).as_bytes());
            out.extend_from_slice(b"\",");
            json_string(&mut out, &e.line);
            if !e.structured_metadata.is_empty() {
                out.extend_from_slice(b",{");
                for (mi, m) in e.structured_metadata.iter().enumerate() {
                    if mi > 0 {
                        out.push(b',');
                    }
                    json_string(&mut out, &m.name);
                    out.push(b':');
                    json_string(&mut out, &m.value);
                }
                out.push(b'}');
            }
            out.push(b']');
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
    out
}

/// gzip at the given level.
pub(crate) fn gzip(data: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), flate2::Compression::new(level));
    enc.write_all(data)?;
    enc.finish()
}

/// Appends `text` as a JSON string (quoted, escaped). Invalid UTF-8 is
/// replaced, never passed through.
fn json_string(out: &mut Vec<u8>, text: &[u8]) {
    let s = String::from_utf8_lossy(text);
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s.as_ref());
}

/// Appends a label value in LogQL's quoted form (Go string syntax):
/// backslash, double quote and control characters are escaped, other
/// characters (including non-ASCII) are kept.
pub(crate) fn quote_label_value(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// True for a valid Loki label or structured metadata name:
/// `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> PushRequest {
        PushRequest {
            streams: vec![StreamAdapter {
                labels: "{service=\"api\"}".into(),
                entries: vec![EntryAdapter {
                    timestamp: Some(Timestamp::from_nanos(1_700_000_000_123_456_789)),
                    line: Bytes::from_static(br#"{"msg":"a \"b\""}"#),
                    structured_metadata: vec![LabelPairAdapter {
                        name: Bytes::from_static(b"trace_id"),
                        value: Bytes::from_static(b"t1"),
                    }],
                }],
            }],
        }
    }

    #[test]
    fn protobuf_round_trips_through_snappy() {
        let req = sample();
        let body = encode_protobuf(&req).unwrap();
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let back = PushRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.streams[0].entries[0].timestamp.unwrap().nanos, 123_456_789);
    }

    #[test]
    fn json_form_matches_loki_push_api() {
        let req = sample();
        let body = encode_json(&req, &["{\"service\":\"api\"}".to_owned()]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"streams":[{"stream":{"service":"api"},
                "values":[["1700000000123456789","{\"msg\":\"a \\\"b\\\"\"}",{"trace_id":"t1"}]]}]})
        );
    }

    #[test]
    fn label_values_are_escaped_go_style() {
        let mut s = String::new();
        quote_label_value(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\x01é""#);
    }

    #[test]
    fn negative_times_keep_nanos_positive() {
        let t = Timestamp::from_nanos(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_999_999));
        assert_eq!(t.as_nanos(), -1);
    }

    #[test]
    fn entries_are_ordered_stably_within_streams() {
        let e = |ns: i64, l: &'static str| EntryAdapter {
            timestamp: Some(Timestamp::from_nanos(ns)),
            line: Bytes::from_static(l.as_bytes()),
            structured_metadata: vec![],
        };
        let mut s = vec![StreamAdapter {
            labels: "{a=\"b\"}".into(),
            entries: vec![e(3, "c"), e(1, "a1"), e(2, "b"), e(1, "a2")],
        }];
        order_entries(&mut s);
        let lines: Vec<&[u8]> = s[0].entries.iter().map(|e| &e.line[..]).collect();
        assert_eq!(lines, [&b"a1"[..], b"a2", b"b", b"c"]);
    }
}
