//! Hostile input through framing and decode: random bytes, NUL bytes, lone
//! CR, huge lines, invalid UTF-8, deep nesting, empty lines, a truncated
//! last line. Lines in equal events out (plus counted drops), every event a
//! JSON object, no panic, bounded memory.

use proptest::prelude::*;
use serde_json::{Map, Value};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sluice::decode::Decoder;
use sluice::enrich::Fragment;
use sluice::event::{BatchBuilder, FieldPath, FieldSet};
use sluice::framing::{LineFramer, OverflowPolicy};

mod support;

/// Feeds `input` in reads of the given sizes; returns (events, dropped,
/// the decoded events).
fn run(input: &[u8], reads: &[usize], max_line: usize, policy: OverflowPolicy) -> (usize, u64, Vec<Value>) {
    let mut framer = LineFramer::with_read_chunk(max_line, policy, 4096);
    let mut fields = FieldSet::new();
    fields.add(FieldPath::parse("a.b").unwrap());
    fields.add(FieldPath::parse("message").unwrap());
    let fields = Arc::new(fields);
    let mut frag_meta = Map::new();
    frag_meta.insert("host".into(), Value::String("h".into()));
    let frag = Fragment::from_map(&frag_meta);
    let mut decoder = Decoder::new();
    let mut out = BatchBuilder::with_capacity(fields, 1024, 16);
    let mut dropped = 0;
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = reads[i % reads.len()].clamp(1, rest.len());
        i += 1;
        framer.extend(&rest[..n]);
        rest = &rest[n..];
        while let Some(lines) = framer.take_lines() {
            dropped += lines.dropped;
            decoder.decode_lines(&lines, &frag, &mut out);
            assert!(framer.pending_bytes() <= max_line + n + 4096, "framer memory bounded");
        }
    }
    while let Some(lines) = framer.finish() {
        dropped += lines.dropped;
        decoder.decode_lines(&lines, &frag, &mut out);
    }
    let n = out.len();
    let batch = out.build(
        Arc::new(sluice::enrich::SourceContext::new("t".into(), "test", String::new(), Map::new())),
        std::time::SystemTime::now(),
    );
    let events = batch
        .events()
        .map(|e| serde_json::from_slice::<Value>(e).unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(e))))
        .collect();
    (n, dropped, events)
}

fn line_count(input: &[u8]) -> usize {
    let newlines = input.iter().filter(|&&b| b == b'\n').count();
    newlines + usize::from(!input.is_empty() && *input.last().unwrap() != b'\n')
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(vec![0u8; 3]),
        Just(b"{\"a\":{\"b\":1}}".to_vec()),
        Just(b"{\"a\":".to_vec()),
        Just(b"}".to_vec()),
        Just(vec![0xf0, 0x28, 0x8c, 0xbc]),
        Just("é€😀".as_bytes().to_vec()),
        Just(b"[[[[[[".to_vec()),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn lines_in_equal_events_out_for_any_bytes(input in hostile_bytes(), reads in prop::collection::vec(1usize..200, 1..8)) {
        let (events, dropped, decoded) = run(&input, &reads, 1 << 20, OverflowPolicy::Truncate);
        prop_assert_eq!(dropped, 0);
        prop_assert_eq!(events, line_count(&input));
        for e in decoded {
            prop_assert!(e.is_object());
            prop_assert_eq!(&e["host"], "h");
        }
    }

    #[test]
    fn over_limit_lines_are_dropped_and_counted_exactly(input in hostile_bytes(), reads in prop::collection::vec(1usize..200, 1..8)) {
        let max = 16;
        let (events, dropped, _) = run(&input, &reads, max, OverflowPolicy::Drop);
        let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        if input.last() == Some(&b'\n') || input.is_empty() {
            lines.pop();
        }
        let long = lines.iter().filter(|l| {
            let len = if l.last() == Some(&b'\r') { l.len() - 1 } else { l.len() };
            len > max
        }).count();
        prop_assert_eq!(dropped as usize, long);
        prop_assert_eq!(events + long, lines.len());
    }
}

#[test]
fn json_nested_ten_thousand_deep_is_kept_as_text() {
    let mut line = Vec::new();
    for _ in 0..10_000 {
        line.extend_from_slice(b"{\"a\":");
    }
    line.push(b'1');
    line.extend(std::iter::repeat_n(b'}', 10_000));
    line.push(b'\n');
    let (events, _, decoded) = run(&line, &[1 << 16], 1 << 20, OverflowPolicy::Truncate);
    assert_eq!(events, 1);
    assert_eq!(decoded[0]["message"].as_str().unwrap().len(), line.len() - 1);
}

#[test]
fn ten_megabyte_line_is_truncated_flagged_and_counted_by_the_binary() {
    let mut input = b"{\"before\":1}\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 10 << 20));
    input.extend_from_slice(b"\n{\"after\":1}\n");
    let mut cmd = Command::new(support::sluice::BIN);
    cmd.env("SLUICE_API_ENABLED", "false").env("SLUICE_LOG", "warn");
    let out = support::run_bounded(cmd, Some(&input), Duration::from_secs(60));
    assert!(out.status.success());
    let events: Vec<Value> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["before"], 1);
    assert_eq!(events[1]["truncated"], true);
    assert_eq!(events[1]["message"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(events[2]["after"], 1);
}

#[test]
fn nul_bytes_and_lone_cr_survive_as_message_text() {
    let (events, _, decoded) = run(b"a\0b\rc\n\0\n\r\n", &[3], 1 << 20, OverflowPolicy::Truncate);
    assert_eq!(events, 3);
    assert_eq!(decoded[0]["message"], "a\0b\rc");
    assert_eq!(decoded[1]["message"], "\0");
    assert_eq!(decoded[2]["message"], "");
}
