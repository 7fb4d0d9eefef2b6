//! Proves the test Loki receiver (`tests/support/loki_receiver.py`) decodes
//! what real clients send: winston-loki's snappy protobuf and JSON, raw JSON
//! (plain and gzip) and protobuf encoded here with prost, and that its fault
//! modes answer the way Loki does. The Loki sink's tests rely on all of it.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output};

use support::{Loki, LokiMode, ReceivedEntry, ReceivedStream};

/// Loki's push protobuf (`pkg/push/push.proto`), encoded with prost.
mod logproto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPairAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPairAdapter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn entry(ts_ns: i64, line: &str, metadata: &[(&str, &str)]) -> ReceivedEntry {
    ReceivedEntry {
        ts_ns,
        line: line.to_string(),
        structured_metadata: labels(metadata),
    }
}

/// Runs `tests/support/winston_push.js` with `spec` (see that file).
fn winston_push(spec: serde_json::Value) -> Output {
    let mut cmd = Command::new(support::node_bin());
    cmd.env("NODE_PATH", support::node_modules_dir())
        .arg(support::support_dir().join("winston_push.js"))
        .arg(spec.to_string());
    support::run_bounded(cmd, None, support::TOOL_TIMEOUT)
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "winston_push.js failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Snappy raw block (what Loki expects), not the framed stream format.
fn snappy_raw(buf: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(buf).expect("snappy compress")
}

fn push_protobuf(loki: &Loki, tenant: Option<&str>, req: &logproto::PushRequest) -> (u16, String) {
    let body = snappy_raw(&prost::Message::encode_to_vec(req));
    let mut headers = vec![("Content-Type", "application/x-protobuf")];
    if let Some(t) = tenant {
        headers.push(("X-Scope-OrgID", t));
    }
    support::http_post(&loki.push_url(), &headers, &body)
}

fn push_json(loki: &Loki, doc: &serde_json::Value) -> (u16, String) {
    support::http_post(
        &loki.push_url(),
        &[("Content-Type", "application/json")],
        doc.to_string().as_bytes(),
    )
}

/// A JSON push of `lines` at `ts_ns`, `ts_ns + 1`, ... in stream `{job="<job>"}`.
fn json_push_of(job: &str, ts_ns: &[i64]) -> serde_json::Value {
    let values: Vec<serde_json::Value> = ts_ns
        .iter()
        .map(|ts| serde_json::json!([ts.to_string(), format!("line at {ts}")]))
        .collect();
    serde_json::json!({"streams": [{"stream": {"job": job}, "values": values}]})
}

fn pb_entry(ts_ns: i64, line: &str) -> logproto::EntryAdapter {
    logproto::EntryAdapter {
        timestamp: Some(logproto::Timestamp {
            seconds: ts_ns.div_euclid(1_000_000_000),
            nanos: ts_ns.rem_euclid(1_000_000_000) as i32,
        }),
        line: line.to_string(),
        structured_metadata: vec![],
    }
}

#[test]
fn winston_loki_protobuf_push_is_decoded_exactly() {
    let loki = Loki::start();
    let spec = serde_json::json!({
        "url": loki.url,
        "json": false,
        "tenant": "team-a",
        "labels": {"job": "checkout", "env": "test"},
        "lines": [
            {"message": "first line", "ts_ms": 1_700_000_000_123_i64},
            {"message": "second \"quoted\" ünïcödé line", "ts_ms": 1_700_000_000_456_i64},
            {"message": "third, other stream", "ts_ms": 1_700_000_001_000_i64, "labels": {"pod": "p-1"}},
        ],
    });
    assert_success(&winston_push(spec));

    let want = vec![
        ReceivedStream {
            tenant: "team-a".into(),
            labels: labels(&[("job", "checkout"), ("env", "test"), ("level", "info")]),
            entries: vec![
                entry(1_700_000_000_123_000_000, "first line", &[]),
                entry(1_700_000_000_456_000_000, "second \"quoted\" ünïcödé line", &[]),
            ],
        },
        ReceivedStream {
            tenant: "team-a".into(),
            labels: labels(&[("job", "checkout"), ("env", "test"), ("level", "info"), ("pod", "p-1")]),
            entries: vec![entry(1_700_000_001_000_000_000, "third, other stream", &[])],
        },
    ];
    assert_eq!(loki.entries(), want);
    let stats = loki.stats();
    assert_eq!(stats.pushes, 1, "winston-loki sends one batch: {stats:?}");
    assert_eq!(stats.by_status.get("204"), Some(&1));
    // winston-loki falls back to JSON when its snappy binding is missing;
    // this proves the protobuf path was the one exercised.
    assert_eq!(stats.by_content_type.get("application/x-protobuf"), Some(&1), "{stats:?}");
}

#[test]
fn winston_loki_json_push_carries_structured_metadata() {
    let loki = Loki::start();
    let spec = serde_json::json!({
        "url": loki.url,
        "json": true,
        "tenant": null,
        "labels": {"job": "json-client"},
        "lines": [
            {"message": "with metadata", "ts_ms": 1_700_000_002_000_i64, "meta": {"trace_id": "abc123"}},
        ],
    });
    assert_success(&winston_push(spec));

    let want = vec![ReceivedStream {
        tenant: "fake".into(),
        labels: labels(&[("job", "json-client"), ("level", "info")]),
        entries: vec![entry(
            1_700_000_002_000_000_000,
            "with metadata",
            &[("level", "info"), ("trace_id", "abc123")],
        )],
    }];
    assert_eq!(loki.entries(), want);
    assert_eq!(loki.stats().by_content_type.get("application/json"), Some(&1));
}

#[test]
fn winston_loki_sees_429_then_succeeds_when_receiver_recovers() {
    let loki = Loki::start();
    loki.set_mode(LokiMode::TooManyRequests, Some(1));
    let spec = serde_json::json!({
        "url": loki.url,
        "labels": {"job": "retry"},
        "lines": [{"message": "refused", "ts_ms": 1_700_000_003_000_i64}],
    });
    let out = winston_push(spec.clone());
    assert!(!out.status.success(), "a 429 must fail the client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("429") && stderr.contains("Ingestion rate limit exceeded"),
        "client error should carry Loki's 429 message: {stderr}"
    );
    assert!(loki.entries().is_empty(), "a 429 stores nothing");

    assert_success(&winston_push(spec));
    assert_eq!(loki.lines(), vec!["refused".to_string()]);
    let stats = loki.stats();
    assert_eq!(stats.by_status.get("429"), Some(&1), "{stats:?}");
    assert_eq!(stats.by_status.get("204"), Some(&1), "{stats:?}");
    assert_eq!(loki.push_count(), 2);
}

#[test]
fn json_push_plain_and_gzip_are_decoded() {
    let loki = Loki::start();
    let doc = serde_json::json!({"streams": [
        {
            "stream": {"job": "raw", "quote": "a \"q\" b"},
            "values": [
                ["1700000000000000001", "plain line"],
                ["1700000000000000002", "line with metadata", {"trace_id": "t-1", "user": "u"}],
            ],
        },
    ]});
    assert_eq!(push_json(&loki, &doc), (204, String::new()));

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let gz_doc = serde_json::json!({"streams": [
        {"stream": {"job": "gz"}, "values": [["1700000000000000003", "gzipped line"]]},
    ]});
    gz.write_all(gz_doc.to_string().as_bytes()).expect("gzip write");
    let body = gz.finish().expect("gzip finish");
    let (status, text) = support::http_post(
        &loki.push_url(),
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("X-Scope-OrgID", "tenant-gz"),
        ],
        &body,
    );
    assert_eq!((status, text.as_str()), (204, ""));

    let want = vec![
        ReceivedStream {
            tenant: "fake".into(),
            labels: labels(&[("job", "raw"), ("quote", "a \"q\" b")]),
            entries: vec![
                entry(1_700_000_000_000_000_001, "plain line", &[]),
                entry(
                    1_700_000_000_000_000_002,
                    "line with metadata",
                    &[("trace_id", "t-1"), ("user", "u")],
                ),
            ],
        },
        ReceivedStream {
            tenant: "tenant-gz".into(),
            labels: labels(&[("job", "gz")]),
            entries: vec![entry(1_700_000_000_000_000_003, "gzipped line", &[])],
        },
    ];
    assert_eq!(loki.entries(), want);
}

#[test]
fn protobuf_push_decodes_escaped_labels_metadata_and_skips_unknown_fields() {
    let loki = Loki::start();
    let req = logproto::PushRequest {
        streams: vec![logproto::StreamAdapter {
            labels: r#"{job="pb", msg="say \"hi\"\\now", unicode="é"}"#.into(),
            entries: vec![
                logproto::EntryAdapter {
                    structured_metadata: vec![logproto::LabelPairAdapter {
                        name: "trace_id".into(),
                        value: "0af7651916cd43dd".into(),
                    }],
                    ..pb_entry(1_700_000_000_999_999_999, "nanosecond precision")
                },
                pb_entry(0, "the epoch"),
            ],
            hash: 0xdead_beef,
        }],
    };
    let mut raw = prost::Message::encode_to_vec(&req);
    // Unknown fields of each skippable wire type: varint (12), fixed64 (13),
    // length-delimited (14), fixed32 (15), and a field number (100) whose
    // key takes two bytes. Loki ignores them; so must the receiver.
    raw.extend_from_slice(&[12 << 3, 0x96, 0x01]);
    raw.extend_from_slice(&[(13 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
    raw.extend_from_slice(&[(14 << 3) | 2, 3, b'x', b'y', b'z']);
    raw.extend_from_slice(&[(15 << 3) | 5, 1, 2, 3, 4]);
    raw.extend_from_slice(&[0xa0, 0x06, 7]); // key 800 = field 100, varint
    let (status, text) = support::http_post(&loki.push_url(), &[("Content-Type", "application/x-protobuf")], &snappy_raw(&raw));
    assert_eq!((status, text.as_str()), (204, ""));

    let want = vec![ReceivedStream {
        tenant: "fake".into(),
        labels: labels(&[("job", "pb"), ("msg", "say \"hi\"\\now"), ("unicode", "é")]),
        entries: vec![
            entry(
                1_700_000_000_999_999_999,
                "nanosecond precision",
                &[("trace_id", "0af7651916cd43dd")],
            ),
            entry(0, "the epoch", &[]),
        ],
    }];
    assert_eq!(loki.entries(), want);
}

#[test]
fn malformed_pushes_are_rejected_with_400_and_store_nothing() {
    let loki = Loki::start();
    let good = prost::Message::encode_to_vec(&logproto::PushRequest {
        streams: vec![logproto::StreamAdapter {
            labels: r#"{job="x"}"#.into(),
            entries: vec![pb_entry(1, "l")],
            hash: 0,
        }],
    });
    let pb = [("Content-Type", "application/x-protobuf")];
    let js = [("Content-Type", "application/json")];

    // Framed snappy (the stream format) is not what Loki accepts.
    let mut framed = snap::write::FrameEncoder::new(Vec::new());
    framed.write_all(&good).expect("snappy frame write");
    let framed = framed.into_inner().expect("snappy frame finish");
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: Vec<(&str, Headers, Vec<u8>)> = vec![
        ("framed snappy", &pb, framed),
        ("uncompressed protobuf", &pb, good.clone()),
        ("truncated protobuf", &pb, snappy_raw(&good[..good.len() - 1])),
        ("wire type 3 (group)", &pb, snappy_raw(&[(1 << 3) | 3, 0])),
        (
            "empty label set",
            &pb,
            snappy_raw(&prost::Message::encode_to_vec(&logproto::PushRequest {
                streams: vec![logproto::StreamAdapter {
                    labels: "{}".into(),
                    entries: vec![pb_entry(1, "l")],
                    hash: 0,
                }],
            })),
        ),
        (
            "unparseable labels",
            &pb,
            snappy_raw(&prost::Message::encode_to_vec(&logproto::PushRequest {
                streams: vec![logproto::StreamAdapter {
                    labels: r#"{job="x}"#.into(),
                    entries: vec![pb_entry(1, "l")],
                    hash: 0,
                }],
            })),
        ),
        ("invalid JSON", &js, b"{\"streams\": [".to_vec()),
        (
            "numeric JSON timestamp",
            &js,
            br#"{"streams":[{"stream":{"job":"x"},"values":[[1,"l"]]}]}"#.to_vec(),
        ),
        (
            "gzip header on plain body",
            &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
            br#"{"streams":[]}"#.to_vec(),
        ),
    ];
    let n = cases.len() as u64;
    for (name, headers, body) in cases {
        let (status, text) = support::http_post(&loki.push_url(), headers, &body);
        assert_eq!(status, 400, "{name}: expected 400, got {status}: {text}");
        assert!(!text.is_empty(), "{name}: a 400 must say why");
    }
    assert!(loki.entries().is_empty());
    let stats = loki.stats();
    assert_eq!(stats.by_status.get("400"), Some(&n), "{stats:?}");
    assert_eq!(stats.accepted_entries, 0);
}

#[test]
fn fault_modes_answer_like_loki_for_the_next_n_pushes() {
    let loki = Loki::start();
    let push = |ts: &[i64]| push_json(&loki, &json_push_of("faults", ts));

    loki.set_mode(LokiMode::TooManyRequests, Some(2));
    for _ in 0..2 {
        let (status, text) = push(&[1]);
        assert_eq!(status, 429, "{text}");
        assert!(text.contains("Ingestion rate limit exceeded"), "{text}");
    }
    assert_eq!(push(&[1]).0, 204, "429 mode lasts exactly 2 pushes");

    loki.set_mode(LokiMode::ServerError, Some(1));
    assert_eq!(push(&[2]).0, 500);
    assert_eq!(push(&[2]).0, 204);

    loki.set_mode(LokiMode::OutOfOrder, Some(1));
    let (status, text) = push(&[1_000_000_000, 2_000_000_000]);
    assert_eq!(status, 400);
    assert_eq!(
        text,
        "entry with timestamp 1970-01-01 00:00:01 +0000 UTC ignored, reason: 'entry out of order',\n\
         entry with timestamp 1970-01-01 00:00:02 +0000 UTC ignored, reason: 'entry out of order',\n\
         user 'fake', total ignored: 2 out of 2 for stream: {job=\"faults\"}"
    );

    loki.set_mode(LokiMode::TooOld, Some(1));
    let (status, text) = push(&[3]);
    assert_eq!(status, 400);
    assert!(
        text.starts_with("entry for stream '{job=\"faults\"}' has timestamp too old: 1970-01-01T00:00:00Z"),
        "{text}"
    );

    loki.set_mode(LokiMode::Partial, Some(1));
    let (status, text) = push(&[10, 11, 12, 13]);
    assert_eq!(status, 400);
    assert!(
        text.ends_with("user 'fake', total ignored: 2 out of 4 for stream: {job=\"faults\"}"),
        "{text}"
    );

    // Count None: the fault stays until changed.
    loki.set_mode(LokiMode::ServerError, None);
    for _ in 0..3 {
        assert_eq!(push(&[20]).0, 500);
    }
    loki.set_mode(LokiMode::Ok, None);
    assert_eq!(push(&[21]).0, 204);

    let stored: Vec<i64> = loki.entries()[0].entries.iter().map(|e| e.ts_ns).collect();
    // 1 and 2 after the faults, 10 and 12 from the partial push, then 21.
    assert_eq!(stored, vec![1, 2, 10, 12, 21]);
    let stats = loki.stats();
    assert_eq!(stats.pushes, 12, "{stats:?}");
    assert_eq!(stats.by_status.get("429"), Some(&2));
    assert_eq!(stats.by_status.get("500"), Some(&4));
    assert_eq!(stats.by_status.get("400"), Some(&3));
    assert_eq!(stats.by_status.get("204"), Some(&3));
    assert_eq!(stats.mode, "ok");

    loki.reset();
    assert!(loki.entries().is_empty());
    assert_eq!(loki.push_count(), 0);
}

#[test]
fn strict_order_rejects_entries_older_than_the_newest_of_their_stream() {
    let loki = Loki::start();
    loki.set_mode(LokiMode::StrictOrder { window_ns: 0 }, None);
    let push = |job: &str, ts: &[i64]| push_json(&loki, &json_push_of(job, ts));

    assert_eq!(push("a", &[10, 20]).0, 204);
    let (status, text) = push("a", &[15, 25]);
    assert_eq!(status, 400);
    assert!(text.contains("reason: 'entry out of order'"), "{text}");
    assert!(text.ends_with("total ignored: 1 out of 2 for stream: {job=\"a\"}"), "{text}");
    // Another stream has its own order.
    assert_eq!(push("b", &[5]).0, 204);
    // An exact duplicate of the newest entry is dropped without an error.
    assert_eq!(push("a", &[25]).0, 204);

    let by_job = |job: &str| -> Vec<i64> {
        loki.entries()
            .into_iter()
            .find(|s| s.labels["job"] == job)
            .map(|s| s.entries.iter().map(|e| e.ts_ns).collect())
            .unwrap_or_default()
    };
    assert_eq!(by_job("a"), vec![10, 20, 25]);
    assert_eq!(by_job("b"), vec![5]);

    // With a window, as with Loki's unordered writes.
    let s: i64 = 1_000_000_000;
    loki.set_mode(LokiMode::StrictOrder { window_ns: 5_000_000_000 }, None);
    assert_eq!(push("c", &[100 * s]).0, 204);
    assert_eq!(push("c", &[97 * s]).0, 204, "inside the window");
    let (status, text) = push("c", &[90 * s]);
    assert_eq!(status, 400);
    assert!(
        text.contains(
            "reason: 'entry too far behind, entry timestamp is: 1970-01-01T00:01:30Z, \
             oldest acceptable timestamp is: 1970-01-01T00:01:35Z'"
        ),
        "{text}"
    );
    assert_eq!(by_job("c"), vec![100 * s, 97 * s]);
}

#[test]
fn chunked_request_bodies_are_decoded() {
    use std::io::Read;
    let loki = Loki::start();
    let addr = loki.url.trim_start_matches("http://");
    let doc = json_push_of("chunked", &[7, 8]).to_string();
    let (a, b) = doc.as_bytes().split_at(doc.len() / 2);
    let mut req = format!(
        "POST /loki/api/v1/push HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for part in [a, b] {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(support::HTTP_TIMEOUT)).expect("read timeout");
    conn.write_all(&req).expect("send request");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read answer");
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    assert_eq!(loki.lines(), vec!["line at 7", "line at 8"]);
}

#[test]
fn protobuf_tenants_are_kept_apart() {
    let loki = Loki::start();
    let req = |line: &str| logproto::PushRequest {
        streams: vec![logproto::StreamAdapter {
            labels: r#"{job="same"}"#.into(),
            entries: vec![pb_entry(1, line)],
            hash: 0,
        }],
    };
    assert_eq!(push_protobuf(&loki, Some("t1"), &req("one")).0, 204);
    assert_eq!(push_protobuf(&loki, Some("t2"), &req("two")).0, 204);
    let got: Vec<(String, String)> = loki.entries().into_iter().map(|s| (s.tenant, s.entries[0].line.clone())).collect();
    assert_eq!(
        got,
        vec![("t1".to_string(), "one".to_string()), ("t2".to_string(), "two".to_string())]
    );
}
