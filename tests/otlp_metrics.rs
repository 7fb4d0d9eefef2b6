//! OTLP metrics: the `otlp` source against the OpenTelemetry Python and JS
//! SDKs' metric exporters (gRPC and HTTP, cumulative and delta), the
//! `otlp` sink against the independent receiver built from
//! `opentelemetry-proto`, the way into a real Prometheus through remote
//! write, and bad input.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::remote_write::RemoteWriteReceiver;
use support::{http_post, otel_python_bin, run_bounded, support_dir, Sluice, Stdout};

const WAIT: Duration = Duration::from_secs(60);

use support::otlp::{source_config as otlp_config, source_endpoint as endpoint};

/// What an SDK script printed: the data points it exported.
fn exported_points(printed: &str) -> usize {
    assert!(printed.contains("failed exports: 0"), "{printed}");
    printed
        .split("points: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no point count in {printed}"))
}

fn run_script(cmd: Command, what: &str) -> String {
    let out = run_bounded(cmd, None, Duration::from_secs(180));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

/// Series (metric and labels) to their samples, in arrival order.
fn by_series(samples: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for s in samples {
        let key = format!(
            "{} {}",
            s["metric"].as_str().unwrap_or_else(|| panic!("not a sample: {s}")),
            s["labels"]
        );
        out.entry(key).or_default().push(s.clone());
    }
    out
}

/// The newest sample of a series.
fn last<'a>(series: &'a BTreeMap<String, Vec<Value>>, metric: &str, labels: Value) -> &'a Value {
    let key = format!("{metric} {labels}");
    series
        .get(&key)
        .and_then(|v| v.last())
        .unwrap_or_else(|| panic!("no series {key} in {:?}", series.keys().collect::<Vec<_>>()))
}

/// Checks the samples of otel_metrics.py / otel_metrics.js: every series
/// has the values recorded, mapped as docs/otlp.md says.
fn check_sdk_samples(samples: &[Value], temporality: &str) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for s in samples {
        assert_eq!(s["release"]["version"], "1.4.2", "{s}");
        assert_eq!(s["process"]["service"], "checkout", "{s}");
        assert_eq!(s["kubernetes"]["namespace"], "shop", "{s}");
        assert_eq!(s["resource"]["deployment.environment"], "test", "{s}");
        assert_eq!(s["scope"]["name"], "app.orders", "{s}");
        let ts = s["timestamp_ms"].as_i64().unwrap_or(0);
        assert!((now_ms - ts).abs() < 3_600_000, "timestamp {ts} is not now: {s}");
    }
    let series = by_series(samples);
    // Delta or cumulative, the first export holds the first phase and the
    // newest sample the running total.
    let placed_a = &series[&format!("orders.placed {}", json!({"route": "/a"}))];
    assert_eq!(placed_a[0]["value"], 3, "{temporality}: {placed_a:?}");
    let a = last(&series, "orders.placed", json!({"route": "/a"}));
    assert_eq!(
        (a["kind"].as_str(), a["value"].as_f64()),
        (Some("counter"), Some(8.0)),
        "{temporality}: {a}"
    );
    assert_eq!(a["description"], "orders placed");
    let b = last(&series, "orders.placed", json!({"route": "/b"}));
    assert_eq!(b["value"], 10, "{temporality}: {b}");
    let open = last(&series, "orders.open", json!({}));
    assert_eq!(
        (open["kind"].as_str(), open["value"].as_f64()),
        (Some("gauge"), Some(5.0)),
        "{temporality}: {open}"
    );
    let temp = last(&series, "cpu.temp", json!({"core": "0"}));
    assert_eq!(
        (temp["kind"].as_str(), temp["value"].as_f64()),
        (Some("gauge"), Some(23.25)),
        "{temp}"
    );
    assert_eq!(temp["unit"], "Cel");
    let amount = last(&series, "order.amount", json!({}));
    assert_eq!(amount["kind"], "histogram");
    assert_eq!(
        amount["buckets"],
        json!([{"le": 10, "count": 1}, {"le": 50, "count": 3}, {"le": 100, "count": 4}]),
        "{temporality}: {amount}"
    );
    assert_eq!((amount["count"].as_f64(), amount["sum"].as_f64()), (Some(5.0), Some(275.0)));
    let latency = last(&series, "order.latency", json!({}));
    let values = [0.6, 1.5, 3.0, 12.0, 100.0, 0.0];
    assert_eq!(latency["kind"], "histogram");
    assert_eq!(latency["count"].as_f64(), Some(6.0), "{latency}");
    assert_eq!(latency["sum"].as_f64(), Some(values.iter().sum::<f64>()), "{latency}");
    let buckets = latency["buckets"].as_array().unwrap();
    assert!(buckets.len() >= 5, "each value in a bucket of its own: {latency}");
    let mut last_le = f64::NEG_INFINITY;
    for b in buckets {
        let le = b["le"].as_f64().unwrap();
        assert!(le > last_le, "bounds ascend: {latency}");
        last_le = le;
        let below = values.iter().filter(|v| **v <= le).count() as f64;
        assert_eq!(b["count"].as_f64(), Some(below), "bucket le={le}: {latency}");
    }
}

/// Runs an SDK script (`cmd`, given the endpoint) against a fresh
/// sluice; returns the samples, exactly as many as it exported points.
fn sdk_export(protocol: &str, script: impl FnOnce(&str) -> Command) -> Vec<Value> {
    let s = Sluice::builder().config(&otlp_config("")).stdout(Stdout::Collect).start();
    let target = endpoint(&s, if protocol == "grpc" { "gRPC" } else { "HTTP" });
    let points = exported_points(&run_script(script(&target), "the SDK script"));
    let samples = s.events(points, WAIT);
    assert!(
        s.remaining_events(Duration::from_millis(500)).is_empty(),
        "more samples than data points"
    );
    samples
}

/// otel_metrics.py's samples (the Python SDK).
fn python_export(protocol: &str, temporality: &str) -> Vec<Value> {
    sdk_export(protocol, |target| {
        let mut cmd = Command::new(otel_python_bin());
        cmd.arg(support_dir().join("otel_metrics.py")).args([protocol, target, temporality]);
        cmd
    })
}

#[test]
fn metrics_from_the_python_sdk_arrive_once_each_over_grpc_and_http_mapped_as_documented() {
    check_sdk_samples(&python_export("grpc", "cumulative"), "cumulative");
    check_sdk_samples(&python_export("http", "delta"), "delta");
}

/// otel_metrics.js's samples (the JS SDK).
fn node_export(protocol: &str, temporality: &str) -> Vec<Value> {
    sdk_export(protocol, |target| {
        let mut cmd = Command::new(support::node_bin());
        cmd.arg(support_dir().join("otel_metrics.js"))
            .args([protocol, target, temporality])
            .env("NODE_PATH", support::otel_metrics_node_modules_dir());
        cmd
    })
}

#[test]
fn metrics_from_the_node_sdk_arrive_once_each_over_grpc_and_http_mapped_as_documented() {
    check_sdk_samples(&node_export("grpc", "delta"), "delta");
    check_sdk_samples(&node_export("http", "cumulative"), "cumulative");
}

#[test]
fn otlp_metrics_go_in_and_out_again_unchanged_over_http() {
    support::otlp::round_trip("metrics", "http", "gzip");
}

#[test]
fn otlp_metrics_go_in_and_out_again_unchanged_over_grpc() {
    support::otlp::round_trip("metrics", "grpc", "gzip");
}

#[test]
fn sdk_metrics_reach_prometheus_through_remote_write_while_the_logs_of_the_same_source_do_not() {
    let prom = RemoteWriteReceiver::start();
    let config = otlp_config("")
        + &format!(
            "[sinks.rw]\ntype = \"prometheus_remote_write\"\nendpoint = \"{}\"\n\
             metadata_labels = {{ service = \"process.service\", release = \"release.version\" }}\n\
             [sinks.rw.batch]\ntimeout = \"100ms\"\n",
            prom.write_url()
        );
    let s = Sluice::builder().config(&config).stdout(Stdout::Collect).start();
    let grpc = endpoint(&s, "gRPC");
    let mut cmd = Command::new(otel_python_bin());
    cmd.arg(support_dir().join("otel_metrics.py")).args(["grpc", &grpc, "cumulative"]);
    let points = exported_points(&run_script(cmd, "otel_metrics.py"));
    let mut cmd = Command::new(otel_python_bin());
    cmd.arg(support_dir().join("otel_logs.py")).args(["grpc", &grpc, "10", "0"]);
    run_script(cmd, "otel_logs.py");
    // stdout carries both kinds.
    let events = s.events(points + 10, WAIT);
    assert_eq!(events.iter().filter(|e| e.get("metric").is_some()).count(), points);
    assert_eq!(events.iter().filter(|e| e.get("message").is_some()).count(), 10);
    // Prometheus has the metrics, named its way, labelled by their
    // resource through metadata_labels.
    prom.wait_for_value(r#"orders_placed{route="/a",service="checkout",release="1.4.2"}"#, 8.0, WAIT);
    prom.wait_for_value(r#"orders_placed{route="/b"}"#, 10.0, WAIT);
    prom.wait_for_value("orders_open", 5.0, WAIT);
    prom.wait_for_value(r#"cpu_temp{core="0"}"#, 23.25, WAIT);
    prom.wait_for_value(r#"order_amount_bucket{le="50"}"#, 3.0, WAIT);
    prom.wait_for_value(r#"order_amount_bucket{le="+Inf"}"#, 5.0, WAIT);
    prom.wait_for_value("order_amount_sum", 275.0, WAIT);
    prom.wait_for_value("order_latency_count", 6.0, WAIT);
    // The log batches never went to the remote write sink.
    let m = s.metrics();
    assert_eq!(m.value(r#"sluice_events_dropped_total{component="rw",reason="not_a_metric"}"#), 0.0);
    assert_eq!(m.value(r#"sluice_sink_events_total{sink="out"}"#), (points + 10) as f64);
}

#[test]
fn sdk_metrics_are_served_for_pull_labelled_by_their_resource_through_metadata_labels() {
    let config = otlp_config("")
        + "[sinks.pull]\ntype = \"prometheus_exporter\"\naddress = \"127.0.0.1:0\"\n\
           external_labels = { cluster = \"eu1\" }\n\
           metadata_labels = { service = \"process.service\", release = \"release.version\" }\n";
    let s = Sluice::builder().config(&config).stdout(Stdout::Collect).start();
    let exporter = s.logged_address("serving metrics for pull", None, WAIT);
    let grpc = endpoint(&s, "gRPC");
    let mut cmd = Command::new(otel_python_bin());
    cmd.arg(support_dir().join("otel_metrics.py")).args(["grpc", &grpc, "cumulative"]);
    exported_points(&run_script(cmd, "otel_metrics.py"));
    // The SDK's resource (service.name checkout, service.version 1.4.2)
    // labels its series; the sample's own route label stays.
    let text = support::wait_until("the exporter to show the labelled orders", WAIT, || {
        let (_, body) = support::http_get(&format!("http://{exporter}/metrics"));
        body.contains("orders_placed_total{cluster=\"eu1\",release=\"1.4.2\",route=\"/a\",service=\"checkout\"} 8\n")
            .then_some(body)
    });
    assert!(
        text.contains("orders_placed_total{cluster=\"eu1\",release=\"1.4.2\",route=\"/b\",service=\"checkout\"} 10\n"),
        "{text}"
    );
    support::promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
}

#[test]
fn bad_metric_exports_get_a_clear_4xx_and_rejected_data_points_are_reported_as_partial_success() {
    let s = Sluice::builder().config(&otlp_config("")).stdout(Stdout::Collect).start();
    let url = format!("{}/v1/metrics", endpoint(&s, "HTTP"));
    let (status, body) = http_post(&url, &[("content-type", "application/x-protobuf")], b"\xff\xff\xff not protobuf");
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_post(&url, &[("content-type", "text/plain")], b"hello");
    assert_eq!(status, 415, "{body}");
    let (status, body) = http_post(
        &url,
        &[("content-type", "application/json")],
        br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x","gauge":{"dataPoints":[{"asDouble":"many"}]}}]}]}]}"#,
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].asDouble"),
        "{body}"
    );
    // One good point and one whose buckets do not add up: the good one is
    // taken, the other reported.
    let json = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
        "scopeMetrics":[{"metrics":[{"name":"lat","histogram":{"aggregationTemporality":2,"dataPoints":[
          {"timeUnixNano":"1780000000000000000","count":"3","sum":4.5,"bucketCounts":["1","2"],"explicitBounds":[1.0]},
          {"count":"9","bucketCounts":["1","2"],"explicitBounds":[1.0]}]}}]}]}]}"#;
    let (status, body) = http_post(&url, &[("content-type", "application/json")], json);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedDataPoints"], "1", "{body}");
    assert!(
        answer["partialSuccess"]["errorMessage"].as_str().unwrap().contains("buckets"),
        "{body}"
    );
    let e = &s.events(1, WAIT)[0];
    assert_eq!(e["metric"], "lat");
    assert_eq!(e["buckets"], json!([{"le": 1, "count": 1}]));
    assert_eq!(e["timestamp_ms"], 1_780_000_000_000i64);
    assert_eq!(e["process"]["service"], "cart");
    let m = s.metrics();
    for (reason, n) in [("malformed", 2.0), ("unsupported", 1.0)] {
        let series = format!(r#"sluice_otlp_requests_refused_total{{reason="{reason}",source="otel"}}"#);
        assert_eq!(m.value(&series), n, "{series}");
    }
    assert_eq!(
        m.value(r#"sluice_otlp_data_points_rejected_total{reason="buckets",source="otel"}"#),
        1.0
    );
}

#[test]
fn with_acknowledgements_a_metrics_export_is_answered_only_once_prometheus_has_its_samples() {
    let mut prom = RemoteWriteReceiver::start();
    prom.stop();
    let config = otlp_config("acknowledgements = true")
        + &format!(
            "[sinks.rw]\ntype = \"prometheus_remote_write\"\nendpoint = \"{}\"\n[sinks.rw.batch]\ntimeout = \"50ms\"\n\
             [sinks.rw.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n",
            prom.write_url()
        );
    let s = Sluice::builder().config(&config).stdout(Stdout::Collect).start();
    let url = format!("{}/v1/metrics", endpoint(&s, "HTTP"));
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let body = format!(
        r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"jobs.done","sum":{{"aggregationTemporality":2,"isMonotonic":true,
            "dataPoints":[{{"asInt":"42","timeUnixNano":"{now_ns}"}}]}}}}]}}]}}]}}"#
    );
    let export = std::thread::spawn(move || http_post(&url, &[("content-type", "application/json")], body.as_bytes()));
    // stdout has the sample at once; the answer waits for Prometheus.
    assert_eq!(s.events(1, WAIT)[0]["value"], 42);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!export.is_finished(), "answered while Prometheus was down");
    prom.start_again();
    let (status, body) = export.join().unwrap();
    assert_eq!(status, 200, "{body}");
    prom.wait_for_value("jobs_done", 42.0, WAIT);
}
