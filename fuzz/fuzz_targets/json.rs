//! JSON decoding of one line: the metadata splice, the wrapping of lines
//! that are not objects, and field extraction. Every event is valid JSON;
//! an object keeps its own members, gains the spliced ones it lacks, and
//! its extracted fields equal what serde_json reads from the line. The
//! decoder's scan path and simd-json's tape path write the same event and
//! read the same values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use sluice::decode::Decoder;
use sluice::enrich::Member;
use sluice_fuzz::{bare_builder, build, builder, check_batch, expected_value, fragment, metadata, same_value, unique_keys, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    // Any bytes: a line from newline framing holds no `\n`, but a docker
    // `log`, a NUL- or octet-counted frame, a datagram or a Kafka message
    // may, and the event must still take one line (`check_batch`).
    let line = input.rest();
    let truncated = flags & 1 == 1;
    let extra_kv: &[(&str, &str)] = if flags & 2 == 2 {
        &[("stream", "stdout"), ("time", "2024-01-01T00:00:00Z")]
    } else {
        &[]
    };
    let extra: Vec<Member> = extra_kv.iter().map(|(k, v)| Member::string(k, v)).collect();

    let mut decoder = Decoder::new();
    let mut out = builder();
    decoder.decode_line(line, truncated, &extra, &fragment(), &mut out);
    let stats = decoder.take_stats();
    let batch = build(out);
    assert_eq!(batch.len(), 1, "one line, one event");
    let events = check_batch(&batch);
    let event = &events[0];

    // The decoder reads most objects with its own scan, not simd-json's
    // tape: a decoder that always parses must write the same event and
    // extract the very same values (not merely close numbers).
    let mut parsed = builder();
    Decoder::tape_only().decode_line(line, truncated, &extra, &fragment(), &mut parsed);
    let parsed = build(parsed);
    assert_eq!(parsed.events().next(), batch.events().next(), "the scan path and the tape path wrote different events");
    for f in 0..batch.fields().len() {
        let (scanned, taped) = (batch.value(0, f), parsed.value(0, f));
        assert_eq!(format!("{scanned:?}"), format!("{taped:?}"), "field {f}: the scan and the tape read different values");
    }

    // With no field to extract, the decoder proves the line valid with its
    // own scan alone: the event must be the same bytes.
    let mut bare = bare_builder();
    Decoder::new().decode_line(line, truncated, &extra, &fragment(), &mut bare);
    let bare = build(bare);
    assert_eq!(
        bare.events().next(),
        batch.events().next(),
        "the scan path and the tape path wrote different events"
    );

    if stats.wrapped == 1 {
        let text = String::from_utf8_lossy(line);
        assert_eq!(event.get("message").and_then(Value::as_str), Some(&*text), "wrapped message");
        assert_eq!(event.get("truncated") == Some(&Value::Bool(true)), truncated, "truncated flag");
        return;
    }
    assert!(!truncated, "a truncated line is always wrapped");
    // The line itself, as serde_json reads it (skipped where it cannot: deep
    // nesting past its recursion limit, or a key given twice).
    let Ok(Value::Object(own)) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    if !unique_keys(line) {
        return;
    }
    let mut want: Map<String, Value> = own.clone();
    for (k, v) in extra_kv {
        want.entry(k.to_string()).or_insert_with(|| Value::from(*v));
    }
    for (k, v) in metadata() {
        want.entry(k).or_insert(v);
    }
    assert_eq!(event, &want, "event members");
    for (f, path) in batch.fields().paths().iter().enumerate() {
        let got = batch.value(0, f);
        let expected = expected_value(&own, path);
        assert!(same_value(got, expected), "field {path:?}: got {got:?}, want {expected:?}");
    }
});
