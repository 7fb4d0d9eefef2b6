//! SLI metrics as Prometheus sees them: the `/metrics` text passes
//! `promtool check metrics`, the alerting rules pass `promtool check rules`
//! and their unit tests, and a real Prometheus server scraping sluice gets
//! the request rate, error ratio, P95 and exact totals the input implies,
//! through the same queries the Grafana dashboard runs.

mod support;

use serde_json::Value;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use support::repo_path;
use support::sli::start_sli;
use support::sluice::STOP_TIMEOUT;
use support::{promtool_bin, promtool_check_metrics, promtool_check_rules, run_bounded, PrometheusServer, TOOL_TIMEOUT};

/// The `[[sli]]` part of the example config.
fn example_rules() -> String {
    let text = std::fs::read_to_string(repo_path("config/sli-example.toml")).expect("example config");
    text[text.find("[[sli]]").expect("[[sli]] in the example")..].to_owned()
}

#[test]
fn sli_metrics_output_passes_promtool_check_metrics() {
    // The example's three rules, plus one with a tiny series limit so the
    // overflow series and every metric family are in the output.
    let rules = format!(
        "{}\n[[sli]]\nname = \"tiny\"\nobjective = 0.9\nmax_series = 3\nlatency = {{ field = \"duration_ms\", threshold = \"50ms\" }}\nlabels = {{ route = \"path\" }}\n",
        example_rules()
    );
    let mut sluice = start_sli(&rules, &[("SLUICE_RELEASE", "v9")]);
    let mut input = String::new();
    for i in 0..400 {
        let status = [200, 200, 503, 404, 200][i % 5];
        let service = ["checkout", "search", "a \"quoted\"\\ service\nname"][i % 3];
        let method = ["GET", "POST"][i % 2];
        let path = format!("/api/v{}/item{}/{}", i % 3, i % 7, i);
        let ms = (i * 37 % 900) as f64 + 0.25;
        let event = serde_json::json!({"service": service, "method": method, "path": path, "status": status, "duration_ms": ms});
        input.push_str(&event.to_string());
        input.push('\n');
    }
    input.push_str("not json\n{\"path\":\"/api/x\"}\n");
    sluice.write(input.as_bytes());
    let samples = sluice.wait_for_metrics("402 tiny events", Duration::from_secs(30), |s| {
        s.sum("sluice_sli_requests_total", &[("sli", "tiny")]) + s.sum("sluice_sli_events_incomplete_total", &[("sli", "tiny")]) >= 402.0
    });
    assert!(samples.sum("sluice_sli_series_overflow_total", &[("sli", "tiny")]) > 0.0);
    let text = sluice.metrics().text;
    for family in [
        "sluice_sli_requests_total",
        "sluice_sli_latency_seconds",
        "sluice_sli_error_budget_burn_rate",
        "sluice_sli_objective",
        "sluice_sli_latency_threshold_seconds",
        "sluice_sli_series",
        "sluice_sli_series_overflow_total",
        "sluice_sli_events_incomplete_total",
        "sluice_sli_series_memory_bytes",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing");
    }
    assert!(text.contains(r#"route="__overflow__""#));
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{e}\n--- /metrics ---\n{text}"));
    sluice.finish(STOP_TIMEOUT);
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = repo_path("deploy/prometheus/sluice-sli-rules.yml");
    promtool_check_rules(&rules).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(promtool_bin());
    cmd.args(["test", "rules"])
        .arg(repo_path("deploy/prometheus/sluice-sli-rules.test.yml"));
    let out = run_bounded(cmd, None, TOOL_TIMEOUT);
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every PromQL expression of the dashboard, with its panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("deploy/grafana/sluice-sli.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            out.push((
                panel["title"].as_str().unwrap_or("").to_owned(),
                t["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

/// One scalar from an instant query that returns one series.
fn scalar(prom: &PrometheusServer, q: &str) -> f64 {
    let v = prom.query(q);
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    assert_eq!(result.len(), 1, "{q} returned {v}");
    result[0]["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrape_gives_expected_rate_error_ratio_p95_and_exact_totals() {
    let rules = r#"
[[sli]]
name = "api"
objective = 0.999
latency = { field = "duration_ms", unit = "ms" }
labels = { route = "path" }
"#;
    let mut sluice = start_sli(rules, &[("SLUICE_RELEASE", "v1")]);
    let prom = PrometheusServer::start(&sluice.api_address(), Duration::from_secs(1));
    prom.wait_for(r#"up{job="sluice"} == 1"#, Duration::from_secs(30));

    // 1000 requests a second for 16 s: every 20th fails, latencies spread
    // evenly over 0.5..99.5 ms (true P95 = 95 ms, in the (75, 100] bucket).
    const PER_TICK: usize = 100;
    const TICKS: u32 = 160;
    let mut stdin = sluice.take_stdin();
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut n = 0usize;
        for tick in 0..TICKS {
            let mut chunk = String::new();
            for _ in 0..PER_TICK {
                let status = if n % 20 == 0 { 500 } else { 200 };
                let ms = (n % 100) as f64 + 0.5;
                chunk.push_str(&format!(
                    "{{\"service\":\"shop\",\"path\":\"/api/orders/{n}\",\"status\":{status},\"duration_ms\":{ms}}}\n"
                ));
                n += 1;
            }
            stdin.write_all(chunk.as_bytes()).expect("write");
            let next = start + Duration::from_millis(100) * (tick + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        (n, stdin)
    });

    // Query mid-stream, once Prometheus holds 8 s of steady traffic.
    std::thread::sleep(Duration::from_secs(9));
    let sel = r#"sli="api",service="shop",release="v1",route="/api/orders/:id""#;
    let rate = scalar(&prom, &format!("sum(rate(sluice_sli_requests_total{{{sel}}}[5s]))"));
    assert!((rate - 1000.0).abs() < 150.0, "request rate {rate}/s, expected 1000/s");
    let ratio = scalar(
        &prom,
        &format!("sum(rate(sluice_sli_requests_total{{{sel},outcome=\"error\"}}[5s])) / sum(rate(sluice_sli_requests_total{{{sel}}}[5s]))"),
    );
    assert!((ratio - 0.05).abs() < 0.005, "error ratio {ratio}, expected 0.05");
    let p95 = scalar(
        &prom,
        &format!("histogram_quantile(0.95, sum by (le) (rate(sluice_sli_latency_seconds_bucket{{{sel}}}[5s])))"),
    );
    assert!((0.075..=0.1).contains(&p95), "P95 {p95} outside the true P95's bucket (0.075, 0.1]");
    assert!((p95 - 0.095).abs() < 0.005, "P95 {p95}, expected about 0.095");
    let burn = scalar(&prom, r#"sluice_sli_error_budget_burn_rate{sli="api",release="v1",window="5m"}"#);
    assert!(
        (burn - 50.0).abs() < 1.0,
        "5m burn rate {burn}, expected 50 (5% errors / 0.1% budget)"
    );

    // The dashboard's queries are valid PromQL and all find data.
    for (title, expr) in dashboard_queries() {
        let q = expr
            .replace("$__rate_interval", "5s")
            .replace("$sli", "api")
            .replace("$service", ".*")
            .replace("$release", ".*");
        let v = prom.query(&q);
        assert_eq!(v["status"], "success", "{title}: {q}");
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(!result.is_empty(), "dashboard panel {title:?} finds no data: {q}");
    }

    // After the last write, Prometheus scrapes the exact total.
    let (written, stdin) = writer.join().expect("writer");
    let total_q = format!("sum(sluice_sli_requests_total{{{sel}}})");
    support::wait_until("the exact total in prometheus", Duration::from_secs(15), || {
        (scalar(&prom, &total_q) == written as f64).then_some(())
    });
    let errors = scalar(&prom, &format!("sum(sluice_sli_requests_total{{{sel},outcome=\"error\"}})"));
    assert_eq!(errors, (written / 20) as f64);
    drop(stdin);
    sluice.finish(STOP_TIMEOUT);
}
