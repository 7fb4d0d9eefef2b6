//! OpenTelemetry's protocol (OTLP) for logs and metrics: the protobuf
//! messages, the JSON form, gRPC framing, and the mappings between log
//! records and sluice events, and between data points and metric samples,
//! that the `otlp` source and sink share (docs/otlp.md).

pub(crate) mod grpc;
pub(crate) mod json;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod proto;

/// The gRPC method of the logs service.
pub(crate) const LOGS_GRPC_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// The OTLP/HTTP path of logs.
pub(crate) const LOGS_HTTP_PATH: &str = "/v1/logs";
/// The gRPC method of the metrics service.
pub(crate) const METRICS_GRPC_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
/// The OTLP/HTTP path of metrics.
pub(crate) const METRICS_HTTP_PATH: &str = "/v1/metrics";

/// Fuzzing entry: reads `data` as an OTLP logs request (protobuf, or
/// OTLP/JSON when `json`), maps it to events and back. Panics if an event
/// is not one line of JSON object, if the record count differs, or if
/// events made from records do not go back to the same number of records.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_logs(data: &[u8], json: bool) {
    use prost::Message as _;
    let Some(request) = fuzz_decode(data, json, json::logs_request) else {
        return;
    };
    let mut out = Vec::new();
    let n = logs::write_events(&request, &mut out);
    assert_eq!(n, logs::record_count(&request));
    let mut builder = logs::RequestBuilder::default();
    let mut lines = 0;
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).expect("an event is valid JSON");
        assert!(v.is_object(), "an event is an object");
        builder.push(&v, 1);
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
