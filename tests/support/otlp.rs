//! [`OtlpReceiver`]: the independent OTLP logs and metrics receiver
//! (`otlp_receiver.py`, built from `opentelemetry-proto`) that the otlp
//! sink is checked against.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::{http_get, http_post, otel_python_bin, run_bounded, support_dir, ServiceProcess, Sluice, Stdout, START_TIMEOUT};

/// The receiver, listening on loopback for gRPC and OTLP/HTTP.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT` of its gRPC listener.
    pub grpc: String,
    /// `http://127.0.0.1:PORT` of its HTTP listener.
    pub http: String,
    process: ServiceProcess,
    _logs: TempDir,
}

impl OtlpReceiver {
    /// Starts the receiver and waits until both listeners accept.
    pub fn start() -> OtlpReceiver {
        let logs = TempDir::new().expect("temp dir");
        let mut cmd = Command::new(otel_python_bin());
        cmd.arg(support_dir().join("otlp_receiver.py"));
        let mut process = ServiceProcess::spawn("otlp_receiver.py", cmd, logs.path().join("otlp.log"), true);
        let stdout = process.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .unwrap_or_else(|_| panic!("otlp_receiver.py did not print ready; its log:\n{}", process.log_text()));
        let ports: Vec<u16> = line
            .trim()
            .strip_prefix("ready ")
            .map(|p| p.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        let [grpc, http] = ports[..] else {
            process.assert_running();
            panic!("otlp_receiver.py printed {line:?}; its log:\n{}", process.log_text())
        };
        for port in [grpc, http] {
            process.wait_for_tcp(&format!("127.0.0.1:{port}"), START_TIMEOUT);
        }
        OtlpReceiver {
            grpc: format!("http://127.0.0.1:{grpc}"),
            http: format!("http://127.0.0.1:{http}"),
            process,
            _logs: logs,
        }
    }

    /// The accepted export requests, as a JSON list of protobuf-JSON
    /// objects.
    pub fn received_json(&self) -> String {
        let (status, body) = http_get(&format!("{}/received", self.http));
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Log records and metric data points accepted so far.
    pub fn record_count(&self) -> usize {
        let (status, body) = http_get(&format!("{}/count", self.http));
        assert_eq!(status, 200, "{body}");
        body.trim().parse().expect("a count")
    }

    /// Waits until at least `n` records (or data points) were accepted.
    pub fn wait_for_records(&self, n: usize, timeout: Duration) {
        super::wait_until(&format!("{n} records at the OTLP receiver"), timeout, || {
            (self.record_count() >= n).then_some(())
        });
    }

    /// The next `n` exports fail (503 over HTTP, UNAVAILABLE over gRPC).
    pub fn fail_next(&self, n: u32) {
        let (status, body) = http_post(&format!("{}/control/fail?n={n}", self.http), &[], b"");
        assert_eq!(status, 200, "{body}");
    }

    /// The receiver's own output.
    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

/// Sends otlp_roundtrip.py's request of `signal` (`logs` or `metrics`: 20
/// records or data points) into a sluice otlp source, out through its otlp
/// sink (`protocol`, `compression`) to the independent receiver, and checks
/// that the receiver got the same ones.
pub fn round_trip(signal: &str, protocol: &str, compression: &str) {
    let timeout = Duration::from_secs(60);
    let (send, check) = if signal == "metrics" {
        ("send-metrics", "check-metrics")
    } else {
        ("send", "check")
    };
    let receiver = OtlpReceiver::start();
    let target = if protocol == "grpc" { &receiver.grpc } else { &receiver.http };
    let config = format!(
        "[api]\naddress = \"127.0.0.1:0\"\n[enrich]\ndisable_host = true\n\
         [sources.otel]\ntype = \"otlp\"\ngrpc_address = \"\"\nhttp_address = \"127.0.0.1:0\"\n\
         [sinks.out]\ntype = \"otlp\"\nendpoint = \"{target}\"\nprotocol = \"{protocol}\"\ncompression = \"{compression}\"\n\
         [sinks.out.batch]\ntimeout = \"100ms\"\n"
    );
    let s = Sluice::builder().config(&config).stdout(Stdout::Null).start();
    let http = source_endpoint(&s, "HTTP");
    let script = support_dir().join("otlp_roundtrip.py");
    let mut cmd = Command::new(otel_python_bin());
    cmd.arg(&script).args([send, &format!("{http}/v1/{signal}")]);
    super::run_client(&mut cmd, timeout);
    receiver.wait_for_records(20, timeout);
    let dump = s.path("received.json");
    std::fs::write(&dump, receiver.received_json()).expect("write the receiver's requests");
    let mut cmd = Command::new(otel_python_bin());
    cmd.arg(&script).arg(check).arg(&dump);
    let out = run_bounded(cmd, None, timeout);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        "same",
        "{signal} {protocol}/{compression}: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = s.metrics();
    assert_eq!(m.value(r#"sluice_sink_events_total{sink="out"}"#), 20.0);
}

/// A config with an `otlp` source `otel` on free ports (plus `extra`
/// keys of the source) and a `stdout` sink `out`.
pub fn source_config(extra: &str) -> String {
    format!(
        r#"
[api]
address = "127.0.0.1:0"
[enrich]
disable_host = true
[sources.otel]
type = "otlp"
grpc_address = "127.0.0.1:0"
http_address = "127.0.0.1:0"
{extra}
[sinks.out]
type = "stdout"
"#
    )
}

/// `http://host:port` of the `otel` source's `protocol` listener (`gRPC`,
/// `HTTP`).
pub fn source_endpoint(s: &Sluice, protocol: &str) -> String {
    let address = s.logged_address(&format!("receiving OTLP over {protocol}"), Some("otel"), Duration::from_secs(60));
    format!("http://{address}")
}
