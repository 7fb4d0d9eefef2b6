//! `/metrics` is valid Prometheus text: checked by the real `promtool`.

mod support;

use std::time::Duration;

use support::{Sluice, Stdout};

#[test]
fn metrics_output_passes_promtool_check_metrics() {
    let mut sluice = Sluice::builder()
        .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
        .stdin_piped()
        .stdout(Stdout::Null)
        .start();
    // Exercise every counter family: JSON, text, invalid UTF-8.
    sluice.write(b"{\"a\":1}\nplain\n\xff\xfe\n");
    let metrics = sluice.wait_for_metrics("events counted on /metrics", Duration::from_secs(10), |m| {
        m.text.contains("sluice_sink_events_total{sink=\"stdout\"} 3")
    });
    let body = metrics.text;
    assert!(
        body.contains("sluice_events_wrapped_total{reason=\"invalid_utf8\",source=\"stdin\"} 1"),
        "{body}"
    );
    support::promtool_check_metrics(&body).unwrap_or_else(|e| panic!("promtool rejects /metrics: {e}\n{body}"));
    sluice.close_stdin();
    assert!(sluice.wait(Duration::from_secs(10)).success());
}
