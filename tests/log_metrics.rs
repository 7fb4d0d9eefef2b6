//! `[[metrics]]` log-to-metric rules end to end: events on stdin, rules
//! with conditions, labels from fields, a series limit and bad values; the
//! derived series leave through the `internal_metrics` source into a
//! `prometheus_exporter` sink, which is scraped and checked with
//! `promtool check metrics`, as is sluice's own `/metrics`.

mod support;

use std::time::Duration;

use support::metrics::Metrics;
use support::{promtool_check_metrics, wait_until, Sluice};

const WAIT: Duration = Duration::from_secs(30);

const RULES: &str = r#"
[[metrics]]
name = "app_http_errors"
kind = "counter"
help = "Requests that failed with a 5xx status."
when = { field = "status", gte = 500 }
labels = { route = "path", method = "method" }

[[metrics]]
name = "app_request_latency"
kind = "histogram"
value = "duration_ms"
buckets = [10, 100, 1000]
labels = { service = "service" }

[[metrics]]
name = "app_bytes"
kind = "counter"
increment_by = "bytes"
when = { field = "service", equals = "web" }

[[metrics]]
name = "app_users"
kind = "counter"
labels = { user = "user" }
max_series = 3
"#;

/// sluice with a stdin source, the rules, and their series going out
/// through `internal_metrics` into the metric sink `sink` (named `pull`).
fn start_with(sink: &str) -> Sluice {
    let config = format!(
        r#"
[api]
address = "127.0.0.1:0"
[sources.stdin]
type = "stdin"
detect_writer = false
[sources.self]
type = "internal_metrics"
interval = "200ms"
prefixes = ["app_"]
[sinks.null]
type = "blackhole"
inputs = ["stdin"]
[sinks.pull]
inputs = ["self"]
{sink}
{RULES}"#
    );
    Sluice::builder()
        .config(&config)
        .stdin_piped()
        .stdout(support::Stdout::Null)
        .start()
        .serving()
}

/// [`start_with`] an exporter sink: the process and the exporter's address.
fn start() -> (Sluice, String) {
    let s = start_with("type = \"prometheus_exporter\"\naddress = \"127.0.0.1:0\"");
    let exporter = s.logged_address("serving metrics for pull", None, WAIT);
    (s, exporter)
}

/// What the rules must make of the input.
#[derive(Default)]
struct Expected {
    errors_by_route_method: std::collections::BTreeMap<(String, String), u64>,
    /// Per service: observations per bucket (<= 10, <= 100, <= 1000, +Inf).
    buckets: std::collections::BTreeMap<String, [u64; 4]>,
    sum_ms: std::collections::BTreeMap<String, f64>,
    web_bytes: u64,
}

fn input() -> (String, Expected, usize) {
    let mut text = String::new();
    let mut want = Expected::default();
    let n = 600;
    for i in 0..n {
        let service = ["web", "api", "worker"][i % 3];
        let path = ["/a", "/b", "/c", "/d"][i % 4];
        let method = ["GET", "POST"][i % 2];
        let status = [200, 200, 503, 404, 500][i % 5];
        let ms = (i * 37 % 2000) as f64 + 0.5;
        let bytes = i % 17;
        let user = format!("u{}", i % 10);
        let event = serde_json::json!({"service": service, "path": path, "method": method, "status": status, "duration_ms": ms, "bytes": bytes, "user": user});
        text.push_str(&event.to_string());
        text.push('\n');
        if status >= 500 {
            *want.errors_by_route_method.entry((path.to_owned(), method.to_owned())).or_default() += 1;
        }
        let b = [10.0, 100.0, 1000.0].iter().position(|b| ms <= *b).unwrap_or(3);
        want.buckets.entry(service.to_owned()).or_default()[b] += 1;
        *want.sum_ms.entry(service.to_owned()).or_default() += ms;
        if service == "web" {
            want.web_bytes += bytes as u64;
        }
    }
    // Bad values: counted, never a panic, never an observation.
    text.push_str("{\"service\":\"web\",\"duration_ms\":\"fast\",\"bytes\":\"many\",\"user\":\"u1\"}\n");
    text.push_str("{\"service\":\"web\",\"bytes\":-4,\"user\":\"u1\"}\n");
    text.push_str("not json\n");
    (text, want, n + 3)
}

#[test]
fn counters_and_histograms_reach_the_exporter_exactly_and_pass_promtool() {
    let (mut s, exporter) = start();
    let (text, want, lines) = input();
    s.write(text.as_bytes());
    let users_total = lines as f64;

    // The exporter shows the final counts once a flush after the last event
    // has gone through.
    let scraped = wait_until("every event counted at the exporter", WAIT, || {
        let (_, body) = support::http_get(&format!("http://{exporter}/metrics"));
        let m = Metrics::parse(&body);
        (m.sum("app_users_total", &[]) == users_total).then_some(m)
    });
    for ((route, method), n) in &want.errors_by_route_method {
        assert_eq!(
            scraped.get("app_http_errors_total", &[("route", route), ("method", method)]),
            Some(*n as f64),
            "{route} {method}\n{}",
            scraped.text
        );
    }
    assert_eq!(
        scraped.sum("app_http_errors_total", &[]),
        want.errors_by_route_method.values().sum::<u64>() as f64
    );
    for (service, counts) in &want.buckets {
        let mut cumulative = 0;
        for (le, n) in ["10", "100", "1000", "+Inf"].iter().zip(counts) {
            cumulative += n;
            assert_eq!(
                scraped.get("app_request_latency_bucket", &[("service", service), ("le", le)]),
                Some(cumulative as f64),
                "{service} le={le}\n{}",
                scraped.text
            );
        }
        assert_eq!(
            scraped.get("app_request_latency_count", &[("service", service)]),
            Some(cumulative as f64)
        );
        let sum = scraped.get("app_request_latency_sum", &[("service", service)]).unwrap_or(f64::NAN);
        assert!((sum - want.sum_ms[service]).abs() < 1e-6, "{service}: sum {sum}");
    }
    assert_eq!(scraped.get("app_bytes_total", &[]), Some(want.web_bytes as f64));
    // Three users get a series; the other seven go to overflow.
    let per_user: Vec<f64> = scraped.matching("app_users_total", &[]).map(|s| s.value).collect();
    assert_eq!(per_user.len(), 4, "{}", scraped.text);
    assert_eq!(
        scraped.get("app_users_total", &[("user", "__overflow__")]),
        Some(users_total - 3.0 * 60.0 - 2.0),
        "{}",
        scraped.text
    );
    promtool_check_metrics(&scraped.text).unwrap_or_else(|e| panic!("promtool on the exporter: {e}\n{}", scraped.text));

    // sluice's own /metrics carries the same series and the rules' counts of
    // what they could not measure.
    let own = s.metrics();
    assert_eq!(
        own.get("sluice_log_metric_series_overflow_total", &[("metric", "app_users")]),
        Some(users_total - 3.0 * 60.0 - 2.0)
    );
    assert_eq!(own.get("sluice_log_metric_series", &[("metric", "app_users")]), Some(3.0));
    for (metric, reason, n) in [
        ("app_request_latency", "invalid_value", 1.0),
        ("app_request_latency", "missing_value", 2.0),
        ("app_bytes", "invalid_value", 2.0),
        ("app_bytes", "missing_value", 0.0),
    ] {
        assert_eq!(
            own.get("sluice_log_metric_events_invalid_total", &[("metric", metric), ("reason", reason)]),
            Some(n),
            "{metric} {reason}"
        );
    }
    assert_eq!(own.sum("app_users_total", &[]), users_total);
    // The sample schema carries no help text: the rule's own is on /metrics.
    assert!(own
        .text
        .contains("# HELP app_http_errors_total Requests that failed with a 5xx status."));
    promtool_check_metrics(&own.text).unwrap_or_else(|e| panic!("promtool on /metrics: {e}\n{}", own.text));
    // The internal_metrics source keeps running after stdin's end: stop it.
    let (status, _) = s.stop();
    assert!(status.success(), "{}", s.logs());
}

#[test]
fn remote_write_into_a_real_prometheus_carries_the_exact_counts() {
    let prom = support::remote_write::RemoteWriteReceiver::start();
    let mut s = start_with(&format!(
        "type = \"prometheus_remote_write\"\nendpoint = \"{}\"\nbatch.timeout = \"100ms\"",
        prom.write_url()
    ));
    let (text, want, lines) = input();
    s.write(text.as_bytes());
    prom.wait_for_value("sum(app_users_total)", lines as f64, WAIT);
    for ((route, method), n) in &want.errors_by_route_method {
        let q = format!("sum(app_http_errors_total{{route=\"{route}\",method=\"{method}\"}})");
        prom.wait_for_value(&q, *n as f64, WAIT);
    }
    let web = want.buckets["web"];
    prom.wait_for_value(
        "sum(app_request_latency_bucket{service=\"web\",le=\"100\"})",
        (web[0] + web[1]) as f64,
        WAIT,
    );
    prom.wait_for_value("sum(app_bytes_total)", want.web_bytes as f64, WAIT);
    prom.wait_for_value("sum(app_users_total{user=\"__overflow__\"})", lines as f64 - 182.0, WAIT);
    let (status, _) = s.stop();
    assert!(status.success(), "{}", s.logs());
}

#[test]
fn validate_reports_bad_rules_with_their_key_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[sources.app]
type = "stdin"
[sinks.out]
type = "blackhole"
[[metrics]]
name = "ok"
kind = "counter"
[[metrics]]
name = "lat"
kind = "histogram"
value = "ms"
buckets = [5, 1]
sources = ["app", "nope"]
[[metrics]]
name = "g"
kind = "gauge"
when = { field = "x" }
"#,
    )
    .expect("write config");
    let out = support::run_bounded(
        {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
            c.arg("validate").arg("--config").arg(&path);
            c
        },
        None,
        WAIT,
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    for want in [
        "metrics[1].buckets",
        "metrics[1].sources[1]",
        "metrics[2]: a gauge needs value",
        "metrics[2].when",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    assert!(!text.contains("metrics[0]"), "{text}");
}
