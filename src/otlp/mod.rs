//! OpenTelemetry's protocol (OTLP) for logs and metrics: the protobuf
//! messages, the JSON form, gRPC framing, and the mappings between log
//! records and sluice events, and between data points and metric samples,
//! that the `otlp` source and sink share (docs/otlp.md). The hot paths of
//! logs read and write protobuf's wire format directly: `wire` (requests
//! to events, for the source) and `encode` (events to requests, for the
//! sink).

pub(crate) mod encode;
pub(crate) mod grpc;
pub(crate) mod json;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod proto;
pub(crate) mod wire;

/// The gRPC method of the logs service.
pub(crate) const LOGS_GRPC_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// The OTLP/HTTP path of logs.
pub(crate) const LOGS_HTTP_PATH: &str = "/v1/logs";
/// The gRPC method of the metrics service.
pub(crate) const METRICS_GRPC_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
/// The OTLP/HTTP path of metrics.
pub(crate) const METRICS_HTTP_PATH: &str = "/v1/metrics";

/// Fuzzing entry: reads `data` as an OTLP logs request (protobuf, or
/// OTLP/JSON when `json`), maps it to events and back. Panics if the wire
/// reader and prost disagree on whether the request is valid, if the
/// reader's events differ from those of prost's messages, if a source's
/// members are not spliced into each event exactly as decode would, if an
/// event is not one line of JSON object, or if events made from records
/// do not go back to the same number of records.
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
#[doc(hidden)]
pub fn fuzz_logs(data: &[u8], json: bool) {
    use prost::Message as _;
    let (request, wire_bytes) = if json {
        match json::logs_request(data) {
            Ok(r) => {
                let bytes = r.encode_to_vec();
                (Some(r), bytes)
            }
            Err(_) => return,
        }
    } else {
        (proto::ExportLogsServiceRequest::decode(data).ok(), data.to_vec())
    };
    let mut out = Vec::new();
    let rendered = wire::render_logs(&wire_bytes, &crate::enrich::Fragment::default(), &mut out);
    let Some(request) = request else {
        assert!(rendered.is_err(), "prost refused the request, the wire reader took it");
        assert!(out.is_empty(), "a refused request leaves no output");
        return;
    };
    let n = match rendered {
        Ok(n) => n,
        Err(e) => panic!("prost took the request, the wire reader refused it: {e}"),
    };
    assert_eq!(n, logs::record_count(&request));
    let mut want = Vec::new();
    assert_eq!(logs::reference::write_events(&request, &mut want), n);
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want),
        "wire reader and prost disagree"
    );

    // The source's members, spliced where the event lacks their key.
    let meta = serde_json::json!({"level": "meta", "host": "fuzz", "scope": 1, "custom": {"a": [1]}});
    let fragment = crate::enrich::Fragment::from_map(meta.as_object().expect("an object"));
    let mut spliced = Vec::new();
    assert_eq!(wire::render_logs(&wire_bytes, &fragment, &mut spliced).ok(), Some(n));
    let plain_lines = out.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let spliced_lines = spliced.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let mut builder = logs::RequestBuilder::default();
    let mut lines = 0;
    for (plain, line) in plain_lines.zip(spliced_lines) {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(plain).expect("an event is a JSON object");
        let mut expect = plain[..plain.len() - 1].to_vec();
        for m in fragment.members() {
            if !v.contains_key(m.key()) {
                if expect.len() > 1 {
                    expect.push(b',');
                }
                expect.extend_from_slice(m.rendered());
            }
        }
        expect.push(b'}');
        assert_eq!(
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(&expect),
            "members spliced as decode would"
        );
        let line: serde_json::Value = serde_json::from_slice(line).expect("an event is valid JSON");
        builder.push(&serde_json::Value::Object(v), 1);
        assert!(line.is_object());
        lines += 1;
    }
    assert_eq!(lines, n, "one line per record");
    let back = builder.take();
    assert_eq!(logs::record_count(&back), n);
    let _ = back.encode_to_vec();
}

/// Fuzzing entry: reads `data` as an OTLP metrics request (protobuf, or
/// OTLP/JSON when `json`), maps its data points to samples and back.
/// Panics if a sample is not one line of the sample schema, if more
/// samples and rejections come out than points went in, or if a sample
/// does not go back to a data point.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_metrics(data: &[u8], json: bool) {
    use prost::Message as _;
    let Some(request) = fuzz_decode(data, json, json::metrics_request) else {
        return;
    };
    let mut deltas = metrics::DeltaSeries::new(8, std::time::Duration::from_secs(300));
    let mut out = Vec::new();
    // Twice: the second pass adds every delta point to the first's.
    for _ in 0..2 {
        out.clear();
        let written = metrics::write_samples(&request, &crate::enrich::Fragment::default(), &mut deltas, 1, &mut out);
        assert!(written.samples + written.rejected_total() <= metrics::point_count(&request));
        let mut builder = metrics::MetricsBuilder::default();
        let mut lines = 0;
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("a sample is valid JSON");
            assert!(v.is_object(), "a sample is an object");
            // A sample whose numbers JSON cannot hold (NaN) is written with
            // null and is no sample for the sinks; every other one goes back.
            if crate::metrics::Sample::parse(line).is_ok() {
                assert!(builder.push(line), "a sample goes back to a data point");
            }
            lines += 1;
        }
        assert_eq!(lines, written.samples, "one line per sample");
        let _ = builder.take().encode_to_vec();
    }
}

/// A request from protobuf, or from OTLP/JSON with `from_json`.
#[cfg(feature = "fuzzing")]
fn fuzz_decode<T: prost::Message + Default, E>(data: &[u8], json: bool, from_json: impl Fn(&[u8]) -> Result<T, E>) -> Option<T> {
    if json {
        from_json(data).ok()
    } else {
        T::decode(data).ok()
    }
}

#[cfg(test)]
mod tests {
    /// The `otlp` fuzz target's logs seeds, cut at many lengths and with a
    /// bit of many bytes flipped, through the fuzz entry: the wire reader
    /// agrees with prost on every one, and never panics.
    #[test]
    fn every_cut_and_flip_of_the_logs_fuzz_seeds_reads_as_prost_reads_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/otlp");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let seed = std::fs::read(entry.unwrap().path()).unwrap();
            let Some((&selector, rest)) = seed.split_first() else { continue };
            if selector & 0x80 != 0 {
                continue;
            }
            let json = selector & 1 == 1;
            seeds += 1;
            // Every position of the small seeds; some 300 of a large one
            // (a unit test must stay quick on a loaded 2-core machine).
            let step = (rest.len() / 300).max(1);
            for n in (0..=rest.len()).step_by(step) {
                super::fuzz_logs(&rest[..n], json);
            }
            for i in (0..rest.len()).step_by(step) {
                let mut v = rest.to_vec();
                v[i] ^= [0x01, 0x08, 0x80][i % 3];
                super::fuzz_logs(&v, json);
            }
        }
        assert!(seeds >= 2, "{seeds} logs seeds");
    }
}
