//! The `otlp` source against the OpenTelemetry Python SDK's own exporters
//! (gRPC and HTTP), raw OTLP/HTTP requests for bad input, and a stalled
//! sink for backpressure.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use support::{http_post, otel_python_bin, run_bounded, support_dir, Loki, LokiMode, OtlpReceiver, Sluice, Stdout};

const WAIT: Duration = Duration::from_secs(60);

use support::otlp::{source_config as otlp_config, source_endpoint as endpoint};

/// Runs tests/support/otel_logs.py; returns what it printed.
fn send_with_sdk(protocol: &str, endpoint: &str, count: u64, first: u64) -> String {
    let mut cmd = Command::new(otel_python_bin());
    cmd.arg(support_dir().join("otel_logs.py"))
        .args([protocol, endpoint, &count.to_string(), &first.to_string()]);
    let out = run_bounded(cmd, None, Duration::from_secs(180));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "otel_logs.py failed: {text}");
    text
}

/// Runs tests/support/otel_logs.js (the OpenTelemetry JS SDK); returns
/// what it printed.
fn send_with_node_sdk(protocol: &str, endpoint: &str, count: u64, first: u64) -> String {
    let mut cmd = Command::new(support::node_bin());
    cmd.arg(support_dir().join("otel_logs.js"))
        .args([protocol, endpoint, &count.to_string(), &first.to_string()])
        .env("NODE_PATH", support::otel_node_modules_dir());
    let out = run_bounded(cmd, None, Duration::from_secs(180));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "otel_logs.js failed: {text}");
    text
}

/// Every event by its `order.id`, asserting none arrived twice.
fn by_order(events: &[serde_json::Value]) -> BTreeMap<u64, serde_json::Value> {
    let mut out = BTreeMap::new();
    for e in events {
        let id = e["attributes"]["order.id"].as_u64().unwrap_or_else(|| panic!("no order.id in {e}"));
        assert!(out.insert(id, e.clone()).is_none(), "order {id} arrived twice");
    }
    out
}

fn check_mapping(e: &serde_json::Value, id: u64) {
    assert_eq!(e["message"], format!("order {id} placed"), "{e}");
    let (level, number) = if id % 10 == 0 { ("ERROR", 17) } else { ("INFO", 9) };
    assert_eq!(e["level"], level, "{e}");
    assert_eq!(e["severity_number"], number, "{e}");
    assert_eq!(e["attributes"]["amount"].as_f64(), Some(id as f64 * 1.5), "{e}");
    assert_eq!(e["scope"]["name"], "app.orders", "{e}");
    assert_eq!(e["release"]["version"], "1.4.2", "{e}");
    assert_eq!(e["process"]["service"], "checkout", "{e}");
    assert_eq!(e["kubernetes"]["namespace"], "shop", "{e}");
    assert_eq!(e["resource"]["deployment.environment"], "test", "{e}");
    let ts = e["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp in {e}"));
    assert!(ts.ends_with('Z') && ts.starts_with("20"), "{e}");
}

#[test]
fn records_from_the_python_sdk_arrive_once_each_over_grpc_and_http_mapped_as_documented() {
    let s = Sluice::builder().config(&otlp_config("")).stdout(Stdout::Collect).start();
    let grpc = endpoint(&s, "gRPC");
    let http = endpoint(&s, "HTTP");
    let printed = send_with_sdk("grpc", &grpc, 1000, 0);
    assert!(printed.contains("failed exports: 0"), "{printed}");
    let printed = send_with_sdk("http", &http, 1000, 1000);
    assert!(printed.contains("failed exports: 0"), "{printed}");
    let events = s.events(2000, WAIT);
    let got = by_order(&events);
    assert_eq!(got.len(), 2000);
    for (id, e) in &got {
        check_mapping(e, *id);
    }
    assert!(
        s.remaining_events(Duration::from_millis(500)).is_empty(),
        "more events than records"
    );
}

/// Starts reading sluice's stdout on a thread: the first `n` events.
fn read_events(s: &mut Sluice, n: usize) -> std::thread::JoinHandle<Vec<serde_json::Value>> {
    let stdout = s.take_stdout();
    std::thread::spawn(move || {
        let mut events = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            events.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
            if events.len() == n {
                break;
            }
        }
        events
    })
}

#[test]
fn records_from_the_node_sdk_arrive_once_each_over_grpc_and_http_mapped_as_documented() {
    let s = Sluice::builder().config(&otlp_config("")).stdout(Stdout::Collect).start();
    let printed = send_with_node_sdk("grpc", &endpoint(&s, "gRPC"), 1000, 0);
    assert!(printed.contains("failed exports: 0"), "{printed}");
    let printed = send_with_node_sdk("http", &endpoint(&s, "HTTP"), 1000, 1000);
    assert!(printed.contains("failed exports: 0"), "{printed}");
    let got = by_order(&s.events(2000, WAIT));
    assert_eq!(got.len(), 2000);
    for (id, e) in &got {
        check_mapping(e, *id);
    }
    assert!(
        s.remaining_events(Duration::from_millis(500)).is_empty(),
        "more events than records"
    );
}

#[test]
fn a_full_pipeline_makes_the_source_answer_retry_later_and_the_sdk_retries_until_nothing_is_lost() {
    const RECORDS: u64 = 20_000;
    let config = otlp_config("queue_timeout = \"200ms\"\nretry_after = \"1s\"") + "[sinks.out.buffer]\nmax_events = 100\n";
    let mut s = Sluice::builder().config(&config).stdout(Stdout::Raw).start();
    let http = endpoint(&s, "HTTP");
    let api = s.api_address();
    // Nobody reads sluice's stdout yet: the pipeline fills and stays full.
    let sender = std::thread::spawn(move || send_with_sdk("http", &http, RECORDS, 0));
    let busy = r#"sluice_otlp_requests_refused_total{reason="busy",source="otel"}"#;
    support::eventually("a request refused as busy", WAIT, || support::scrape(&api).value(busy) > 0.0);
    let reader = read_events(&mut s, RECORDS as usize);
    let printed = sender.join().unwrap();
    assert!(printed.contains("failed exports: 0"), "the SDK gave up on an export: {printed}");
    let got = by_order(&reader.join().unwrap());
    assert_eq!(got.len() as u64, RECORDS, "every record arrives, once");
}

/// How long the SDK's export of 100 records takes while Loki answers 500,
/// with Loki back after `outage`; asserts every record reaches Loki.
fn export_during_a_loki_outage(acknowledgements: bool, outage: Duration) -> Duration {
    let loki = Loki::start();
    loki.set_mode(LokiMode::ServerError, None);
    let config = format!(
        "[enrich]\ndisable_host = true\n[sources.otel]\ntype = \"otlp\"\ngrpc_address = \"127.0.0.1:0\"\n\
         http_address = \"\"\nacknowledgements = {acknowledgements}\n\
         [sinks.loki]\ntype = \"loki\"\nendpoint = \"{url}\"\nlabels = {{ service = \"{{{{ process.service }}}}\" }}\n\
         [sinks.loki.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n",
        url = loki.url
    );
    let s = Sluice::builder().config(&config).stdout(Stdout::Null).start();
    let grpc = endpoint(&s, "gRPC");
    let started = std::time::Instant::now();
    let sender = std::thread::spawn(move || send_with_sdk("grpc", &grpc, 100, 0));
    support::eventually("the Loki sink's first failed push", WAIT, || loki.stats().pushes > 0);
    while started.elapsed() < outage && !sender.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = if sender.is_finished() { started.elapsed() } else { outage };
    loki.set_mode(LokiMode::Ok, None);
    let printed = sender.join().unwrap();
    assert!(printed.contains("failed exports: 0"), "{printed}");
    loki.wait_for_entries(100, WAIT);
    took
}

#[test]
fn with_acknowledgements_an_export_is_answered_only_once_every_sink_has_delivered_it() {
    let outage = Duration::from_secs(3);
    // Without acknowledgements the SDK is answered at once, Loki or not.
    let took = export_during_a_loki_outage(false, outage);
    assert!(took < outage, "answered after {took:?} without acknowledgements");
    // With them, not before Loki took the records.
    let took = export_during_a_loki_outage(true, outage);
    assert!(took >= outage, "answered after {took:?}, while Loki was still failing");
}

#[test]
fn bad_requests_get_a_clear_4xx_and_are_counted_and_a_json_request_is_taken() {
    let s = Sluice::builder()
        .config(&otlp_config("max_request_bytes = \"64KiB\""))
        .stdout(Stdout::Collect)
        .start();
    let http = endpoint(&s, "HTTP");
    let url = format!("{http}/v1/logs");
    let proto = [("content-type", "application/x-protobuf")];
    let (status, _) = http_post(&url, &proto, b"\xff\xff\xff not protobuf");
    assert_eq!(status, 400);
    let (status, body) = http_post(&url, &[("content-type", "text/plain")], b"hello");
    assert_eq!(status, 415, "{body}");
    let (status, _) = http_post(&format!("{http}/v1/traces"), &proto, b"");
    assert_eq!(status, 404);
    let (status, _) = http_post(&url, &proto, &vec![0u8; 100 << 10]);
    assert_eq!(status, 413);
    // A small gzip body that inflates past the limit is refused too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &vec![b'{'; 1 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    let (status, _) = http_post(&url, &[("content-type", "application/json"), ("content-encoding", "gzip")], &bomb);
    assert_eq!(status, 413);
    let (status, body) = http_post(
        &url,
        &[("content-type", "application/json")],
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"not hex"}]}]}]}"#,
    );
    assert_eq!(status, 400);
    assert!(body.contains("traceId"), "{body}");
    let json = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
        "scopeLogs":[{"logRecords":[{"timeUnixNano":"1780000000000000001","severityText":"WARN",
        "body":{"stringValue":"low stock"},"traceId":"0102030405060708090a0b0c0d0e0f10"}]}]}]}"#;
    let (status, body) = http_post(&url, &[("content-type", "application/json")], json);
    assert_eq!((status, body.as_str()), (200, "{}"));
    let e = &s.events(1, WAIT)[0];
    assert_eq!(e["message"], "low stock");
    assert_eq!(e["level"], "WARN");
    assert_eq!(e["process"]["service"], "cart");
    assert_eq!(e["trace_id"], "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(e["timestamp"], "2026-05-28T20:26:40.000000001Z");
    let m = s.metrics();
    for (reason, n) in [("malformed", 2.0), ("unsupported", 2.0), ("too_large", 2.0)] {
        let series = format!(r#"sluice_otlp_requests_refused_total{{reason="{reason}",source="otel"}}"#);
        assert_eq!(m.value(&series), n, "{series}");
    }
}

#[test]
fn an_otlp_log_goes_in_and_out_again_unchanged_over_http() {
    support::otlp::round_trip("logs", "http", "gzip");
}

#[test]
fn an_otlp_log_goes_in_and_out_again_unchanged_over_grpc() {
    support::otlp::round_trip("logs", "grpc", "gzip");
    support::otlp::round_trip("logs", "grpc", "none");
}

#[test]
fn failed_exports_are_retried_and_only_what_the_receiver_kept_is_counted_delivered() {
    for protocol in ["http", "grpc"] {
        let receiver = OtlpReceiver::start();
        receiver.fail_next(3);
        let target = if protocol == "grpc" { &receiver.grpc } else { &receiver.http };
        let config = format!(
            "[api]\naddress = \"127.0.0.1:0\"\n[sources.in]\ntype = \"stdin\"\n\
             [sinks.out]\ntype = \"otlp\"\nendpoint = \"{target}\"\nprotocol = \"{protocol}\"\n\
             [sinks.out.batch]\ntimeout = \"100ms\"\n[sinks.out.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n"
        );
        let mut s = Sluice::builder().config(&config).stdin_piped().stdout(Stdout::Null).start();
        let lines: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"msg":"line {i}","level":"info","seq":{i}}}"#))
            .collect();
        s.write_lines(&lines);
        receiver.wait_for_records(50, WAIT);
        let m = s.wait_for_metrics("the sink's delivered count", WAIT, |m| {
            m.value(r#"sluice_sink_events_total{sink="out"}"#) >= 50.0
        });
        assert_eq!(m.value(r#"sluice_sink_events_total{sink="out"}"#), 50.0, "{protocol}");
        assert!(m.value(r#"sluice_sink_retries_total{sink="out"}"#) >= 3.0, "{protocol}");
        assert_eq!(receiver.record_count(), 50, "{protocol}: nothing twice");
        s.close_stdin();
        s.finish(WAIT);
    }
}

#[test]
fn requests_past_max_concurrent_requests_are_refused_as_busy_while_the_others_wait() {
    let loki = Loki::start();
    loki.set_mode(LokiMode::ServerError, None);
    let config = format!(
        "[api]\naddress = \"127.0.0.1:0\"\n[sources.otel]\ntype = \"otlp\"\ngrpc_address = \"\"\nhttp_address = \"127.0.0.1:0\"\n\
         acknowledgements = true\nmax_concurrent_requests = 1\nqueue_timeout = \"200ms\"\n\
         [sinks.loki]\ntype = \"loki\"\nendpoint = \"{url}\"\n[sinks.loki.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n",
        url = loki.url
    );
    let s = Sluice::builder().config(&config).stdout(Stdout::Null).start();
    let url = format!("{}/v1/logs", endpoint(&s, "HTTP"));
    let body = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"held"}}]}]}]}"#;
    let first = {
        let url = url.clone();
        std::thread::spawn(move || http_post(&url, &[("content-type", "application/json")], body))
    };
    support::eventually("the first export held by a failing Loki", WAIT, || loki.stats().pushes > 0);
    // The one slot is taken by the first export, waiting for Loki.
    let (status, answer) = http_post(&url, &[("content-type", "application/json")], body);
    assert_eq!(status, 503, "{answer}");
    loki.set_mode(LokiMode::Ok, None);
    assert_eq!(first.join().unwrap().0, 200);
    let (status, _) = http_post(&url, &[("content-type", "application/json")], body);
    assert_eq!(status, 200, "the slot is free again");
    loki.wait_for_entries(2, WAIT);
}
