//! `/metrics` is valid Prometheus text: checked by the real `promtool`.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn metrics_output_passes_promtool_check_metrics() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let address = support::api_address_from_log(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    // Exercise every counter family: JSON, text, invalid UTF-8.
    stdin.write_all(b"{\"a\":1}\nplain\n\xff\xfe\n").unwrap();
    stdin.flush().unwrap();
    support::wait_for_tcp(&address, Duration::from_secs(10));
    let url = format!("http://{address}/metrics");
    let body = support::wait_until("events counted on /metrics", Duration::from_secs(10), || {
        let (status, body) = support::http_get(&url);
        (status == 200 && body.contains("sluice_sink_events_total{sink=\"stdout\"} 3")).then_some(body)
    });
    assert!(
        body.contains("sluice_events_wrapped_total{reason=\"invalid_utf8\",source=\"stdin\"} 1"),
        "{body}"
    );
    support::promtool_check_metrics(&body).unwrap_or_else(|e| panic!("promtool rejects /metrics: {e}\n{body}"));
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
